"""Study-level outcomes and figures, computed from every subject's stored events.

A report reads the whole study, so it is cached per study and recomputed only when the data
changed (the event and subject tables' fingerprint moves). Each replica keeps its own cache.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from service.errors import ApiError
from service.infra.clock import utcnow
from service.protocol.schema import StudyProtocol
from service.reads.access import find_protocol, read
from service.reads.results import CohortOutcomes, StudyRef
from service.repositories import study_subjects, trial_events
from service.stats.plots import MEDIA_TYPES, RenderedFigure
from service.studies.kind import CohortReport, Member
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
        )

    def plot(self, study_id: str, name: str, fmt: str) -> RenderedFigure:
        """One figure of the study as PNG or SVG."""
        protocol = find_protocol(self.protocols, study_id)
        if fmt not in MEDIA_TYPES:
            raise ApiError(404, "plot_not_found", f"no format {fmt!r}; known: png, svg")
        report = self._report(protocol)
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

    def _report(self, protocol: StudyProtocol) -> CohortReport:
        """The cached report while the data is unchanged; else recomputed once per study."""
        stamp = read(self.engine, lambda s: study_subjects.fingerprint(s, protocol.id))
        cached = self._cache.get(protocol.id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with self._locks[protocol.id]:  # concurrent requests wait for one computation
            cached = self._cache.get(protocol.id)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            stamp, rows, events = read(self.engine, lambda s: _load(s, protocol.id))
            report = _compute(protocol, rows, events)
            report.computed_at = utcnow()
            self._cache[protocol.id] = (stamp, report)
            return report


def _compute(protocol: StudyProtocol, rows: list[Any], events: dict[str, Any]) -> CohortReport:
    """The study's report from its subject rows and their events, by the study's kind."""
    members = [
        Member(r.patient_id, r.subject_id, r.status, r.day1, events[r.patient_id]) for r in rows
    ]
    return kind_of(protocol).cohort_report(protocol, members)


def _load(session: Session, study_id: str) -> tuple[tuple[Any, ...], list[Any], dict[str, Any]]:
    """The fingerprint, subjects and events, read in one session so they agree."""
    stamp = study_subjects.fingerprint(session, study_id)
    rows = study_subjects.study_subjects(session, study_id)
    events = trial_events.events_of(session, [r.patient_id for r in rows])
    return stamp, rows, events
