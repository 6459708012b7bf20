"""What the read use cases return: typed results that api/ shapes into the wire JSON.

Clinical bodies computed by a study kind (eligibility verdicts, endpoints, cohort figures) stay
JSON-ready mappings here: their shape is the kind's, documented with the API schemas.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_mapping.events.model import TrialEvent
from service.protocol.schema import StudyProtocol
from service.studies.document import ReportDocument
from service.studies.kind import ListingName


@dataclass(frozen=True, slots=True)
class StudyRef:
    """Which study and protocol version a result belongs to."""

    id: str
    version: str

    @classmethod
    def of(cls, protocol: StudyProtocol) -> StudyRef:
        """The reference of a loaded protocol."""
        return cls(protocol.id, protocol.version)


@dataclass(frozen=True, slots=True)
class Subject:
    """A study subject as the API lists it: pseudonymous id, never the patient's."""

    subject_id: str
    subject_number: str | None
    status: str
    enrolled_on: dt.date | None
    day1: dt.date | None
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SubjectPage:
    """One page of a study's subjects."""

    study: StudyRef
    subjects: Sequence[Subject]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One event of a subject's timeline and its study day (CDISC: no day 0)."""

    event: TrialEvent
    study_day: int | None


@dataclass(frozen=True, slots=True)
class Timeline:
    """A subject's events in study-day order."""

    study: StudyRef
    subject: Subject
    computed_at: dt.datetime
    events: Sequence[TimelineEntry]


@dataclass(frozen=True, slots=True)
class SubjectEndpoints:
    """A subject's per-subject outcomes, computed on read from its events."""

    study: StudyRef
    subject_id: str
    computed_at: dt.datetime
    endpoints: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One screening candidate's overall verdict and verdict counts."""

    subject_id: str
    overall: str
    met: int
    not_met: int
    unknown: int
    at_enrollment: str | None
    as_of: dt.date
    computed_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ScreeningPage:
    """One page of a study's screening list."""

    study: StudyRef
    candidates: Sequence[Candidate]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class CandidateEligibility:
    """A candidate's criteria: the stored result, or one evaluated on demand for another day."""

    study: StudyRef
    subject_id: str
    computed_at: dt.datetime
    verdicts: Mapping[str, Any]
    at_enrollment: str | None


@dataclass(frozen=True, slots=True)
class CohortOutcomes:
    """A study's cohort snapshot: when it was computed, the change it reflects, whether a later
    change made it stale, its figures, its validator, and the outcomes as stored JSON (evidence
    already sealed; None when the client's copy is current)."""

    study: StudyRef
    kind: str
    computed_at: dt.datetime
    data_as_of: int
    stale: bool
    plots: Sequence[str]
    etag: str
    body: str | None


@dataclass(frozen=True, slots=True)
class ListingPage:
    """One page of one of a study's listings (the per-subject analysis rows, the swimmer plot's,
    or the subjects left out), read from the last snapshot: each row as stored JSON (evidence
    already sealed), with the snapshot's time, change and validator."""

    name: ListingName
    study: StudyRef
    computed_at: dt.datetime
    data_as_of: int
    stale: bool
    etag: str
    rows: Sequence[str] | None  # None when the client's copy is current (a 304)
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class DeviationPage:
    """One page of a study's deviation log (each deviation in its wire form)."""

    study: StudyRef
    deviations: Sequence[Mapping[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change to a deviation: who, when, what."""

    at: dt.datetime
    actor: str
    action: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DeviationDetail:
    """A deviation (its wire form, the same webhooks carry), its version and full history."""

    deviation: Mapping[str, Any]
    version: int
    history: Sequence[HistoryEntry]


@dataclass(frozen=True, slots=True)
class CohortDocument:
    """A study's report document from its last snapshot, with its figures (SVG or PNG, as asked).

    `computed_at` and `data_as_of` are the data cut-off: the report reflects the data the service
    held when the snapshot was computed (every change up to number `data_as_of`).
    """

    study: StudyRef
    kind: str
    computed_at: dt.datetime
    data_as_of: int
    stale: bool
    etag: str
    document: ReportDocument | None  # None when the client's copy is current (a 304)
    figures: Mapping[str, bytes]
