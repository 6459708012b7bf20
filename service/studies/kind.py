"""What every study kind supplies to the service, and the types they share.

A study kind (an interventional trial, a retrospective cohort, ...) is a package under
`service/studies/` exposing one `StudyKind`; `registry.py` lists them. Kinds never import each
other: what they have in common lives here.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from service.protocol.schema import StudyProtocol
from service.repositories.unit_of_work import UnitOfWork
from service.stats.plots import Draw, RenderedFigure

# The width of study_subject.subject_number: a longer identifier is no subject number (it stays in
# the resource), so the same ResearchSubject is accepted alike on SQLite and PostgreSQL.
SUBJECT_NUMBER_MAX = 256

P = TypeVar("P", bound=StudyProtocol)


@dataclass(frozen=True, slots=True)
class SubjectFacts:
    """What the service knows about one subject of one study."""

    status: str
    subject_number: str | None
    enrolled_on: dt.date | None
    day1: dt.date | None
    evidence: tuple[SourceRef, ...]


def pseudonym(key: bytes, study_id: str, patient_id: str) -> str:
    """A stable subject id that reveals neither the MRN nor the FHIR id (keyed hash)."""
    digest = hmac.new(key, f"{study_id}\x1f{patient_id}".encode(), hashlib.sha256).digest()
    return "S-" + base64.b32encode(digest[:10]).decode().rstrip("=")


def earliest_day(events: Iterable[TrialEvent]) -> tuple[dt.date | None, SourceRef | None]:
    """The first day among these events and the resource it came from (membership's Day 1)."""
    best: tuple[dt.date, SourceRef] | None = None
    for e in events:
        day = e.date.day if e.date else None
        if day is not None and (best is None or day < best[0]):
            best = (day, e.source)
    return (best[0], best[1]) if best else (None, None)


@dataclass(frozen=True, slots=True)
class SubjectBatch:
    """The patients one write touched, as a kind's per-subject refresh sees them.

    `brief` holds only the membership event kinds; `facts` is this study's membership verdict
    per patient (None: not a subject). `key` is the pseudonym key, so subject and deviation ids
    are stable.
    """

    patient_ids: Sequence[str]
    brief: Mapping[str, Sequence[TrialEvent]]
    facts: Mapping[str, SubjectFacts | None]
    key: bytes
    now: dt.datetime


@dataclass(frozen=True, slots=True)
class Member:
    """One subject of a study with all of its events, as a cohort report reads it."""

    patient_id: str
    subject_id: str
    status: str
    day1: dt.date | None
    events: Sequence[TrialEvent]


@dataclass(slots=True)
class CohortReport:
    """A study's cohort outcomes (JSON-ready) and its figures, each drawn on first request."""

    body: dict[str, Any]
    plots: dict[str, Draw]
    computed_at: dt.datetime | None = None  # set by whoever computed it
    rendered: dict[tuple[str, str], RenderedFigure] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyKind(Generic[P]):
    """One kind of study: its protocol model and what the service asks of it.

    The optional parts are capabilities: a kind without `screening` has no eligibility endpoints,
    without `deviation_rules` no deviation log, without `subject_outcomes` no per-subject
    endpoints; the study API answers 404 `not_applicable` for them.
    """

    name: str  # the `kind` protocol files name
    title: str  # what the API calls a study of this kind
    protocol_model: type[P]
    subject_statuses: frozenset[str]
    membership: Callable[[P, Sequence[TrialEvent]], SubjectFacts | None]
    # the event kinds `membership` (and `refresh`'s candidacy check) read: only these are loaded
    membership_events: frozenset[EventKind]
    cohort_report: Callable[[P, Sequence[Member]], CohortReport]
    refresh: Callable[[UnitOfWork, P, SubjectBatch], None] | None = None
    screening: Callable[[P, Sequence[TrialEvent], dt.date], dict[str, Any]] | None = None
    subject_outcomes: Callable[[P, Sequence[TrialEvent], dt.date | None], dict[str, Any]] | None = (
        None
    )
    deviation_rules: Callable[[P], tuple[str, ...]] | None = None
    # patients with events of these kinds are re-evaluated daily (time-relative verdicts)
    reevaluate_events: frozenset[EventKind] = frozenset()
