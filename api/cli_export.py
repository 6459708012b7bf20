"""`trialbridge export sdtm --out DIR [--check]`: the SDTM files of a study, and our checks on them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.errors import ApiError
from service.export.sdtm.export import SdtmExporter, check_package, write_package
from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.protocol.schema import StudyProtocol

DEFAULT_STUDY = "NCT06088771"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `export` subcommand."""
    export = sub.add_parser("export", help="export study data in a standard format (CDISC SDTM)")
    what = export.add_subparsers(dest="what", required=True)
    sdtm = what.add_parser(
        "sdtm",
        help="every SDTM dataset as Dataset-JSON, SAS XPORT v5 and CSV, and define.xml",
    )
    sdtm.add_argument("--out", type=Path, required=True, help="the folder to write (created)")
    sdtm.add_argument("--study", default=DEFAULT_STUDY, help=f"default {DEFAULT_STUDY}")
    sdtm.add_argument(
        "--check",
        action="store_true",
        help="also run the conformance checks and the Dataset-JSON schema; exit 1 on an error",
    )


def run(args: argparse.Namespace, settings: Settings, protocols: dict[str, StudyProtocol]) -> int:
    """Write the export; with --check, print each finding and fail on errors."""
    engine = make_engine(settings)
    try:
        migrate.prepare(engine, auto_migrate=settings.auto_migrate)
        try:
            package = SdtmExporter(engine, protocols, settings.site_zone()).package(args.study)
        except ApiError as exc:
            print(f"trialbridge export sdtm: {exc.message}", file=sys.stderr)
            return 2
        written = write_package(package, args.out)
        rows = sum(len(ds.rows) for ds in package.datasets.values())
        print(
            f"wrote {len(written)} file(s) to {args.out}: "
            f"{len(package.datasets)} datasets, {rows} record(s), define.xml"
        )
        if not args.check:
            return 0
        report = check_package(package)
        for finding in report.findings:
            print(finding.line())
        for file, errors in report.schema_errors.items():
            for error in errors:
                print(f"ERROR {file} [dataset_json_schema]: {error}")
        warnings = sum(1 for f in report.findings if f.severity == "warning")
        print(f"check: {report.errors} error(s), {warnings} warning(s)")
        return 1 if report.errors else 0
    finally:
        engine.dispose()
