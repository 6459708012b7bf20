"""Server memory for large requests: peak RSS of a real server process, against the body's size.

For each workload a fresh service process is started (`python -m uvicorn api.app:app`, a new
SQLite file or a scratch PostgreSQL database, authentication off on loopback), warmed up with one
small transaction and one small import, left until its cohort snapshots are fresh (the refresher's
first computation, which loads the statistics libraries, would otherwise fall inside the peak),
and its peak-RSS mark is reset (`/proc/PID/clear_refs`).
Then one request is sent and the process's peak (`VmHWM`) is read, with its RSS a few seconds
after the answer (what it kept):

* a transaction Bundle of ~50 MB: Synthea patients (`tests/data/synthea-10`) repeated with
  fresh ids, every entry a `PUT Type/id`; printed as peak growth ÷ body size (target ≤ 8);
* `$import` of ~45 MB of NDJSON (the same resources, one a line), and with `--large` of ~450 MB;
  printed as the peak in MB (target for 450 MB: ≤ 300 MB, and no growth with the file).

The model-check worker (a child process, started on the first large Bundle) is measured apart:
its own peak is printed beside the server's. It is a measurement, not a test: it exits 0 whatever
it finds. Run from the repository root:

    .venv/bin/python bench/memory.py [--large] [--backend sqlite|postgres] [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # a sibling script, not a package
    _UUID,
    DEFAULT_DATA,
    DEFAULT_POSTGRES,
    HEADERS,
    BundleTemplate,
    _free_port,
    load_patients,
    model_checks_settled,
    postgres_database,
    sqlite_database,
    started,
)

MB = 1_000_000
TRANSACTION_BYTES = 50 * MB
NDJSON_BYTES = 45 * MB
LARGE_NDJSON_BYTES = 450 * MB
SETTLE_SECONDS = 3.0
NDJSON_HEADERS = {"content-type": "application/fhir+ndjson", "accept": "application/fhir+json"}


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def _reset_peak(pid: int) -> None:
    """Set the process's peak-RSS mark to its current RSS (Linux: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


@dataclass(frozen=True, slots=True)
class Measured:
    """One request's memory: the server's RSS before, its peak, its RSS after settling."""

    name: str
    body_bytes: int
    seconds: float
    before: int
    peak: int
    after: int
    worker_peak: int | None

    @property
    def growth(self) -> int:
        """How far the peak rose above the RSS before the request."""
        return self.peak - self.before

    def row(self) -> str:
        worker = f"{self.worker_peak / MB:>8.0f}" if self.worker_peak is not None else f"{'-':>8}"
        return (
            f"{self.name:<22}{self.body_bytes / MB:>8.1f}{self.seconds:>8.1f}"
            f"{self.before / MB:>8.0f}{self.peak / MB:>8.0f}{self.growth / MB:>8.0f}"
            f"{self.growth / self.body_bytes:>8.2f}{self.after / MB:>8.0f}{worker}"
        )


HEADER = (
    f"{'workload':<22}{'body MB':>8}{'s':>8}{'RSS MB':>8}{'peak MB':>8}{'growth':>8}"
    f"{'÷ body':>8}{'after':>8}{'worker':>8}"
)


# -- workloads -----------------------------------------------------------------------------------


def _resources(templates: Sequence[BundleTemplate]) -> Iterator[list[dict[str, Any]]]:
    """Patients' resources over and over, every id fresh (references follow)."""
    while True:
        for template in templates:
            yield [e["resource"] for e in orjson.loads(template.fresh())["entry"]]


