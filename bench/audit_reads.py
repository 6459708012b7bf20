"""What auditing every read costs: reads per second with the audit trail, and without it.

Two copies of the service run side by side on one scratch database, each a separate process
(`python -m uvicorn`): the product (`api.app:app`), which holds every answer until its AuditEvent
is committed, and a baseline (`bench.audit_app:app`), the same app with those records dropped.
After 200 Patients are stored, client threads GET random `/fhir/Patient/{id}` with keep-alive,
in rounds that alternate between the two (so a shared machine's drift touches both), in two
passes that start the two processes in opposite orders (geometric mean of the two). The ratio
audited ÷ baseline is the read path's speed kept; the target is >= 0.9 (at most 10 % slower).
Measured at one client thread (every read waits for its own commit) and at several (commits are
shared). Authentication and the rate limits are off on both: neither is what this measures.

It is a measurement, not a test: it exits 0 whether or not the target is met.

    .venv/bin/python bench/audit_reads.py [--seconds 24] [--backend sqlite postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
from ingest import (
    DEFAULT_POSTGRES,
    _free_port,
    machine_facts,
    postgres_database,
    sqlite_database,
    started,
)

TARGET_RATIO = 0.9
AUDITED, BASELINE = "api.app:app", "bench.audit_app:app"
ROUND_SECONDS = 2.0
PATIENTS = 200
HEADERS = {"accept": "application/fhir+json", "content-type": "application/fhir+json"}


@contextlib.contextmanager
def service(app: str, database_url: str, log_path: Path) -> Iterator[str]:
    """`python -m uvicorn <app>` on a free port, authentication off; yields its base URL."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TRIALBRIDGE_AUTH_DISABLED": "true",
        "TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS": "0",
        "TRIALBRIDGE_LOG_LEVEL": "WARNING",
        # one client reading flat out is what is measured: no request budget may refuse it
        "TRIALBRIDGE_RATE_LIMIT_CLIENT_PER_SECOND": "0",
        "TRIALBRIDGE_RATE_LIMIT_ADDRESS_PER_SECOND": "0",
    }
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    with started(command, env, log_path, port) as (base, _):
        yield base


def store_patients(base: str) -> list[str]:
    """PUT the patients every read picks from."""
    ids = [f"bench-{n}" for n in range(PATIENTS)]
    with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as client:
        for pid in ids:
            body = {"resourceType": "Patient", "id": pid, "gender": "female"}
            answer = client.put(f"/fhir/Patient/{pid}", json=body)
            if answer.status_code not in (200, 201):
                raise RuntimeError(f"PUT Patient/{pid} -> {answer.status_code}: {answer.text}")
    return ids


def read_round(base: str, ids: Sequence[str], threads: int, seconds: float) -> int:
    """Reads answered (200) by `threads` keep-alive clients in `seconds`."""
    done = [0] * threads
    deadline = time.perf_counter() + seconds

    def loop(slot: int) -> None:
        pick = random.Random(slot)
        with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as client:
            while time.perf_counter() < deadline:
                answer = client.get(f"/fhir/Patient/{pick.choice(ids)}")
                if answer.status_code != 200:
                    raise RuntimeError(f"GET -> {answer.status_code}: {answer.text[:500]}")
                done[slot] += 1

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done)


def measure(
    audited: str, baseline: str, ids: Sequence[str], threads: int, seconds: float
) -> tuple[float, float]:
    """(audited reads/s, baseline reads/s), alternating rounds after a warm-up of each."""
    read_round(audited, ids, threads, 0.5)
    read_round(baseline, ids, threads, 0.5)
    counts = {audited: 0, baseline: 0}
    elapsed = 0.0
    while elapsed < seconds:
        for base in (
            (audited, baseline) if int(elapsed / ROUND_SECONDS) % 2 == 0 else (baseline, audited)
        ):
            counts[base] += read_round(base, ids, threads, ROUND_SECONDS / 2)
        elapsed += ROUND_SECONDS
    return counts[audited] / (seconds / 2), counts[baseline] / (seconds / 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=24.0, help="per backend and concurrency")
    parser.add_argument("--backend", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    args = parser.parse_args(argv)
    for name, fact in machine_facts(args.postgres.rstrip("/")):
        print(f"{name + ':':16}{fact}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        workdir = Path(tmp)
        for backend in args.backend:
            database = (
                sqlite_database(workdir)
                if backend == "sqlite"
                else postgres_database(args.postgres.rstrip("/"))
            )
            with database as url:
                # stored by a process of its own: neither measured one has done more than read
                with service("api.app:app", url, workdir / f"{backend}-loader.log") as loader:
                    ids = store_patients(loader)
                # Two passes, the processes started in opposite orders: on a shared machine the
                # first-started one was measured up to 8 % slower when both ran the same app.
                passes: dict[int, list[tuple[float, float]]] = {t: [] for t in args.threads}
                for order in ((AUDITED, BASELINE), (BASELINE, AUDITED)):
                    with (
                        service(order[0], url, workdir / f"{backend}-1.log") as first,
                        service(order[1], url, workdir / f"{backend}-2.log") as second,
                    ):
                        audited, base = (first, second) if order[0] == AUDITED else (second, first)
                        for threads in args.threads:
                            passes[threads].append(
                                measure(audited, base, ids, threads, args.seconds / 2)
                            )
                for threads, measured in passes.items():
                    on = math.prod(a for a, _ in measured) ** 0.5
                    off = math.prod(b for _, b in measured) ** 0.5
                    rows.append((backend, threads, on, off))
    print()
    print(f"{'backend':10}{'threads':>8}{'audited/s':>12}{'baseline/s':>12}{'ratio':>8}  target")
    for backend, threads, on, off in rows:
        ratio = on / off
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        print(
            f"{backend:10}{threads:>8}{on:>12.0f}{off:>12.0f}{ratio:>8.2f}  >= {TARGET_RATIO} {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
