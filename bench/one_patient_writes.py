"""One-patient transactions into a copy of a loaded database, as a share of validation.

`bench/cohorts.py` measures the same figure once per size as part of a whole cohort run; this
script measures only it, on a copy of a database that run kept (`--keep`), so that two checkouts
can be compared alternately on the same data (issue 19: a write touching one patient should cost
about the same in any size of database). Each round copies the database afresh, migrates it with
the checkout's own `trialbridge migrate`, serves it as one process of that checkout
(`python -m uvicorn api.app:app`, background cohort refresh off), posts one client's
`bench/small_transactions.py` Bundles (a Patient and 16 Observations) for `--seconds` after a
warm-up, then validates the same resources in this process. It prints the ratio, the service's
CPU seconds per transaction (from /proc) and the load average. A measurement, not a test:

    .venv/bin/python bench/one_patient_writes.py /work/keep/sqlite-10000/loaded.db \
        --checkout /work/main --checkout . --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # a sibling script, not a package
    DEFAULT_POSTGRES,
    MEASURED_SERVICE_ENV,
    _free_port,
    started,
)
from small_transactions import post_round, validate_round

SERVICE_ENV = {**MEASURED_SERVICE_ENV, "TRIALBRIDGE_COHORT_REFRESH_INTERVAL_SECONDS": "0"}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def database_copy(database: str, workdir: Path) -> Iterator[str]:
    """The URL of a fresh copy: of a SQLite file, or of a PostgreSQL database given as
    `postgresql:NAME` (a `CREATE DATABASE … TEMPLATE NAME` on the benchmarks' server, dropped
    after; nobody may be connected to NAME meanwhile)."""
    if not database.startswith("postgresql:"):
        copy = workdir / "copy.db"
        for suffix in ("", "-wal"):
            if Path(f"{database}{suffix}").exists():
                shutil.copyfile(f"{database}{suffix}", f"{copy}{suffix}")
        yield f"sqlite:///{copy}"
        return
    import psycopg  # only this case needs it

    template, name = database.split(":", 1)[1], f"bench_writes_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{DEFAULT_POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield f"{DEFAULT_POSTGRES}/{name}"
    finally:
        with psycopg.connect(f"{DEFAULT_POSTGRES}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def served_copy(database: str, checkout: Path, workdir: Path) -> Iterator[tuple[str, int]]:
    """A migrated copy of the database served by the checkout: (base URL, service pid)."""
    with database_copy(database, workdir) as url, _served(url, checkout, workdir) as served:
        yield served


@contextlib.contextmanager
def _served(url: str, checkout: Path, workdir: Path) -> Iterator[tuple[str, int]]:
    python = checkout / ".venv" / "bin" / "python"
    env = {**os.environ, **SERVICE_ENV, "DATABASE_URL": url}
    subprocess.run(
        [str(python), "-m", "api.cli", "migrate"], cwd=checkout, env=env, check=True,
        capture_output=True,
    )  # fmt: skip
    port = _free_port()
    log_path = workdir / "service.log"
    command = [str(python), "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    with started(command, env, log_path, port, cwd=checkout) as (base, proc):
        yield base, proc.pid


def measure(database: str, checkout: Path, seconds: float) -> dict[str, float]:
    """One round: rate, validation rate, ratio, service CPU ms per transaction, load."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        with served_copy(database, checkout, Path(tmp)) as (base, pid):
            post_round(base, 1, 2.0)  # warm-up: imports, caches, the pseudonym key
            cpu = _cpu_seconds(pid)
            written, taken, posted = post_round(base, 1, seconds)
            cpu = _cpu_seconds(pid) - cpu
        validated, validation_taken = validate_round(posted)
    rate, valid = written / taken, validated / validation_taken
    return {
        "rate": rate,
        "valid": valid,
        "ratio": rate / valid,
        "cpu_ms_per_tx": 1000 * cpu / len(posted),
        "wall_ms_per_tx": 1000 * taken / len(posted),
        "load": os.getloadavg()[0],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each checkout in turn, `--rounds` times, and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "database", help="a loaded SQLite file, or postgresql:NAME (read, never written)"
    )
    parser.add_argument(
        "--checkout", type=Path, action="append", help="a checkout with its own .venv (repeat)"
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    checkouts = [c.resolve() for c in args.checkout or [Path(__file__).resolve().parents[1]]]
    print(
        "round  checkout                          rate  valid/s  ratio  CPU ms/tx  wall ms/tx  load"
    )
    for n in range(args.rounds):
        for checkout in checkouts:
            started = time.perf_counter()
            r = measure(args.database, checkout, args.seconds)
            print(
                f"{n + 1:5}  {str(checkout)[-30:]:30} {r['rate']:7.0f}  {r['valid']:7.0f}  "
                f"{r['ratio']:5.2f}  {r['cpu_ms_per_tx']:9.1f}  {r['wall_ms_per_tx']:10.1f}  "
                f"{r['load']:4.1f}   ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