def transaction(templates: Sequence[BundleTemplate], size: int) -> bytes:
    """A transaction Bundle of whole patients, just under `size` bytes."""
    entries: list[dict[str, Any]] = []
    total, misses = 60, 0
    for resources in _resources(templates):
        batch = [
            {
                "fullUrl": f"urn:uuid:{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ]
        grown = sum(len(orjson.dumps(e)) + 1 for e in batch)
        if total + grown > size:  # this patient does not fit; a smaller one may
            misses += 1
            if misses > len(templates):
                break
            continue
        misses = 0
        entries += batch
        total += grown
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def ndjson_file(templates: Sequence[BundleTemplate], size: int, path: Path) -> int:
    """Whole patients, one resource a line, just under `size` bytes; the number of lines."""
    texts = [b"\n".join(orjson.dumps(r) for r in rs) + b"\n" for rs in _first(templates)]
    written = lines = 0
    with path.open("wb") as out:
        while True:
            for text in texts:
                chunk = _fresh_ids(text)
                if written + len(chunk) > size:
                    return lines
                out.write(chunk)
                written += len(chunk)
                lines += chunk.count(b"\n")


def _fresh_ids(text: bytes) -> bytes:
    """`text` with every uuid replaced by a new one, the same one wherever it recurs."""
    fresh: dict[bytes, bytes] = {}
    return _UUID.sub(lambda m: fresh.setdefault(m[0], str(uuid.uuid4()).encode()), text)


def _first(templates: Sequence[BundleTemplate]) -> list[list[dict[str, Any]]]:
    return [[e["resource"] for e in orjson.loads(t.text)["entry"]] for t in templates]


# -- the service ---------------------------------------------------------------------------------


@contextlib.contextmanager
def service(
    database_url: str, workdir: Path, extra_env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A fresh `uvicorn api.app:app` process on a free port: its base URL and the process."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TRIALBRIDGE_AUTH_DISABLED": "true",
        **extra_env,
    }
    command = [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--timeout-keep-alive", "600"]
    with started(command, env, workdir / "service.log", port) as served:
        yield served


def _warm_up(client: httpx.Client, templates: Sequence[BundleTemplate]) -> None:
    """One small transaction and one small import: lazy imports and caches are then in place."""
    small = transaction(templates, 700_000)
    answer = client.post("/fhir", content=small, headers=HEADERS)
    if answer.status_code != 200:
        raise SystemExit(f"warm-up transaction answered {answer.status_code}: {answer.text[:300]}")
    resources = next(_resources(templates))
    body = b"\n".join(orjson.dumps(r) for r in resources[:50])
    answer = client.post("/fhir/$import", content=body, headers=NDJSON_HEADERS)
    if answer.status_code != 200:
        raise SystemExit(f"warm-up import answered {answer.status_code}: {answer.text[:300]}")


def cohorts_settled(base_url: str, timeout: float = 900.0) -> bool:
    """Wait until no study's cohort snapshot is stale (/metrics): the refresher's computations
    (the first of which loads the statistics libraries) must not land inside the measured peak."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(f"{base_url}/metrics", timeout=30).text
        stale = [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "trialbridge_cohort_snapshot_stale"
        ]
        if (stale and not any(stale)) or time.monotonic() > deadline:
            return bool(stale) and not any(stale)
        time.sleep(1.0)


def measure(
    name: str,
    base_url: str,
    proc: subprocess.Popen[bytes],
    templates: Sequence[BundleTemplate],
    send: Any,
    body_bytes: int,
) -> Measured:
    """Warm up, reset the peak marks, send one request, read the marks."""
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(3600)) as client:
        _warm_up(client, templates)
        model_checks_settled(base_url)
        if not cohorts_settled(base_url):
            print("warning: a cohort snapshot was still stale when measuring", file=sys.stderr)
        time.sleep(SETTLE_SECONDS)
        workers = _children(proc.pid)
        for pid in (proc.pid, *workers):
            _reset_peak(pid)
        before = _status(proc.pid)["VmRSS"]
        started = time.perf_counter()
        send(client)
        seconds = time.perf_counter() - started
        peak = _status(proc.pid)["VmHWM"]
        worker_peaks = [_status(pid)["VmHWM"] for pid in _children(proc.pid)]
        time.sleep(SETTLE_SECONDS)
        after = _status(proc.pid)["VmRSS"]
    worker_peak = max(worker_peaks) if worker_peaks else None
    return Measured(name, body_bytes, seconds, before, peak, after, worker_peak)


def _post_transaction(body: bytes, entries: int) -> Any:
    def send(client: httpx.Client) -> None:
        answer = client.post("/fhir", content=body, headers=HEADERS)
        if answer.status_code != 200:
            raise SystemExit(f"transaction answered {answer.status_code}: {answer.text[:500]}")
        got = len(orjson.loads(answer.content)["entry"])
        if got != entries:
            raise SystemExit(f"transaction answered {got} entries, not {entries}")

    return send


def _post_file(path: Path, lines: int) -> Any:
    def send(client: httpx.Client) -> None:
        with path.open("rb") as body:
            answer = client.post("/fhir/$import", content=body, headers=NDJSON_HEADERS)
        if answer.status_code != 200:
            raise SystemExit(f"$import answered {answer.status_code}: {answer.text[:500]}")
        statuses = [e["response"]["status"] for e in orjson.loads(answer.content)["entry"]]
        created = sum(1 for s in statuses if s.startswith("201"))
        if created != lines:
            raise SystemExit(
                f"$import created {created} of {lines} lines ({len(statuses)} answered)"
            )

    return send


@contextlib.contextmanager
def _database(backend: str, workdir: Path, postgres: str) -> Iterator[str]:
    if backend == "sqlite":
        with sqlite_database(workdir) as url:
            yield url
    else:
        with postgres_database(postgres) as url:
            yield url


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each workload in its own fresh service and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--large", action="store_true", help="also a ~450 MB NDJSON import")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="server URL, no database")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Synthea NDJSON folder")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="for the service"
    )
    parser.add_argument(
        "--only", choices=("transaction", "import"), default=None, help="one kind of workload"
    )
    args = parser.parse_args(argv)
    extra_env = dict(pair.split("=", 1) for pair in args.env)
    templates = [BundleTemplate.of(p) for p in load_patients(args.data)]
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        workdir = Path(tmp)
        workloads: list[tuple[str, int, Any]] = []
        if args.only in (None, "transaction"):
            body = transaction(templates, TRANSACTION_BYTES)
            entries = len(orjson.loads(body)["entry"])
            workloads.append(
                (f"transaction {entries}", len(body), _post_transaction(body, entries))
            )
        if args.only in (None, "import"):
            sizes = [NDJSON_BYTES] + ([LARGE_NDJSON_BYTES] if args.large else [])
            for size in sizes:
                path = workdir / f"import-{size}.ndjson"
                lines = ndjson_file(templates, size, path)
                workloads.append(
                    (f"$import {lines} lines", path.stat().st_size, _post_file(path, lines))
                )
        print(f"backend: {args.backend}; python {sys.version.split()[0]}; env: {extra_env or '-'}")
        print(HEADER)
        for name, size, send in workloads:
            run_dir = workdir / uuid.uuid4().hex[:8]
            run_dir.mkdir()
            with (
                _database(args.backend, run_dir, args.postgres) as url,
                service(url, run_dir, extra_env) as (base_url, proc),
            ):
                print(measure(name, base_url, proc, templates, send, size).row(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
