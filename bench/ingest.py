"""Ingest throughput: transaction Bundles over real HTTP, against raw fhir.resources validation.

What is measured, for SQLite and for PostgreSQL in one run:

* end to end: the service runs as a separate process (`python -m uvicorn api.app:app`, the
  database named by DATABASE_URL, migrated at start-up). Each Synthea patient of the shared
  export becomes one FHIR transaction Bundle (the Patient with its Encounters, Conditions,
  Procedures, MedicationRequests, Immunizations and AllergyIntolerances, every entry a
  `PUT Type/id`). Before every POST each resource gets a fresh uuid4 id, and every reference to
  it inside the Bundle follows, so every entry is a real write (the check insists on
  `201 Created` for all of them). Conditional references (`Practitioner?identifier=…`) become
  display-only, since their targets are not in this export. Each round's Bundles are made
  before its clock starts. They are POSTed with httpx (keep-alive) by `--concurrency` client
  threads for `--seconds`, after a warm-up; the rate is resources written per wall-clock second.
  The service runs as configured by default: on two or more CPUs one worker process checks the
  models of large Bundles while they are written; `--model-check-processes 0` measures the
  single-process service.
* validation only: exactly the resources that were POSTed, validated in this process by
  fhir.resources alone, `get_fhir_model_class(resourceType).model_validate_json(raw_bytes)`,
  each round's resources right after that round (rounds of ~5 s alternate between the two
  sides, so machine drift touches both).
  That is the floor every FHIR service on fhir.resources pays; the ratio end-to-end ÷
  validation-only says how much of that speed the whole service keeps (target: >= 0.6).

It is a measurement, not a test: it exits 0 whether or not the target is met.

Run from the repository root (PostgreSQL on 127.0.0.1:5432, user postgres, trust auth; a
scratch database is created and dropped):

    .venv/bin/python bench/ingest.py [--seconds 20] [--quick] [--concurrency N]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import queue
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from fhir.resources.R4B import get_fhir_model_class
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "tests" / "data" / "synthea-10"  # the copy kept with its licence
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432"
TARGET_RATIO = 0.6
QUICK_SECONDS = 3.0
# End-to-end and validation-only alternate in rounds this long: a shared machine's speed drifts,
# and alternating lets both sides of the ratio see the same drift.
ROUND_SECONDS = 5.0
CLINICAL_TYPES = (
    "Encounter",
    "Condition",
    "Procedure",
    "MedicationRequest",
    "Immunization",
    "AllergyIntolerance",
)
HEADERS = {
    "content-type": "application/fhir+json",
    "accept": "application/fhir+json",
    "prefer": "return=minimal",
}
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

Resource = dict[str, Any]


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (not a missed target)."""


# -- realistic patients -------------------------------------------------------------------------


def _read_ndjson(data_dir: Path, resource_type: str) -> Iterator[Resource]:
    for path in sorted(data_dir.glob(f"{resource_type}.*.ndjson")):
        with path.open("rb") as lines:
            for line in lines:
                if line.strip():
                    yield orjson.loads(line)


def _patient_id(resource: Resource) -> str | None:
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict):
            text = ref.get("reference")
            if isinstance(text, str) and text.startswith("Patient/"):
                return text.removeprefix("Patient/")
    return None


