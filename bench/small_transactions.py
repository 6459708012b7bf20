"""One-patient transactions (17 small entries, an interface engine's shape) over real HTTP, as a
share of the raw fhir.resources validation rate of the same resources.

Two configurations, each with its ratio from one run (issue 19's targets):

* `sqlite`: one client, the service as one process (`python -m uvicorn api.app:app`) on a fresh
  SQLite file; target 0.3.
* `postgres`: four concurrent clients (threads, one keep-alive connection each), the service as
  `trialbridge serve --workers 2` on a scratch PostgreSQL database; target 0.5.

Authentication and the rate limits are off (loopback, one client), as in the other benchmarks. The
clients are wrk connections (`small_transactions.lua`, one wrk thread each) POSTing transaction
Bundles of a Patient and 16 Observations with fresh ids, for `--seconds` after a warm-up: a C
client, so the figure is the service's and not the cost of a Python HTTP client sharing its two
cores (httpx spent ~1.1 ms of CPU per POST, about a seventh of the service's own). Then as many
Bundles of the same shape are validated in this process, one thread, with
`get_fhir_model_class(type).model_validate_json(raw)`. Rounds alternate so machine drift touches
both sides. Also printed: the service's CPU per transaction (its processes and their children, from
/proc), PostgreSQL's (every process of the local server, so run it on a quiet one) and wrk's median
and 99th-percentile latency. `--profile DIR` records the service with py-spy (`--subprocesses`,
collapsed stacks) during the timed rounds. Needs `wrk` (Debian: `apt-get install wrk`). A
measurement, not a test. Run from the repository root:

    .venv/bin/python bench/small_transactions.py [--seconds 12] [--config sqlite,postgres]

`post_round` (httpx clients) stays for bench/cohorts.py and bench/one_patient_writes.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import psycopg
from fhir.resources.R4B import get_fhir_model_class

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundle_sizes import bundle, database  # a sibling script, not a package
from ingest import (
    HEADERS,
    MEASURED_SERVICE_ENV,
    _free_port,
    running_service,
    started,
)

ENTRIES = 17
ROUNDS = 3
LUA = Path(__file__).resolve().parent / "small_transactions.lua"
# Bundles made ahead for each client and round: more than any client posts in a round.
BUNDLES_PER_SECOND = 600


@dataclass(frozen=True)
class Config:
    """One measured configuration."""

    name: str
    backend: str
    clients: int
    workers: int
    target: float


CONFIGS = {
    "sqlite": Config("sqlite", "sqlite", clients=1, workers=1, target=0.3),
    "postgres": Config("postgres", "postgres", clients=4, workers=2, target=0.5),
}


@contextlib.contextmanager
def served(config: Config, url: str, workdir: Path) -> Iterator[tuple[str, int]]:
    """The service as the configuration runs it: (base URL, pid of its top process)."""
    log_path = workdir / "service.log"
    if config.workers == 1:
        with running_service(url, log_path, None) as base:
            yield base, _listener_pid(base)
        return
    port = _free_port()
    env = {**os.environ, **MEASURED_SERVICE_ENV, "DATABASE_URL": url}
    command = [sys.executable, "-m", "api.cli", "serve", "--port", str(port)]
    command += ["--workers", str(config.workers)]
    with started(command, env, log_path, port) as (base, proc):
        yield base, proc.pid


def _listener_pid(base: str) -> int:
    """The pid of the process listening on the base URL's port (the uvicorn we started)."""
    port = base.rsplit(":", 1)[1]
    out = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout
    marker = "pid="
    return int(out.split(marker, 1)[1].split(",", 1)[0]) if marker in out else 0


