"""Study-level outcomes and figures, computed from every subject's stored events.

A report reads the whole study, so it is cached per study and recomputed only when the data
changed (the event and subject tables' fingerprint moves). Each replica keeps its own cache.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Engine
from sqlmodel import Session

from service import event_store
from service.cirae_analysis import cirae_outcomes
from service.cirae_cohort import CohortPatient, build_cohort_report
from service.errors import ApiError
from service.fhir_time import iso_utc, utcnow
from service.plots import km_plot, swimmer_plot
from service.protocol import CohortProtocol, TrialProtocol
from service.studies import Protocol, find_protocol, read
from service.trial_cohort import CohortInput, cohort_report

Format = Literal["png", "svg"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}
Curves = list[tuple[str, Sequence[float], Sequence[bool]]]


@dataclass(frozen=True, slots=True)
class Figure:
    """A rendered figure and the validator clients cache it by."""

    body: bytes
    media_type: str
    etag: str


@dataclass(slots=True)
class _Report:
    """One computation of a study's outcomes, with what its figures are drawn from."""

    body: dict[str, Any]
    plots: dict[str, Callable[[Format], bytes]]
    rendered: dict[tuple[str, str], Figure] = field(default_factory=dict)


def _km(curves: Curves, title: str, level: float, origin: str) -> Callable[[Format], bytes]:
    """A deferred KM figure: drawn on the first request for it, then kept with the report."""
    return lambda fmt: km_plot(curves, title=title, fmt=fmt, level=level, origin=origin)


def trial_report(protocol: TrialProtocol, subjects: Sequence[CohortInput]) -> _Report:
    """NCT06088771: cohort figures, KM of EFS and OS, and the swimmer plot."""
    figures, data = cohort_report(protocol, subjects)
    level = data.level
    efs, os_ = data.km["efs"], data.km["os"]
    return _Report(
        figures,
        {
            "efs": _km([efs], f"{protocol.id}: event-free survival", level, "Day 1"),
            "os": _km([os_], f"{protocol.id}: overall survival", level, "Day 1"),
            "swimmer": lambda fmt: swimmer_plot(data.swimmer, fmt=fmt),
        },
    )


def cirae_report(protocol: CohortProtocol, patients: Sequence[CohortPatient]) -> _Report:
    """The cirAE cohort: groups, resolution, matching, Cox models, KM of OS by group."""
    built = build_cohort_report(protocol, patients)
    figures = cirae_outcomes(protocol, built.subjects)
    figures["excluded"] = {
        "n": len(built.excluded),
        "subjects": [{"subject_id": e.subject_id, "reason": e.reason} for e in built.excluded],
    }
    curves: Curves = [
        (g["label"], g["durations_days"], g["events"]) for g in figures["km_groups"] if g["events"]
    ]
    title = "Overall survival from ICB initiation, by group"
    return _Report(
        figures, {"os": _km(curves, title, figures["confidence_level"], "ICB initiation")}
    )


class CohortReports:
    """Cohort outcomes and figures per study, cached until the study's data changes."""

    def __init__(self, engine: Engine, protocols: dict[str, Protocol]) -> None:
        self.engine = engine
        self.protocols = protocols
        self._locks = {study_id: threading.Lock() for study_id in protocols}
        self._cache: dict[str, tuple[tuple[Any, ...], _Report]] = {}

    def outcomes(self, study_id: str) -> dict[str, Any]:
        """The study's cohort outcomes as JSON."""
        protocol = find_protocol(self.protocols, study_id)
        report = self._report(protocol)
        return {
            "study": {"id": protocol.id, "version": protocol.version, "kind": protocol.kind},
            "computed_at": report.body.get("computed_at"),
            "plots": {
                name: {
                    fmt: f"/api/v1/studies/{protocol.id}/outcomes/plots/{name}.{fmt}"
                    for fmt in MEDIA_TYPES
                }
                for name in sorted(report.plots)
            },
            "outcomes": {k: v for k, v in report.body.items() if k != "computed_at"},
        }

    def plot(self, study_id: str, name: str, fmt: str) -> Figure:
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
            figure = Figure(body, MEDIA_TYPES[fmt], f'"{digest}"')
            report.rendered[key] = figure
        return figure

    def _report(self, protocol: Protocol) -> _Report:
        """The cached report while the data is unchanged; else recomputed once per study."""
        stamp = read(self.engine, lambda s: event_store.fingerprint(s, protocol.id))
        cached = self._cache.get(protocol.id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with self._locks[protocol.id]:  # concurrent requests wait for one computation
            cached = self._cache.get(protocol.id)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            stamp, rows, events = read(self.engine, lambda s: _load(s, protocol.id))
            report = _compute(protocol, rows, events)
            report.body["computed_at"] = iso_utc(utcnow())
            self._cache[protocol.id] = (stamp, report)
            return report


def _compute(protocol: Protocol, rows: list[Any], events: dict[str, Any]) -> _Report:
    """The study's report from its subject rows and their events."""
    if isinstance(protocol, TrialProtocol):
        return trial_report(
            protocol,
            [CohortInput(r.subject_id, r.status, r.day1, events[r.patient_id]) for r in rows],
        )
    return cirae_report(
        protocol, [CohortPatient(r.patient_id, r.subject_id, events[r.patient_id]) for r in rows]
    )


def _load(session: Session, study_id: str) -> tuple[tuple[Any, ...], list[Any], dict[str, Any]]:
    """The fingerprint, subjects and events, read in one session so they agree."""
    stamp = event_store.fingerprint(session, study_id)
    rows = event_store.study_subjects(session, study_id)
    events = event_store.events_of(session, [r.patient_id for r in rows])
    return stamp, rows, events