def _drop_conditional_references(node: Any) -> None:
    """Make `reference` values with a `?` display-only, in place (their targets are absent)."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and "?" in ref:
            del node["reference"]
            node.setdefault("display", ref)
        for value in node.values():
            _drop_conditional_references(value)
    elif isinstance(node, list):
        for item in node:
            _drop_conditional_references(item)


def load_patients(data_dir: Path) -> list[list[Resource]]:
    """Each patient, in file order, followed by the clinical resources that point at it."""
    patients = {p["id"]: [p] for p in _read_ndjson(data_dir, "Patient")}
    for resource_type in CLINICAL_TYPES:
        for resource in _read_ndjson(data_dir, resource_type):
            owner = _patient_id(resource)
            if owner in patients:
                patients[owner].append(resource)
    if not patients:
        raise BenchError(f"no Patient resources under {data_dir}")
    for resources in patients.values():
        _drop_conditional_references(resources)
    return list(patients.values())


@dataclass(frozen=True, slots=True)
class BundleTemplate:
    """One patient's transaction Bundle, serialised once with the export's ids."""

    text: bytes
    ids: frozenset[bytes]
    size: int
    types: frozenset[str]

    @classmethod
    def of(cls, resources: Sequence[Resource]) -> BundleTemplate:
        entries = []
        for r in resources:
            if not _UUID.fullmatch(r["id"].encode()):
                raise BenchError(f"{r['resourceType']}/{r['id']}: id is not a lower-case UUID")
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{r['id']}",
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
            )
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        return cls(
            text=orjson.dumps(bundle),
            ids=frozenset(r["id"].encode() for r in resources),
            size=len(resources),
            types=frozenset(r["resourceType"] for r in resources),
        )

    def fresh(self) -> bytes:
        """The Bundle with a new uuid4 for every resource, wherever its id appears."""
        new = {old: str(uuid.uuid4()).encode() for old in self.ids}
        return _UUID.sub(lambda m: new.get(m[0], m[0]), self.text)


class BundleFeed:
    """Fresh Bundles, made before each timed round so the service never shares the CPU with that.

    Making a Bundle (~20 µs a resource) is the client's work, not the service's. Each round's
    Bundles are made before its clock starts, half again as many as the last round used; should a
    round still run out, the client makes more on the spot, inside the timing (which only
    understates the service).
    """

    FIRST_ROUND = 120

    def __init__(self, templates: Sequence[BundleTemplate]) -> None:
        self._templates = itertools.cycle(templates)
        self._lock = threading.Lock()
        self._ready: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
        self._wanted = self.FIRST_ROUND
        self.made_while_timed = 0

    def make_ahead(self) -> None:
        """Top up to the number the next round is expected to need (before its clock starts)."""
        for _ in range(self._wanted - self._ready.qsize()):
            self._ready.put(self._make())

    def used(self, count: int) -> None:
        """A round posted `count` Bundles: the next one is prepared for half as many again."""
        self._wanted = max(8, count + count // 2 + 4)

    def get(self) -> tuple[int, bytes]:
        """(number of resources, Bundle bytes)."""
        try:
            return self._ready.get_nowait()
        except queue.Empty:
            with self._lock:
                self.made_while_timed += 1
            return self._make()

    def _make(self) -> tuple[int, bytes]:
        with self._lock:
            template = next(self._templates)
        return template.size, template.fresh()


# -- the service under test ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(log_path: Path, lines: int = 30) -> str:
    text = log_path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _wait_healthy(base_url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(
                    f"the service exited with {proc.returncode}:\n{_log_tail(log_path)}"
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get("/healthz").status_code == 200:
                    return
            time.sleep(0.1)
    raise BenchError(f"the service did not become healthy in 90 s:\n{_log_tail(log_path)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def started(
    command: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    port: int,
    cwd: Path = REPO,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start a server command listening on `port` (its output to `log_path`), wait until its
    /healthz answers 200, yield (base URL, process), and stop it after: every bench's server."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(command), cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_healthy(base_url, proc, log_path)
            yield base_url, proc
        finally:
            _stop(proc)


# What a measured service runs with. Loopback only, so authentication may be off: the token check
# is not what is measured. The per-client and per-address rate limits (200 and 400 requests/s by
# default) are a policy against one client flooding a shared server, not a cost: one benchmark
# client posting faster than that would get 429s, so they are off too.
MEASURED_SERVICE_ENV = {
    "TRIALBRIDGE_AUTH_DISABLED": "true",
    "TRIALBRIDGE_RATE_LIMIT_CLIENT_PER_SECOND": "0",
    "TRIALBRIDGE_RATE_LIMIT_ADDRESS_PER_SECOND": "0",
}


@contextlib.contextmanager
def running_service(
    database_url: str, log_path: Path, model_check_processes: int | None = None
) -> Iterator[str]:
    """`python -m uvicorn api.app:app` on a free port; yields its base URL, stops it after."""
    port = _free_port()
    env = {**os.environ, **MEASURED_SERVICE_ENV, "DATABASE_URL": database_url}
    if model_check_processes is not None:
        env["TRIALBRIDGE_MODEL_CHECK_PROCESSES"] = str(model_check_processes)
    command = [sys.executable, "-m", "uvicorn", "api.app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with started(command, env, log_path, port) as (base_url, _):
        yield base_url


@contextlib.contextmanager
def sqlite_database(workdir: Path) -> Iterator[str]:
    """A fresh SQLite file."""
    yield f"sqlite:///{workdir / 'bench.db'}"


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A scratch PostgreSQL database, dropped afterwards."""
    name = f"bench_ingest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{server_url}/{name}"
    finally:
        with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


