"""`trialbridge pull SOURCE [--full]`: pull a hospital source now, printing progress lines."""

from __future__ import annotations

import argparse
import sys

from service.derivation.refresh import Derivation
from service.errors import ApiError
from service.fhir.interactions import FhirService
from service.fhir.pull.bulk import PullReport
from service.fhir.pull.client import PullError
from service.fhir.pull.jobs import SourcePulls
from service.fhir.pull.sources import SourceConfigError, load_sources
from service.infra import migrate
from service.infra.db import make_engine
from service.infra.process import settle_process
from service.infra.settings import Settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `pull` subcommand."""
    pull = sub.add_parser(
        "pull", help="pull a hospital source (TRIALBRIDGE_SOURCES_FILE) through Bulk Data $export"
    )
    pull.add_argument("source", metavar="SOURCE", help="the source's id in the sources file")
    pull.add_argument(
        "--full", action="store_true", help="ignore the last transactionTime: pull everything"
    )


def run(args: argparse.Namespace, settings: Settings, derivation: Derivation) -> int:
    """0: pulled cleanly; 1: pulled, with rejected lines or refused files, or failed; 2: cannot
    pull (configuration); 3: another pull of the source is running."""
    if settings.sources_file is None:
        print("trialbridge pull: TRIALBRIDGE_SOURCES_FILE is not set", file=sys.stderr)
        return 2
    try:
        sources = load_sources(settings.sources_file)
    except SourceConfigError as exc:
        print(f"trialbridge pull: {exc}", file=sys.stderr)
        return 2
    if args.source not in sources:
        known = ", ".join(sorted(sources)) or "none"
        print(f"trialbridge pull: no source {args.source!r} (known: {known})", file=sys.stderr)
        return 2
    engine = make_engine(settings)
    try:
        migrate.prepare(engine, auto_migrate=settings.auto_migrate)
        store = FhirService(engine, settings, derivation)
        settle_process()

        def say(message: str, _report: PullReport) -> None:
            print(f"{args.source}: {message}", flush=True)

        try:
            report = SourcePulls(engine, store, settings, sources).pull(
                args.source, full=args.full, say=say
            )
        except ApiError as exc:
            if exc.code == "sync_running":
                print(
                    f"trialbridge pull {args.source}: another pull of this source is running "
                    "(the server's schedule, an API sync or another command); try again later",
                    file=sys.stderr,
                )
                return 3
            print(f"trialbridge pull {args.source}: {exc}", file=sys.stderr)
            return 1
        except PullError as exc:
            print(f"trialbridge pull {args.source}: {exc}", file=sys.stderr)
            return 1
        for error in report.line_errors:
            print(f"{error.file}:{error.line}: {error.status} {error.diagnostics}", file=sys.stderr)
        for refused in report.refused:
            print(refused, file=sys.stderr)
        return 1 if report.line_errors or report.refused else 0
    finally:
        engine.dispose()
