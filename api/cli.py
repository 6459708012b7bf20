"""`trialbridge serve | migrate | load | refresh-cohorts | client | ...`: the command line."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Never

import orjson
from pydantic import ValidationError
from tqdm import tqdm

from api import cli_access, cli_export, cli_pull, request_log
from fhir_mapping.issues import InvalidContentError
from fhir_mapping.json_codec import decode_text, loads
from service.audit.events import CLI_CLIENT
from service.derivation.catalog import load_catalog
from service.derivation.refresh import Derivation, reevaluate_all, remap_all
from service.errors import FhirError
from service.fhir.ingest import EntryResult
from service.fhir.interactions import FhirService
from service.fhir.pull.jobs import SourcePulls
from service.infra import metrics, migrate
from service.infra.db import make_engine
from service.infra.process import settle_process
from service.infra.settings import Settings
from service.jobs.bulk import BulkJobs, JobInput
from service.jobs.queue import ensure_schema, run_worker
from service.notifications.webhooks import Dispatcher, deliver_due, policy_from
from service.privacy.evidence import EvidenceCodec
from service.protocol.schema import ProtocolError, StudyProtocol
from service.protocol.terminology import TerminologyError
from service.reads.cohort_refresher import CohortRefresher
from service.repositories import trial_events
from service.repositories.unit_of_work import unit_of_work

_SUFFIXES = (".json", ".ndjson")
log = logging.getLogger(__name__)


def _files(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(raw)


def _count_resources(path: Path) -> int:
    if path.suffix == ".ndjson":
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    try:
        doc = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return 1
    entries = (
        doc.get("entry") if isinstance(doc, dict) and doc.get("resourceType") == "Bundle" else None
    )
    return len(entries) if isinstance(entries, list) else 1


def _load_file(
    store: FhirService, path: Path, bar: tqdm[Never], tally: Counter[str], errors: list[str]
) -> None:
    if path.suffix == ".ndjson":  # a bulk job run here, like an asynchronous `$import`: any size
        _load_ndjson(store, path, bar, tally, errors)
        return
    ctx = store.context(f"cli load {path.name}", keep_content=False)
    text = decode_text(path.read_bytes())
    doc = loads(text.encode())
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        _, results = store.bundle(doc, ctx=ctx)
        for i, result in enumerate(results):
            _record(result, f"{path}#entry[{i}]", tally, errors)
        bar.update(len(results))
        return
    for outcome in store.import_lines([text.replace("\n", " ")], ctx=ctx, progress=bar.update):
        _record(outcome.result, str(path), tally, errors)


def _load_ndjson(
    store: FhirService, path: Path, bar: tqdm[Never], tally: Counter[str], errors: list[str]
) -> None:
    """The file as a bulk job run in this process: chunks committed with their checkpoint."""
    jobs = BulkJobs(store.engine, store)
    item = JobInput(url=str(path), path=str(path.resolve()))
    job_id = jobs.create([item], owner=CLI_CLIENT, kind="load")
    jobs.run(job_id, progress=bar.update)
    view = jobs.view(job_id)
    assert view is not None
    if view.status != "succeeded":
        raise FhirError.of(500, "exception", view.error or f"the load job {view.status}")
    for change, n in view.checkpoint.outcomes[0].items():
        if n:
            tally["rejected" if change == "failed" else change] += n
    for line, status, outcome in jobs.errors(job_id, 0):
        reasons = [i.get("diagnostics", "") for i in orjson.loads(outcome).get("issue", [])]
        errors.append(f"{path}:{line}: {status} {'; '.join(reasons)}")


def _record(result: EntryResult, where: str, tally: Counter[str], errors: list[str]) -> None:
    if result.status < 300:
        tally[result.change] += 1
        return
    tally["rejected"] += 1
    reasons = [i.diagnostics for i in result.issues]
    errors.append(f"{where}: {result.status} {'; '.join(reasons)}")


def cmd_load(settings: Settings, paths: Sequence[str], derivation: Derivation) -> int:
    """Load bundle JSON / NDJSON files or folders through the same ingest as the API."""
    engine = make_engine(settings)
    migrate.prepare(engine, auto_migrate=settings.auto_migrate)
    store = FhirService(engine, settings, derivation)
    settle_process()
    try:
        files = list(_files(paths))
    except FileNotFoundError as exc:
        print(f"trialbridge load: no such file or folder: {exc}", file=sys.stderr)
        return 2
    tally: Counter[str] = Counter()
    errors: list[str] = []
    total = sum(_count_resources(p) for p in files)
    with tqdm(total=total, unit="res", desc="loading", disable=None) as bar:
        for path in files:
            try:
                _load_file(store, path, bar, tally, errors)
            except (FhirError, InvalidContentError) as exc:
                tally["rejected"] += 1
                errors.append(f"{path}: {exc}")
    engine.dispose()
    for line in errors:
        print(line, file=sys.stderr)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(tally.items())) or "nothing"
    print(f"loaded {len(files)} file(s): {summary}")
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and option (the deploy files' commands are checked against it)."""
    parser = argparse.ArgumentParser(prog="trialbridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the HTTP service (migrates first unless TRIALBRIDGE_AUTO_MIGRATE=false)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    sub.add_parser(
        "migrate",
        help="bring the database schema to the latest revision (and, on PostgreSQL, add the job "
        "queue's schema)",
    )
    sub.add_parser(
        "worker",
        help="run bulk jobs (asynchronous $import, pulls) from the PostgreSQL job queue until "
        "SIGTERM; on SQLite jobs run in the server",
    )
    load = sub.add_parser("load", help="load FHIR bundle JSON / NDJSON files or folders")
    load.add_argument("paths", nargs="+", metavar="PATH")
    deliver = sub.add_parser(
        "deliver", help="deliver due webhook notifications once (cron-friendly), or --loop"
    )
    deliver.add_argument(
        "--loop",
        action="store_true",
        help="keep delivering every TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS until SIGTERM "
        "(a deliverer process beside servers that do not deliver; no HTTP)",
    )
    reevaluate = sub.add_parser(
        "reevaluate",
        help="re-screen every candidate and re-check deviations as of today (daily from cron)",
    )
    reevaluate.add_argument(
        "--as-of",
        type=dt.date.fromisoformat,
        default=None,
        help="evaluate as of this day instead of today (backfills, rehearsals)",
    )
    sub.add_parser(
        "remap",
        help="recompute every trial event and subject (after an upgrade or a value-set change)",
    )
    refresh = sub.add_parser(
        "refresh-cohorts",
        help="compute the cohort snapshot of every stale study now, once (no debounce)",
    )
    refresh.add_argument("--force", action="store_true", help="recompute every study, stale or not")
    cli_access.add_parsers(sub)
    cli_export.add_parser(sub)
    cli_pull.add_parser(sub)
    return parser


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    """SIGTERM or SIGINT arrived."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def deliver_until_stopped(settings: Settings) -> int:
    """The deliverer process: the servers' webhook dispatcher in the foreground until SIGTERM."""
    if settings.webhook_interval_seconds <= 0:
        print(
            "trialbridge: deliver --loop needs TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS above 0",
            file=sys.stderr,
        )
        return 2
    engine = make_engine(settings)
    if settings.auto_migrate:  # else the dispatcher waits for the release step's schema
        migrate.upgrade(engine)
    dispatcher = Dispatcher(engine, policy_from(settings), settings.webhook_interval_seconds)
    dispatcher.start()
    log.info(
        "delivering webhook notifications every %s s until SIGTERM",
        settings.webhook_interval_seconds,
    )
    try:
        # The handler runs in this (main) thread, which does nothing but sleep: the exception
        # cannot land inside anything that needs finishing. The dispatcher thread is stopped after.
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, _raise_stop)
        while True:
            time.sleep(3600)
    except _Stop as stop:
        log.info("%s: finishing the delivery in progress, then stopping", stop)
    finally:
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, signal.SIG_DFL)  # a second signal stops at once
        dispatcher.stop()
        engine.dispose()
    return 0