def postgres_version(server_url: str) -> str:
    """The server's version string, or why it could not be read."""
    try:
        with psycopg.connect(f"{server_url}/postgres", connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        return f"unreachable ({str(exc).strip().splitlines()[0]})"
    return str(row[0]) if row else "?"


# -- driving it ---------------------------------------------------------------------------------


def _client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers=HEADERS, timeout=httpx.Timeout(600))


def post_bundle(client: httpx.Client, body: bytes, size: int) -> None:
    """POST one transaction; insist that every entry was really written (201)."""
    response = client.post("/fhir", content=body)
    if response.status_code != 200:
        raise BenchError(f"POST /fhir -> {response.status_code}: {response.text[:2000]}")
    entries = orjson.loads(response.content).get("entry", [])
    statuses = [e.get("response", {}).get("status", "") for e in entries]
    created = sum(1 for s in statuses if s.startswith("201"))
    if len(statuses) != size or created != size:
        raise BenchError(f"expected {size} entries created, got {created} of {len(statuses)}")


def warm_up(base_url: str, templates: Sequence[BundleTemplate]) -> list[bytes]:
    """Post the smallest patients until every resource type has been through; returns them."""
    needed = set().union(*(t.types for t in templates))
    posted: list[bytes] = []
    with _client(base_url) as client:
        for template in sorted(templates, key=lambda t: t.size):
            body = template.fresh()
            post_bundle(client, body, template.size)
            posted.append(body)
            needed -= template.types
            if not needed and len(posted) >= 2:
                break
    return posted


def model_checks_settled(base_url: str, timeout: float = 120.0) -> str:
    """Wait until the service's model-check workers are ready (or off); their state."""
    deadline = time.monotonic() + timeout
    while True:
        state = str(httpx.get(f"{base_url}/readyz", timeout=10).json().get("model_checks"))
        if state in ("ready", "off") or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


@dataclass(slots=True)
class Run:
    """What one timed run POSTed, and how long it took."""

    seconds: float = 0.0
    resources: int = 0
    bundles: list[bytes] = field(default_factory=list)


