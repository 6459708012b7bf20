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
from service.stats.balance import BalanceTable
from service.studies.document import ReportDocument
from service.studies.flow import ConsortFlow
from service.studies.kind import ListingRow


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
    """A study's cohort outcomes, the figures it offers, and when they were computed."""

    study: StudyRef
    kind: str
    computed_at: dt.datetime
    plots: Sequence[str]
    outcomes: Mapping[str, Any]
    flow: ConsortFlow | None = None
    table1: BalanceTable | None = None


@dataclass(frozen=True, slots=True)
class ListingPage:
    """One page of a study's per-subject analysis listing (from the cached cohort report)."""

    study: StudyRef
    computed_at: dt.datetime
    rows: Sequence[ListingRow]
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
    """A study's report document, with its figures rendered as SVG, and when it was computed.

    `computed_at` is the data cut-off: the report reflects the data the service held then.
    """

    study: StudyRef
    kind: str
    computed_at: dt.datetime
    document: ReportDocument
    figures: Mapping[str, bytes]