def cmd_refresh_cohorts(
    settings: Settings, protocols: dict[str, StudyProtocol], force: bool
) -> int:
    """One refresh pass: stale studies (or all, `force`) computed now; a line per study."""
    engine = make_engine(settings)
    migrate.prepare(engine, auto_migrate=settings.auto_migrate)
    evidence = EvidenceCodec(engine)
    refresher = CohortRefresher(
        engine, protocols, evidence.seal, interval_seconds=0, zone=settings.site_zone()
    )
    done = {r.study_id: r for r in refresher.run_pass(everything=True, force=force)}
    failed = False
    for study_id in sorted(protocols):
        result = done.get(study_id)
        if result is None or result.outcome == "fresh":
            head = refresher.fresh_head(study_id)
            as_of = head.data_as_of if head is not None else None
            print(f"{study_id}: fresh, data as of change {as_of}")
        elif result.outcome == "computed":
            print(
                f"{study_id}: computed in {result.seconds:.2f} s, "
                f"data as of change {result.data_as_of}"
            )
        elif result.outcome == "busy":
            print(f"{study_id}: another process is computing it")
        else:
            failed = True
            reason = "the lease was lost" if result.outcome == "lost" else "see the log"
            print(f"{study_id}: {result.outcome} ({reason})")
    engine.dispose()
    return 1 if failed else 0