def drive(base_url: str, feed: BundleFeed, seconds: float, threads: int) -> Run:
    """POST fresh Bundles from `threads` clients until `seconds` have passed; wall-clock timed."""
    feed.make_ahead()
    run = Run()
    lock = threading.Lock()
    failures: list[BaseException] = []
    clients = [_client(base_url) for _ in range(threads)]

    def client_loop(client: httpx.Client, feed: BundleFeed, deadline: float) -> None:
        try:
            while time.perf_counter() < deadline and not failures:
                size, body = feed.get()
                post_bundle(client, body, size)
                with lock:
                    run.resources += size
                    run.bundles.append(body)
        except BaseException as exc:
            failures.append(exc)

    start = time.perf_counter()
    workers = [
        threading.Thread(target=client_loop, args=(c, feed, start + seconds)) for c in clients
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    run.seconds = time.perf_counter() - start
    feed.used(len(run.bundles))
    for client in clients:
        client.close()
    if failures:
        raise failures[0]
    return run


# -- validation only ----------------------------------------------------------------------------


def resource_payloads(bundles: Sequence[bytes]) -> list[tuple[str, bytes]]:
    """(resourceType, raw JSON bytes) of every resource in the Bundles, in order."""
    out = []
    for body in bundles:
        for entry in orjson.loads(body)["entry"]:
            resource = entry["resource"]
            out.append((resource["resourceType"], orjson.dumps(resource)))
    return out


def validate_all(payloads: Sequence[tuple[str, bytes]]) -> float:
    """Seconds to validate every payload with fhir.resources R4B alone."""
    start = time.perf_counter()
    for resource_type, raw in payloads:
        get_fhir_model_class(resource_type).model_validate_json(raw)
    return time.perf_counter() - start


# -- reporting ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """One backend's numbers."""

    backend: str
    bundles: int
    resources: int
    seconds: float
    validation_seconds: float

    @property
    def end_to_end(self) -> float:
        return self.resources / self.seconds

    @property
    def validation(self) -> float:
        return self.resources / self.validation_seconds

    @property
    def ratio(self) -> float:
        return self.end_to_end / self.validation

    @property
    def meets_target(self) -> bool:
        return self.ratio >= TARGET_RATIO

    def summary(self) -> str:
        verdict = "yes" if self.meets_target else "NO"
        return (
            f"{self.backend}: {self.end_to_end:.0f} res/s end-to-end, "
            f"validation-only {self.validation:.0f} res/s, ratio {self.ratio:.2f} "
            f"(target >= {TARGET_RATIO}: {verdict})"
        )


def machine_facts(postgres_url: str) -> list[tuple[str, str]]:
    """What the numbers depend on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("cpus", f"{os.cpu_count()} (usable by this process: {usable})"),
        ("platform", platform.platform()),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("fhir.resources", version("fhir.resources")),
        ("pydantic", f"{version('pydantic')} (core {version('pydantic-core')})"),
        ("uvicorn", version("uvicorn")),
        ("sqlite", sqlite3.sqlite_version),
        ("postgresql", postgres_version(postgres_url)),
    ]


def print_table(results: Sequence[Result]) -> None:
    head = ("backend", "bundles", "resources", "seconds", "e2e res/s", "valid. res/s", "ratio")
    rows = [
        (
            r.backend,
            str(r.bundles),
            str(r.resources),
            f"{r.seconds:.1f}",
            f"{r.end_to_end:.0f}",
            f"{r.validation:.0f}",
            f"{r.ratio:.2f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    for row in (head, *rows):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))


# -- one backend, then all ----------------------------------------------------------------------


def bench_backend(
    backend: str,
    database_url: str,
    templates: Sequence[BundleTemplate],
    args: argparse.Namespace,
    log_path: Path,
) -> Result:
    """Start the service on `database_url`, warm up, drive it, then validate the same resources."""
    with running_service(database_url, log_path, args.model_check_processes) as base_url:
        warmed = warm_up(base_url, templates)
        checks = model_checks_settled(base_url)
        validate_all(resource_payloads(warmed))  # same warm-up for the in-process side
        rounds = max(1, round(args.seconds / ROUND_SECONDS))
        print(
            f"{backend}: warmed up with {len(warmed)} bundles, model checks {checks}; "
            f"timing {args.seconds:g} s in {rounds} round(s) ..."
        )
        bundles, resources, seconds, validation_seconds = 0, 0, 0.0, 0.0
        feed = BundleFeed(templates)
        for _ in range(rounds):  # each round's resources validated right after it, same machine
            run = drive(base_url, feed, args.seconds / rounds, args.concurrency)
            bundles, resources, seconds = (
                bundles + len(run.bundles),
                resources + run.resources,
                seconds + run.seconds,
            )
            validation_seconds += validate_all(resource_payloads(run.bundles))
        if feed.made_while_timed:
            print(f"{backend}: {feed.made_while_timed} Bundle(s) had to be made while timed")
    return Result(backend, bundles, resources, seconds, validation_seconds)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed POSTs per backend")
    parser.add_argument("--quick", action="store_true", help=f"only ~{QUICK_SECONDS:g} s each")
    parser.add_argument("--concurrency", type=int, default=1, help="client threads (default 1)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Synthea NDJSON folder")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="server URL, no database")
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql"), action="append", help="default: both"
    )
    parser.add_argument(
        "--model-check-processes",
        type=int,
        default=None,
        metavar="N",
        help="the service's TRIALBRIDGE_MODEL_CHECK_PROCESSES (default: its own; 0 = in place)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="also write the figures as JSON here (e.g. bench/results/ingest-LABEL.json)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = QUICK_SECONDS
    if args.seconds <= 0 or args.concurrency < 1:
        parser.error("--seconds must be positive and --concurrency at least 1")
    args.backend = args.backend or ["sqlite", "postgresql"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    postgres_url = args.postgres.rstrip("/")
    for name, fact in machine_facts(postgres_url):
        print(f"{name + ':':16}{fact}")
    patients = load_patients(args.data)
    templates = [BundleTemplate.of(p) for p in patients]
    sizes = sorted(t.size for t in templates)
    print(
        f"{'workload:':16}{len(templates)} patients, {sum(sizes)} resources, one transaction "
        f"Bundle each ({sizes[0]}..{sizes[-1]} entries); {args.concurrency} client thread(s)"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        for backend in args.backend:
            database = (
                sqlite_database(workdir) if backend == "sqlite" else postgres_database(postgres_url)
            )
            with database as url:
                log_path = workdir / f"{backend}-service.log"
                results.append(bench_backend(backend, url, templates, args, log_path))
    print()
    print_table(results)
    print()
    for result in results:
        print(result.summary())
    if args.out is not None:
        written = {
            "machine": dict(machine_facts(postgres_url)),
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "target": TARGET_RATIO,
            **{
                r.backend: {
                    "bundles": r.bundles,
                    "resources": r.resources,
                    "end_to_end_resources_per_s": round(r.end_to_end),
                    "validation_resources_per_s": round(r.validation),
                    "ratio": round(r.ratio, 3),
                }
                for r in results
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(written, indent=2) + "\n")
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
