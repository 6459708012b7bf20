"""One study's cohort recomputation on an already loaded database, split into its parts.

Runs the refresher's `refresh(study, force=True)` in this process (what `trialbridge
refresh-cohorts --force` does for each study) and reports the seconds the refresher measured, the
part of them spent loading the cohort (`_cohort`: subjects, events, screening list) and computing
the report, the process's peak RSS and its CPU seconds (user + system, from its start). The code measured is whatever `service` this interpreter
imports, so the same script measures two checkouts alternately:

    DATABASE_URL=sqlite:////tmp/copy.db /work/main/.venv/bin/python bench/refresh_study.py NCT06088771
    DATABASE_URL=sqlite:////tmp/copy.db .venv/bin/python bench/refresh_study.py NCT06088771

`--warm` computes the study once untimed first, then measures a second computation in the same
process: what a server that has computed before pays (the statistics libraries, scipy and
lifelines, are imported by a process's first computation: 3–5 s on the shared machine).

It writes the study's snapshot into that database: run it on a copy. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from service.derivation.catalog import load_catalog
from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.privacy.evidence import EvidenceCodec
from service.reads import cohort_refresher
from service.reads.cohort_refresher import CohortRefresher


def _commit() -> str:
    """The checkout whose code this interpreter runs (the `service` package's repository)."""
    root = Path(cohort_refresher.__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{root.name}@{out.stdout.strip()}"


def main(argv: list[str] | None = None) -> int:
    """Refresh one study, print one JSON line of its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study id (NCT06088771, cirae-dupilumab)")
    parser.add_argument(
        "--warm", action="store_true", help="compute once untimed first (libraries imported)"
    )
    args = parser.parse_args(argv)
    load = os.getloadavg()
    settings = Settings()
    catalog = load_catalog(settings)
    engine = make_engine(settings)
    migrate.prepare(engine, auto_migrate=True)
    refresher = CohortRefresher(
        engine,
        catalog.protocols,
        EvidenceCodec(engine).seal,
        interval_seconds=0,
        zone=settings.site_zone(),
    )
    parts: dict[str, float] = {"load": 0.0, "report": 0.0}
    original = cohort_refresher._cohort

    def timed_cohort(*a: Any, **k: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            parts["load"] += time.perf_counter() - started

    cohort_refresher._cohort = timed_cohort
    report_of = refresher.report_of

    def timed_report(*a: Any) -> Any:
        started = time.perf_counter()
        try:
            return report_of(*a)
        finally:
            parts["report"] += time.perf_counter() - started

    refresher.report_of = timed_report
    if args.warm:
        refresher.refresh(args.study, force=True)
        parts.update(load=0.0, report=0.0)
    result = refresher.refresh(args.study, force=True)
    engine.dispose()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_mb = usage.ru_maxrss / 1024
    print(
        json.dumps(
            {
                "study": args.study,
                "code": _commit(),
                "outcome": result.outcome,
                "warm": args.warm,
                "seconds": round(result.seconds, 2),
                "load_seconds": round(parts["load"], 2),
                "report_seconds": round(parts["report"], 2),
                "peak_rss_mb": round(rss_mb),
                # the whole process's CPU (imports included): less inflated by a busy machine
                "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
                "loadavg_before": [round(x, 2) for x in load],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )
    return 0 if result.outcome == "computed" else 1


if __name__ == "__main__":
    sys.exit(main())