@contextlib.contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy on the service (and its worker processes) while the block runs."""
    if out is None or pid == 0:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    command = [spy, "record", "--subprocesses", "--pid", str(pid), "--rate", "200"]
    command += ["--format", "raw", "--output", str(out), "--nonblocking"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
        proc.wait(timeout=60)


def post_round(base: str, clients: int, seconds: float) -> tuple[int, float, list[bytes]]:
    """(resources written, seconds taken, the Bundles posted) for one timed round."""
    ahead = [
        [bundle("transaction", ENTRIES) for _ in range(int(seconds * BUNDLES_PER_SECOND))]
        for _ in range(clients)
    ]
    posted: list[list[bytes]] = [[] for _ in range(clients)]
    failures: list[str] = []
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(n: int) -> None:
        with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as http:
            http.get("/healthz")  # connected before the clock starts
            start.wait()
            for body in ahead[n]:
                answer = http.post("/fhir", content=body)
                if answer.status_code != 200:
                    failures.append(f"POST answered {answer.status_code}: {answer.text[:300]}")
                    return
                posted[n].append(body)
                if time.perf_counter() >= stop_at[0]:
                    return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(failures[0])
    done = [b for bodies in posted for b in bodies]
    return len(done) * ENTRIES, elapsed, done


def validate_round(bundles: list[bytes]) -> tuple[int, float]:
    """(resources validated, seconds) for the resources of `bundles`, as raw JSON."""
    payloads = [
        (e["resource"]["resourceType"], orjson.dumps(e["resource"]))
        for b in bundles
        for e in orjson.loads(b)["entry"]
    ]
    started = time.perf_counter()
    for resource_type, raw in payloads:
        get_fhir_model_class(resource_type).model_validate_json(raw)
    return len(payloads), time.perf_counter() - started


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a process and every process under it."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        child = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(child)
        ticks[child] = int(fields[11]) + int(fields[12])
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += ticks.get(current, 0)
        todo.extend(children.get(current, []))
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Round:
    """One timed wrk run."""

    transactions: int
    seconds: float
    service_cpu: float
    database_cpu: float
    p50_ms: float
    p99_ms: float


def postmaster_pid(url: str) -> int:
    """The local PostgreSQL server's top process (its backends' parent); 0 when not on this host."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    stat = Path(f"/proc/{row[0] if row else 0}/stat")
    if not stat.exists():
        return 0
    parent = int(stat.read_text().rpartition(")")[2].split()[1])
    comm = Path(f"/proc/{parent}/comm")  # a server in another pid namespace is not ours to see
    return parent if comm.exists() and comm.read_text().strip() in {"postgres", "postmaster"} else 0


