"""Cohort-wide figures at growing sizes: ingest, cohort recomputation, its memory, and reads.

For each size (generated patients, `bench/generate.py`, seed 1) and each backend (a fresh SQLite
file; a scratch PostgreSQL database on --postgres, created and dropped here):

* ingest: `trialbridge load` of the generated NDJSON files (the bulk path, after `trialbridge
  migrate`), resources per wall-clock second, ÷ fhir.resources `model_validate_json` of exactly
  those resources in this process right after (same machine drift);
* recomputation: `trialbridge refresh-cohorts --force` in its own process: the seconds it prints
  for each study, and the process's peak RSS (`wait4` rusage, covering both studies);
* reads over HTTP (`uvicorn api.app:app`, authentication and rate limits off, background refresh
  off so nothing recomputes while timing): the first page of NCT06088771 subjects and deviations,
  and each study's outcomes snapshot, `--reads` times each, median and p95;
* writes into the loaded database: one client posting one-patient transactions (a Patient and 16
  Observations, `bench/small_transactions.py`'s Bundles) for `--write-seconds`, ÷ fhir.resources
  validation of the same resources right after (does a write slow down as the tables grow?);
* growth: each figure at one size ÷ the same figure at the previous size, and that ratio per ×10
  of data (r ** (1 / log10(size ratio))), against the issue-19 target ≤ 12× per ×10.

Targets of issue 19 at 10^5 patients: NCT06088771 ≤ 10 s, cirAE ≤ 30 s, peak RSS ≤ 1.5 GB,
snapshot reads and list pages ≤ 250 ms. A measurement, not a test: it exits 0 whatever the
figures, and non-zero only when it could not measure (a load that rejected resources, a snapshot
that does not hold the planned subjects).

    .venv/bin/python bench/cohorts.py [--sizes 1000,10000] [--backend sqlite] [--quick] [--keep DIR]

`--keep DIR` keeps each size's generated files and loaded database (a SQLite file under DIR, a
PostgreSQL database named `bench_cohorts_<size>_loaded`) and reuses them on later runs: a 10^5 load
takes longer than everything else, and it does not change with the code that computes cohorts. A
reused load reports the ingest figures of the run that made it; recomputation and reads always run
on a copy (the SQLite file copied, the PostgreSQL database cloned from it as a template), migrated
to the code being measured.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from fhir.resources.R4B import get_fhir_model_class
from generate import write_cohort
from ingest import (
    DEFAULT_POSTGRES,
    MEASURED_SERVICE_ENV,
    BenchError,
    machine_facts,
    postgres_database,
    running_service,
    sqlite_database,
)
from psycopg import sql
from small_transactions import post_round, validate_round

REPO = Path(__file__).resolve().parents[1]
QUICK_PATIENTS = 200
SEED = 1
STUDIES = ("NCT06088771", "cirae-dupilumab")
TARGETS_AT_1E5 = {"NCT06088771": 10.0, "cirae-dupilumab": 30.0}
GROWTH_TARGET = 12.0
SERVICE_ENV = {**MEASURED_SERVICE_ENV, "TRIALBRIDGE_COHORT_REFRESH_INTERVAL_SECONDS": "0"}
_COMPUTED = re.compile(r"^(\S+): computed in ([0-9.]+) s", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Latency:
    """Milliseconds of repeated reads of one URL."""

    median: float
    p95: float


@dataclass(frozen=True, slots=True)
class Result:
    """One size on one backend."""

    backend: str
    patients: int
    resources: int
    load_seconds: float
    validation_seconds: float
    compute_seconds: dict[str, float]
    refresh_rss_mb: float
    reads: dict[str, Latency]
    small_tx: tuple[
        float, float
    ]  # one-patient transactions into the loaded database: (res/s, valid/s)

    @property
    def ingest_rate(self) -> float:
        return self.resources / self.load_seconds

    @property
    def validation_rate(self) -> float:
        return self.resources / self.validation_seconds

    def figures(self) -> dict[str, float]:
        """Every figure whose growth with size is reported (times and memory)."""
        out = {"load s": self.load_seconds, "refresh RSS MB": self.refresh_rss_mb}
        out |= {f"{study} compute s": s for study, s in self.compute_seconds.items()}
        out |= {f"{name} p50 ms": r.median for name, r in self.reads.items()}
        out["1-patient tx ms/resource"] = 1000 / self.small_tx[0]
        return out


# -- steps ------------------------------------------------------------------------------------------


def _env(database_url: str) -> dict[str, str]:
    return {**os.environ, **SERVICE_ENV, "DATABASE_URL": database_url}


def _trialbridge(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "trialbridge"), *args]


def _run(command: list[str], database_url: str, workdir: Path) -> tuple[str, float, float]:
    """Run a command to its end: (stdout, wall seconds, peak RSS in MB of that process alone)."""
    out_path, err_path = workdir / "command.out", workdir / "command.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, env=_env(database_url), stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
        seconds = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        stderr = err_path.read_text(errors="replace")[-3000:]
        raise BenchError(f"{' '.join(command[1:])} exited {code}:\n{stderr}")
    return out_path.read_text(), seconds, usage.ru_maxrss / 1024


def validation_seconds(folder: Path) -> float:
    """Seconds fhir.resources alone takes to validate every generated resource (file by file)."""
    total = 0.0
    for path in sorted(folder.glob("part-*.ndjson")):
        lines = [line for line in path.read_bytes().splitlines() if line]
        typed = [(orjson.loads(line)["resourceType"], line) for line in lines]
        start = time.perf_counter()
        for resource_type, raw in typed:
            get_fhir_model_class(resource_type).model_validate_json(raw)
        total += time.perf_counter() - start
    return total


def time_reads(client: httpx.Client, path: str, reads: int) -> Latency:
    """`reads` GETs of one path after one untimed warm-up; every answer must be 200."""
    times = []
    for i in range(reads + 1):
        start = time.perf_counter()
        response = client.get(path)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise BenchError(f"GET {path} -> {response.status_code}: {response.text[:500]}")
        if i:
            times.append(elapsed * 1000)
    times.sort()
    return Latency(
        statistics.median(times), times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
    )


def time_small_transactions(base_url: str, seconds: float) -> tuple[float, float]:
    """One client posting one-patient transactions into the loaded database for `seconds`:
    (resources/s, fhir.resources validation/s of the same resources right after)."""
    post_round(base_url, 1, min(2.0, seconds))  # warm-up
    written, taken, posted = post_round(base_url, 1, seconds)
    validated, validation_taken = validate_round(posted)
    return written / taken, validated / validation_taken


def check_snapshots(client: httpx.Client, plan: dict[str, Any]) -> None:
    """The snapshots hold the planned cohorts (else the figures would measure something else)."""
    nct = client.get("/api/v1/studies/NCT06088771/outcomes").json()
    cirae = client.get("/api/v1/studies/cirae-dupilumab/outcomes").json()
    found = (nct["outcomes"]["counts"]["subjects"], cirae["outcomes"]["groups"])
    planned = (plan["nct06088771_subjects"], plan["cirae_groups"])
    if found != planned or nct["stale"] or cirae["stale"]:
        raise BenchError(
            f"snapshots hold {found} (stale: {nct['stale']}, {cirae['stale']}), planned {planned}"
        )


def load_backend(database_url: str, folder: Path, plan: dict[str, Any]) -> tuple[float, float]:
    """Migrate and load the generated files: (load seconds, validation seconds right after)."""
    _run(_trialbridge("migrate"), database_url, folder.parent)
    out, load_seconds, _ = _run(
        _trialbridge("load", *map(str, sorted(folder.glob("part-*.ndjson")))),
        database_url,
        folder.parent,
    )
    if f"{plan['resources']} created" not in out:
        raise BenchError(f"load did not create {plan['resources']} resources: {out.strip()}")
    return load_seconds, validation_seconds(folder)


def bench_backend(
    backend: str,
    database_url: str,
    folder: Path,
    plan: dict[str, Any],
    args: argparse.Namespace,
    loaded: tuple[float, float] | None = None,
) -> Result:
    """Load (unless `loaded` gives an earlier load's figures), validate, recompute, read."""
    if loaded is None:
        load_seconds, valid = load_backend(database_url, folder, plan)
        print(
            f"  {backend}: loaded {plan['resources']} resources in {load_seconds:.1f} s", flush=True
        )
    else:
        load_seconds, valid = loaded
        _run(_trialbridge("migrate"), database_url, folder.parent)  # to the code being measured
        print(f"  {backend}: reusing a load of {load_seconds:.1f} s", flush=True)
    out, _, rss = _run(_trialbridge("refresh-cohorts", "--force"), database_url, folder.parent)
    computed = {m[1]: float(m[2]) for m in _COMPUTED.finditer(out)}
    if set(computed) != set(STUDIES):
        raise BenchError(f"refresh-cohorts did not compute every study:\n{out}")
    reads: dict[str, Latency] = {}
    log_path = folder.parent / f"{backend}-{plan['patients']}-service.log"
    saved = {k: os.environ.get(k) for k in SERVICE_ENV}
    os.environ.update(SERVICE_ENV)  # running_service passes this process's environment on
    try:
        with (
            running_service(database_url, log_path) as base_url,
            httpx.Client(base_url=base_url, timeout=120) as client,
        ):
            check_snapshots(client, plan)
            paths = {
                "subjects page": "/api/v1/studies/NCT06088771/subjects",
                "deviations page": "/api/v1/studies/NCT06088771/deviations",
                "NCT outcomes": "/api/v1/studies/NCT06088771/outcomes",
                "cirAE outcomes": "/api/v1/studies/cirae-dupilumab/outcomes",
            }
            reads = {name: time_reads(client, path, args.reads) for name, path in paths.items()}
            small_tx = time_small_transactions(base_url, args.write_seconds)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return Result(
        backend, plan["patients"], plan["resources"], load_seconds, valid, computed, rss, reads,
        small_tx,
    )  # fmt: skip


# -- reporting --------------------------------------------------------------------------------------


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    for row in (head, *rows):
        print(
            "  ".join(
                [
                    row[0].ljust(widths[0]),
                    *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
                ]
            )
        )


def print_results(results: Sequence[Result]) -> None:
    head = ["backend", "patients", "resources", "load s", "ingest/s", "valid/s", "ratio",
            "NCT s", "cirAE s", "RSS MB", "subj p50/p95", "dev p50/p95", "NCT out p50/p95",
            "cirAE out p50/p95", "1-pt tx/s", "ratio"]  # fmt: skip
    rows = [
        [
            r.backend,
            str(r.patients),
            str(r.resources),
            f"{r.load_seconds:.1f}",
            f"{r.ingest_rate:.0f}",
            f"{r.validation_rate:.0f}",
            f"{r.ingest_rate / r.validation_rate:.2f}",
            f"{r.compute_seconds['NCT06088771']:.2f}",
            f"{r.compute_seconds['cirae-dupilumab']:.2f}",
            f"{r.refresh_rss_mb:.0f}",
            *(f"{lat.median:.1f}/{lat.p95:.1f}" for lat in r.reads.values()),
            f"{r.small_tx[0]:.0f}",
            f"{r.small_tx[0] / r.small_tx[1]:.2f}",
        ]
        for r in results
    ]
    _table(head, rows)


def print_growth(results: Sequence[Result]) -> None:
    """Each figure's growth between consecutive sizes of one backend, and per ×10 of data."""
    rows = []
    for backend in dict.fromkeys(r.backend for r in results):
        mine = sorted((r for r in results if r.backend == backend), key=lambda r: r.patients)
        for small, large in itertools.pairwise(mine):
            scale = math.log10(large.patients / small.patients)
            for name, value in small.figures().items():
                growth = large.figures()[name] / value
                per_10 = growth ** (1 / scale)
                verdict = "yes" if per_10 <= GROWTH_TARGET else "NO"
                rows.append([backend, f"{small.patients}->{large.patients}", name,
                             f"{growth:.2f}", f"{per_10:.2f}", verdict])  # fmt: skip
    if rows:
        print()
        _table(["backend", "sizes", "figure", "growth", "per x10", f"<= {GROWTH_TARGET:g}"], rows)


def generated(folder: Path, size: int) -> dict[str, Any]:
    """The size's generated cohort (written now, or found where an earlier run kept it)."""
    plan_path = folder / "plan.json"
    if plan_path.exists():
        plan: dict[str, Any] = orjson.loads(plan_path.read_bytes())
        if plan["patients"] == size and plan["seed"] == SEED:
            print(f"{size} patients: reusing {folder}", flush=True)
            return plan
        raise BenchError(f"{folder} holds another cohort; remove it or choose another --keep")
    start = time.perf_counter()
    plan = write_cohort(folder, size, SEED, "ndjson", per_file=200).as_json()
    plan_path.write_bytes(orjson.dumps(plan, option=orjson.OPT_INDENT_2))
    print(
        f"{size} patients: {plan['resources']} resources generated in "
        f"{time.perf_counter() - start:.1f} s; NCT06088771 subjects "
        f"{plan['nct06088771_subjects']}, cirAE groups {plan['cirae_groups']}",
        flush=True,
    )
    return plan


def bench_kept(
    backend: str, postgres_url: str, folder: Path, plan: dict[str, Any], args: argparse.Namespace
) -> Result:
    """One size on one backend, loading once into a kept database and measuring on a copy."""
    size = plan["patients"]
    record = folder.parent / f"{backend}-{size}-load.json"
    loaded_name = f"bench_cohorts_{size}_loaded"
    loaded_file = folder.parent / f"{backend}-{size}" / "loaded.db"
    if not record.exists():
        if backend == "sqlite":
            loaded_file.parent.mkdir(exist_ok=True)
            loaded_file.unlink(missing_ok=True)
            url = f"sqlite:///{loaded_file}"
        else:
            _admin(postgres_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", loaded_name)
            _admin(postgres_url, "CREATE DATABASE {}", loaded_name)
            url = f"{postgres_url}/{loaded_name}"
        load_seconds, valid = load_backend(url, folder, plan)
        print(
            f"  {backend}: loaded {plan['resources']} resources in {load_seconds:.1f} s", flush=True
        )
        record.write_bytes(orjson.dumps({"load s": load_seconds, "validation s": valid}))
    kept = orjson.loads(record.read_bytes())
    loaded = (float(kept["load s"]), float(kept["validation s"]))
    if backend == "sqlite":
        work = loaded_file.with_name("work.db")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{work}{suffix}").unlink(missing_ok=True)
        for suffix in ("", "-wal"):  # the file and any WAL the loading process left behind
            if Path(f"{loaded_file}{suffix}").exists():
                shutil.copyfile(f"{loaded_file}{suffix}", f"{work}{suffix}")
        try:
            return bench_backend(backend, f"sqlite:///{work}", folder, plan, args, loaded)
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{work}{suffix}").unlink(missing_ok=True)
    work_name = f"bench_cohorts_{size}_work"
    _admin(postgres_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", work_name)
    _admin(postgres_url, "CREATE DATABASE {} TEMPLATE {}", work_name, loaded_name)
    try:
        return bench_backend(backend, f"{postgres_url}/{work_name}", folder, plan, args, loaded)
    finally:
        _admin(postgres_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", work_name)


def _admin(postgres_url: str, statement: str, *names: str) -> None:
    """One statement on the server's maintenance database, names quoted as identifiers."""
    with psycopg.connect(f"{postgres_url}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(*map(sql.Identifier, names)))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000", help="patients, comma-separated (default 1000)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PATIENTS} patients, 10 reads")
    parser.add_argument("--reads", type=int, default=50, help="timed GETs of each read")
    parser.add_argument(
        "--write-seconds", type=float, default=6.0, help="one-patient transactions, one client"
    )
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="server URL, no database")
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql"), action="append", help="default: both"
    )
    parser.add_argument("--json", type=Path, help="also write the results here (bench/results/…)")
    parser.add_argument(
        "--keep", type=Path, help="keep generated files and loaded databases here, and reuse them"
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = [QUICK_PATIENTS] if args.quick else [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error("--sizes takes whole numbers separated by commas")
    if args.quick:
        args.reads, args.write_seconds = 10, 2.0
    if min(args.sizes) < 1 or args.reads < 1:
        parser.error("sizes and --reads must be at least 1")
    args.backend = args.backend or ["sqlite", "postgresql"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    postgres_url = args.postgres.rstrip("/")
    for name, fact in machine_facts(postgres_url):
        print(f"{name + ':':16}{fact}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-cohorts-") as tmp:
        root = args.keep or Path(tmp)
        for size in sorted(args.sizes):
            folder = root / f"cohort-{size}"
            plan = generated(folder, size)
            for backend in args.backend:
                if args.keep is not None:
                    results.append(bench_kept(backend, postgres_url, folder, plan, args))
                    continue
                database = (
                    sqlite_database(folder.parent / f"{backend}-{size}")
                    if backend == "sqlite"
                    else postgres_database(postgres_url)
                )
                if backend == "sqlite":
                    (folder.parent / f"{backend}-{size}").mkdir()
                with database as url:
                    results.append(bench_backend(backend, url, folder, plan, args))
    print()
    print_results(results)
    print_growth(results)
    print()
    print(
        "targets at 10^5 patients (issue 19): NCT06088771 <= 10 s, cirAE <= 30 s, RSS <= 1500 MB,"
        f" reads <= 250 ms, growth <= {GROWTH_TARGET:g}x per x10"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(
            orjson.dumps([asdict(r) for r in results], option=orjson.OPT_INDENT_2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