def cmd_worker(settings: Settings, derivation: Derivation) -> int:
    """A job worker (PostgreSQL): procrastinate runs bulk jobs and pulls until SIGTERM."""
    if settings.jobs_in_process():
        print(
            "trialbridge worker: with this database, bulk jobs run in the server process "
            "(TRIALBRIDGE_JOB_BACKEND resolves to in-process); no worker is needed",
            file=sys.stderr,
        )
        return 0
    engine = make_engine(settings)
    migrate.prepare(engine, auto_migrate=settings.auto_migrate)
    if settings.auto_migrate:
        ensure_schema(engine)
    store = FhirService(engine, settings, derivation)
    pulls = SourcePulls(engine, store, settings)
    jobs = BulkJobs(engine, store)
    settle_process()
    log.info("job worker started (procrastinate queue on PostgreSQL)")
    try:
        run_worker(jobs, pulls, settings.database_url)
    finally:
        engine.dispose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trialbridge` console script."""
    try:
        return _run(argv)
    except migrate.SchemaNotReady as exc:
        print(f"trialbridge: {exc}", file=sys.stderr)
        return 2


def _run(argv: Sequence[str] | None) -> int:
    """Parse the command line and carry the command out."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"trialbridge: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    request_log.configure(settings.log_level)
    if args.command in ("client", "keys", "token", "audit"):
        return cli_access.run(args, settings)
    if args.command == "serve" and (
        refusal := cli_access.refuse_unauthenticated_bind(settings, args.host)
    ):
        print(f"trialbridge: {refusal}", file=sys.stderr)
        return 2
    if args.command in (
        "serve",
        "load",
        "remap",
        "reevaluate",
        "refresh-cohorts",
        "export",
        "pull",
        "worker",
    ):
        try:
            catalog = load_catalog(settings)  # fail before serving, naming the file and key
        except (ProtocolError, TerminologyError) as exc:
            print(f"trialbridge: {exc}", file=sys.stderr)
            return 2
    if args.command == "export":
        return cli_export.run(args, settings, catalog.protocols)
    if args.command == "pull":
        return cli_pull.run(args, settings, catalog.derivation)
    if args.command == "remap":
        engine = make_engine(settings)
        migrate.prepare(engine, auto_migrate=settings.auto_migrate)
        with unit_of_work(engine) as uow:
            remap_all(catalog.derivation, uow)
            totals = trial_events.totals(uow.session)
        engine.dispose()
        print(f"remapped: {totals['events']} event(s), {totals['subjects']} subject(s)")
        return 0
    if args.command == "refresh-cohorts":
        return cmd_refresh_cohorts(settings, catalog.protocols, args.force)
    if args.command == "deliver" and args.loop:
        return deliver_until_stopped(settings)
    if args.command == "deliver":
        engine = make_engine(settings)
        migrate.prepare(engine, auto_migrate=settings.auto_migrate)
        tally = deliver_due(engine, policy_from(settings))
        engine.dispose()
        print(", ".join(f"{n} {k}" for k, n in tally.items()))
        return 0
    if args.command == "reevaluate":
        engine = make_engine(settings)
        migrate.prepare(engine, auto_migrate=settings.auto_migrate)
        if args.as_of is not None:
            # noon of that day at the site: its site-local day is the day asked for
            moment = dt.datetime.combine(args.as_of, dt.time(12), tzinfo=settings.site_zone())
            catalog.derivation.clock = lambda: moment
        with unit_of_work(engine) as uow:
            patients = reevaluate_all(catalog.derivation, uow)
        engine.dispose()
        print(f"re-evaluated {patients} patient(s)")
        return 0
    if args.command == "migrate":
        engine = make_engine(settings)
        migrate.upgrade(engine)
        ensure_schema(engine)
        print(f"database at revision {migrate.current_revision(engine)}")
        engine.dispose()
        return 0
    if args.command == "load":
        return cmd_load(settings, args.paths, catalog.derivation)
    if args.command == "worker":
        return cmd_worker(settings, catalog.derivation)
    import uvicorn

    if settings.auto_migrate:  # once, before any of --workers N starts
        engine = make_engine(settings)
        migrate.upgrade(engine)
        ensure_schema(engine)
        engine.dispose()
    os.environ["TRIALBRIDGE_BIND_HOST"] = args.host  # the Host a client may name by default
    if args.workers > 1:  # the workers' metrics meet in files, so any one of them answers for all
        os.environ[metrics.MULTIPROCESS_ENV] = metrics.fresh_multiprocess_dir(settings.metrics_dir)
    uvicorn.run(
        "api.app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        access_log=False,  # uvicorn's prints paths and query strings; ours (request_log) does not
        # a worker still importing on a busy host answers no ping; uvicorn's 5 s kills it in a loop
        timeout_worker_healthcheck=60,
        # a deadline on each request head, a cut-off for bodies, the connection cap
        # (TRIALBRIDGE_HEADER_TIMEOUT_SECONDS, _BODY_TIMEOUT_SECONDS, _MAX_CONNECTIONS)
        http="api.client_limits:GuardedHttpToolsProtocol",
        timeout_keep_alive=settings.keep_alive_seconds,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
