"""Study-level outcomes and figures, computed from every subject's stored events.

A report reads the whole study, so it is cached per study and recomputed only when the data
changed (the event and subject tables' fingerprint moves). Each replica keeps its own cache.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from service.errors import ApiError
from service.infra.clock import utcnow
from service.protocol.schema import StudyProtocol
from service.reads.access import find_protocol, read
from service.reads.paging import decode_cursor, encode_cursor
from service.reads.results import CohortDocument, CohortOutcomes, ListingPage, StudyRef
from service.repositories import eligibility_results, study_subjects, trial_events
from service.stats.plots import MEDIA_TYPES, RenderedFigure
from service.studies.document import figures_of
from service.studies.kind import CohortData, CohortReport, Member, Screened
from service.studies.registry import kind_of


class CohortReports:
    """Cohort outcomes and figures per study, cached until the study's data changes."""

    def __init__(self, engine: Engine, protocols: dict[str, StudyProtocol]) -> None:
        self.engine = engine
        self.protocols = protocols
        self._locks = {study_id: threading.Lock() for study_id in protocols}
        self._cache: dict[str, tuple[tuple[Any, ...], CohortReport]] = {}

    def outcomes(self, study_id: str) -> CohortOutcomes:
        """The study's cohort outcomes and the names of its figures."""
        protocol = find_protocol(self.protocols, study_id)
        report = self._report(protocol)
        return CohortOutcomes(
            study=StudyRef.of(protocol),
            kind=protocol.kind,
            computed_at=report.computed_at or utcnow(),
            plots=sorted(report.plots),
            outcomes=report.body,
            flow=report.flow,
            table1=report.table1,
        )

    def listing(self, study_id: str, *, cursor: str | None, limit: int) -> ListingPage:
        """A page of the study's per-subject analysis listing, in subject-id order."""
        protocol = find_protocol(self.protocols, study_id)
        after = decode_cursor(cursor) if cursor is not None else None
        report = self._report(protocol)
        rows = [r for r in report.listing if after is None or r.subject_id > after]
        page = rows[:limit]
        more = len(rows) > limit
        return ListingPage(
            study=StudyRef.of(protocol),
            computed_at=report.computed_at or utcnow(),
            rows=page,
            next_cursor=encode_cursor(page[-1].subject_id) if more and page else None,
        )

    def document(self, study_id: str) -> CohortDocument:
        """The study's report document and every figure it shows, as SVG (404 without one)."""
        protocol = find_protocol(self.protocols, study_id)
        report = self._report(protocol)
        if report.document is None:
            raise ApiError(404, "not_applicable", f"study {study_id} has no report document")
        document = report.document()
        names = [n for s in document.sections for n in figures_of((s,))]
        return CohortDocument(
            study=StudyRef.of(protocol),
            kind=protocol.kind,
            computed_at=report.computed_at or utcnow(),
            document=document,
            figures={n: _figure(report, study_id, n, "svg").body for n in dict.fromkeys(names)},
        )

    def plot(self, study_id: str, name: str, fmt: str) -> RenderedFigure:
        """One figure of the study as PNG or SVG."""
        protocol = find_protocol(self.protocols, study_id)
        if fmt not in MEDIA_TYPES:
            raise ApiError(404, "plot_not_found", f"no format {fmt!r}; known: png, svg")
        return _figure(self._report(protocol), study_id, name, fmt)

    def _report(self, protocol: StudyProtocol) -> CohortReport:
        """The cached report while the data is unchanged; else recomputed once per study."""
        stamp = read(self.engine, lambda s: _fingerprint(s, protocol.id))
        cached = self._cache.get(protocol.id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with self._locks[protocol.id]:  # concurrent requests wait for one computation
            cached = self._cache.get(protocol.id)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            stamp, rows, events, screened = read(self.engine, lambda s: _load(s, protocol.id))
            report = _compute(protocol, rows, events, screened)
            report.computed_at = utcnow()
            self._cache[protocol.id] = (stamp, report)
            return report


def _figure(report: CohortReport, study_id: str, name: str, fmt: str) -> RenderedFigure:
    """One figure of a computed report, rendered once per format and kept with the report."""
    draw = report.plots.get(name)
    if draw is None:
        known = ", ".join(sorted(report.plots))
        raise ApiError(
            404, "plot_not_found", f"study {study_id} has no plot {name!r}; known: {known}"
        )
    key = (name, fmt)
    figure = report.rendered.get(key)
    if figure is None:
        body = draw("png" if fmt == "png" else "svg")
        digest = hashlib.sha256(body).hexdigest()[:32]
        figure = RenderedFigure(body, MEDIA_TYPES[fmt], f'"{digest}"')
        report.rendered[key] = figure
    return figure


def _compute(
    protocol: StudyProtocol, rows: list[Any], events: dict[str, Any], screened: list[Any]
) -> CohortReport:
    """The study's report from its subject rows, their events and the screening list."""
    members = [
        Member(r.patient_id, r.subject_id, r.status, r.day1, events[r.patient_id]) for r in rows
    ]
    data = CohortData(members, [_screened(r) for r in screened])
    return kind_of(protocol).cohort_report(protocol, data)


def _screened(row: Any) -> Screened:
    """A stored screening row as the kinds read it (criteria from its stored payload)."""
    payload = json.loads(row.payload)
    criteria = payload.get("criteria") if isinstance(payload, dict) else None
    as_of = row.as_of if isinstance(row.as_of, dt.date) else dt.date.fromisoformat(str(row.as_of))
    return Screened(
        patient_id=row.patient_id,
        subject_id=row.subject_id,
        overall=row.overall,
        at_enrollment=row.at_enrollment,
        as_of=as_of,
        criteria=tuple(c for c in criteria or () if isinstance(c, dict)),
    )


def _fingerprint(session: Session, study_id: str) -> tuple[Any, ...]:
    """Moves when the study's subjects, their events or its screening list change."""
    return (
        *study_subjects.fingerprint(session, study_id),
        *eligibility_results.fingerprint(session, study_id),
    )


def _load(
    session: Session, study_id: str
) -> tuple[tuple[Any, ...], list[Any], dict[str, Any], list[Any]]:
    """The fingerprint, subjects, events and screening rows, read in one session so they agree."""
    stamp = _fingerprint(session, study_id)
    rows = study_subjects.study_subjects(session, study_id)
    events = trial_events.events_of(session, [r.patient_id for r in rows])
    screened = eligibility_results.study_eligibility(session, study_id)
    return stamp, rows, events, screened