def wrk_round(base: str, clients: int, seconds: float, pid: int, database_pid: int = 0) -> Round:
    """`clients` wrk connections (one thread each) POSTing for `seconds`; every answer a 200."""
    command = ["wrk", f"-t{clients}", f"-c{clients}", f"-d{max(1, round(seconds))}s"]
    command += ["--timeout", "30s", "-s", str(LUA), f"{base}/fhir", "--"]
    command += [str(ENTRIES), str(random.randrange(2**30))]
    cpu_before = tree_cpu_seconds(pid)
    database_before = tree_cpu_seconds(database_pid) if database_pid else 0.0
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    service_cpu = tree_cpu_seconds(pid) - cpu_before
    # (a process that ended during the round takes its CPU with it: an under-count, never over)
    database_cpu = tree_cpu_seconds(database_pid) - database_before if database_pid else 0.0
    database_cpu = max(database_cpu, 0.0)
    line = next((x for x in done.stdout.splitlines() if x.startswith("SMALL_TX ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = json.loads(line.removeprefix("SMALL_TX "))
    statuses = {int(code): n for code, n in result["statuses"].items()}
    if set(statuses) - {200} or result["socket_errors"]:
        raise SystemExit(f"not every POST answered 200: {result}")
    return Round(
        statuses.get(200, 0),
        result["seconds"],
        service_cpu,
        database_cpu,
        result["p50_ms"],
        result["p99_ms"],
    )


@dataclass(frozen=True)
class Measured:
    """One configuration's figures."""

    end_to_end: float  # resources/s
    validation: float  # resources/s, raw fhir.resources on one thread
    cpu_ms: float  # the service's CPU per transaction
    database_cpu_ms: float | None  # PostgreSQL's (all its processes), when it runs on this host
    p50_ms: float  # the median round's
    p99_ms: float  # the worst round's


def measure(config: Config, seconds: float, profile_dir: Path | None) -> Measured:
    """End-to-end and raw validation rates, and the service's CPU, for one configuration."""
    served_n = validated = transactions = 0
    served_s = validated_s = cpu = database_cpu = 0.0
    medians: list[float] = []
    worst = 0.0
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(database(config.backend, tmp))
        base, pid = stack.enter_context(served(config, url, tmp))
        database_pid = postmaster_pid(url) if config.backend == "postgres" else 0
        wrk_round(base, config.clients, 3.0, pid)  # warm-up: every worker process imports, warms
        out = profile_dir / f"{config.name}.collapsed.txt" if profile_dir else None
        with profiled(pid, out):
            for _ in range(ROUNDS):
                done = wrk_round(base, config.clients, seconds / ROUNDS, pid, database_pid)
                transactions += done.transactions
                served_n, served_s = served_n + done.transactions * ENTRIES, served_s + done.seconds
                cpu += done.service_cpu
                database_cpu += done.database_cpu
                medians.append(done.p50_ms)
                worst = max(worst, done.p99_ms)
                same_shape = [bundle("transaction", ENTRIES) for _ in range(done.transactions)]
                n, s = validate_round(same_shape)
                validated, validated_s = validated + n, validated_s + s
    return Measured(
        served_n / served_s,
        validated / validated_s,
        1000 * cpu / max(transactions, 1),
        1000 * database_cpu / max(transactions, 1) if database_pid else None,
        sorted(medians)[len(medians) // 2],
        worst,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument(
        "--config",
        default="sqlite,postgres",
        help="comma-separated: sqlite, postgres (default: both)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="folder for py-spy profiles")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="also write the figures as JSON here (e.g. bench/results/small-transactions-LABEL.json)",
    )
    args = parser.parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if shutil.which("wrk") is None:
        print(
            "bench/small_transactions.py needs wrk (Debian: apt-get install wrk)", file=sys.stderr
        )
        return 2
    written: dict[str, object] = {"load_at_start": list(load), "seconds": args.seconds}
    for name in args.config.split(","):
        config = CONFIGS[name.strip()]
        m = measure(config, args.seconds, args.profile)
        written[config.name] = {
            "clients": config.clients,
            "workers": config.workers,
            "entries": ENTRIES,
            "end_to_end_resources_per_s": round(m.end_to_end),
            "validation_resources_per_s": round(m.validation),
            "ratio": round(m.end_to_end / m.validation, 3),
            "target": config.target,
            "service_cpu_ms_per_tx": round(m.cpu_ms, 3),
            "database_cpu_ms_per_tx": None
            if m.database_cpu_ms is None
            else round(m.database_cpu_ms, 3),
            "p50_ms": m.p50_ms,
            "p99_ms": m.p99_ms,
        }
        print(
            f"{config.backend}: {config.clients} client(s), {config.workers} worker(s), "
            f"{ENTRIES} entries a transaction"
        )
        print(f"  end to end: {m.end_to_end:8.0f} resources/s")
        print(f"  validation: {m.validation:8.0f} resources/s")
        print(f"  ratio:      {m.end_to_end / m.validation:8.2f}   (target {config.target})")
        print(f"  service CPU per transaction: {m.cpu_ms:.2f} ms")
        if m.database_cpu_ms is not None:
            print(
                f"  PostgreSQL CPU per transaction: {m.database_cpu_ms:.2f} ms (all its processes)"
            )
        print(f"  latency: median {m.p50_ms:.2f} ms, 99th percentile {m.p99_ms:.2f} ms")
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.out is not None:
        written["load_at_end"] = list(load)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(written, indent=2) + "\n")
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
