"""The SDTM export use case: read a study's subjects and events, tabulate, write or check the files."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
from sqlalchemy import Engine
from sqlmodel import Session

from service.errors import ApiError
from service.export.sdtm import formats
from service.export.sdtm.conformance import Finding, check
from service.export.sdtm.define_xml import define_xml
from service.export.sdtm.domains import SubjectRecord, Tabulation
from service.export.sdtm.metadata import DATASETS, StudyDesign, metadata, study_design
from service.export.sdtm.model import Dataset, Package
from service.infra.clock import utcnow
from service.protocol.schema import StudyProtocol
from service.reads.access import capability, read
from service.repositories import study_subjects, trial_events
from service.studies.kind import TabulationPlan

Format = Literal["json", "xpt", "csv"]
FORMATS: dict[str, str] = {
    "json": "application/json",
    "xpt": "application/octet-stream",
    "csv": "text/csv; charset=utf-8",
}
FORMAT_NAMES: tuple[Format, ...] = ("json", "xpt", "csv")
_FILE = re.compile(r"(?P<name>[A-Za-z]{2,8})\.(?P<fmt>json|xpt|csv)")


@dataclass(frozen=True, slots=True)
class ExportFile:
    """One file of the export: its name, media type and bytes."""

    name: str
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What `--check` found: conformance findings and Dataset-JSON schema errors per file."""

    findings: Sequence[Finding]
    schema_errors: dict[str, list[str]]

    @property
    def errors(self) -> int:
        """How many errors (warnings do not count)."""
        return sum(1 for f in self.findings if f.severity == "error") + sum(
            len(v) for v in self.schema_errors.values()
        )


def _load(session: Session, study_id: str, zone: dt.tzinfo) -> list[SubjectRecord]:
    """Every subject of the study with all of its events (dated in the site's calendar), read in
    one session."""
    rows = study_subjects.study_subjects(session, study_id)
    events = trial_events.events_of(session, [r.patient_id for r in rows], zone=zone)
    return [
        SubjectRecord(
            subject_id=r.subject_id,
            subject_number=r.subject_number,
            status=r.status,
            enrolled_on=r.enrolled_on,
            day1=r.day1,
            events=events[r.patient_id],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class SdtmExporter:
    """SDTM tabulations of the studies whose kind offers one (NCT06088771)."""

    engine: Engine
    protocols: dict[str, StudyProtocol]
    zone: dt.tzinfo = dt.UTC  # the site's time zone: events are read in its calendar

    def _plan(self, study_id: str) -> tuple[StudyProtocol, TabulationPlan, StudyDesign]:
        protocol, tabulation = capability(self.protocols, study_id, "tabulation", "SDTM tabulation")
        design = study_design(protocol.id)
        if design is None:
            raise ApiError(404, "not_applicable", f"study {study_id} has no SDTM tabulation design")
        return protocol, tabulation(protocol), design

    def package(self, study_id: str) -> Package:
        """Every dataset of the study, made now from the stored subjects and events."""
        protocol, plan, design = self._plan(study_id)
        subjects = read(self.engine, lambda s: _load(s, protocol.id, self.zone))
        meta = metadata()
        rows = Tabulation(protocol.id, plan, design, meta).build(subjects)
        datasets = {name: Dataset(meta.domains[name], rows[name]) for name in DATASETS}
        created = utcnow().replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Package(protocol.id, created, datasets, design)

    def dataset_file(self, study_id: str, filename: str) -> ExportFile:
        """One dataset in one format, by its file name (`dm.json`, `AE.xpt`, `suppae.csv`)."""
        m = _FILE.fullmatch(filename)
        name = m["name"].upper() if m else None
        if m is None or name not in DATASETS:
            raise ApiError(
                404,
                "dataset_not_found",
                f"no SDTM file {filename[:40]!r}; datasets: "
                f"{', '.join(d.lower() for d in DATASETS)}; formats: json, xpt, csv",
            )
        package = self.package(study_id)
        fmt: Format = m["fmt"]  # type: ignore[assignment]
        return render(package, name, fmt)

    def define(self, study_id: str) -> ExportFile:
        """define.xml for the study's export."""
        package = self.package(study_id)
        return ExportFile("define.xml", "application/xml", define_xml(package, metadata()))


def render(package: Package, name: str, fmt: Format) -> ExportFile:
    """One dataset of a package in one format."""
    ds = package.datasets[name]
    filename = f"{name.lower()}.{fmt}"
    if fmt == "json":
        body = formats.dataset_json_bytes(ds, package)
    elif fmt == "xpt":
        body = formats.xpt_bytes(ds)
    else:
        body = formats.csv_text(ds).encode()
    return ExportFile(filename, FORMATS[fmt], body)


def write_package(package: Package, out: Path) -> list[Path]:
    """Every dataset as .json, .xpt and .csv, and define.xml, into a folder (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in package.datasets:
        for fmt in FORMAT_NAMES:
            file = render(package, name, fmt)
            path = out / file.name
            path.write_bytes(file.body)
            written.append(path)
    define = out / "define.xml"
    define.write_bytes(define_xml(package, metadata()))
    written.append(define)
    return written


def check_package(package: Package) -> CheckReport:
    """Our conformance check on the datasets, and each Dataset-JSON against the official schema."""
    schema = {}
    for name, ds in package.datasets.items():
        document = orjson.loads(formats.dataset_json_bytes(ds, package))
        errors = formats.schema_errors(document)
        if errors:
            schema[f"{name.lower()}.json"] = errors
    return CheckReport(check(package.datasets, metadata()), schema)
