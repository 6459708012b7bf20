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
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar

from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import site_date
from service.protocol.schema import StudyProtocol
from service.repositories.unit_of_work import UnitOfWork
from service.stats.balance import BalanceTable
from service.stats.figures import FigureData
from service.studies.document import ReportDocument
from service.studies.flow import ConsortFlow

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
    are stable. `zone` is the site's time zone: events read for the batch are dated in it, and
    `today` is its calendar day at `now`.
    """

    patient_ids: Sequence[str]
    brief: Mapping[str, Sequence[TrialEvent]]
    facts: Mapping[str, SubjectFacts | None]
    key: bytes
    now: dt.datetime
    zone: dt.tzinfo = dt.UTC

    @property
    def today(self) -> dt.date:
        """The site's calendar day at `now`."""
        return site_date(self.now, self.zone)


@dataclass(frozen=True, slots=True)
class Member:
    """One subject of a study with all of its events, as a cohort report reads it."""

    patient_id: str
    subject_id: str
    status: str
    day1: dt.date | None
    events: Sequence[TrialEvent]
    # streamed for a kind with `days_only_events`: those kinds are not in `events`, only their
    # latest day seen is (day precision or finer, not a request; None: none, or not streamed)
    seen: dt.date | None = None


@dataclass(frozen=True, slots=True)
class Screened:
    """One screening candidate's stored result, as a cohort report reads it.

    `criteria` are the stored verdicts (id, number, type, title, verdict, ...) as of `as_of`;
    `at_enrollment` is the overall status on the enrollment day (None when not enrolled).
    """

    patient_id: str
    subject_id: str
    overall: str
    at_enrollment: str | None
    as_of: dt.date
    criteria: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class CohortData:
    """What a cohort report is computed from: the subjects and the screening list.

    `records`: for a kind with `reduce_member`, each member reduced as it was read (in `members`'
    order; `members` is then empty), so the members' events were never all held at once.
    """

    members: Sequence[Member]
    screened: Sequence[Screened] = ()
    records: Sequence[Any] | None = None


# The per-subject listings a cohort snapshot can keep: the analysis listing, the swimmer plot's
# rows, and the subjects left out of the analysis with why (GET …/outcomes/subjects, …/swimmer,
# …/excluded).
ListingName = Literal["subjects", "swimmer", "excluded"]


@dataclass(frozen=True, slots=True)
class ListingRow:
    """One subject's row of a study's analysis listing: pseudonymous id, no dates of birth or names."""

    subject_id: str
    fields: Mapping[str, Any]


@dataclass(slots=True)
class CohortReport:
    """A study's cohort outcomes (JSON-ready) and its figures' data (each figure is drawn from
    its stored data when first asked for, not when the cohort is computed).

    The typed parts api/ shapes: `flow` (CONSORT-style flow of patients), `table1` (baseline
    characteristics with SMDs), `listing` (per-subject analysis rows, in subject-id order) and
    `document` (the report a statistician attaches to a manuscript).
    """

    body: dict[str, Any]
    plots: dict[str, FigureData]
    computed_at: dt.datetime | None = None  # set by whoever computed it
    flow: ConsortFlow | None = None
    table1: BalanceTable | None = None
    listing: tuple[ListingRow, ...] = ()
    # the swimmer plot's rows, one per dosed subject in subject-id order (a kind with the plot)
    swimmer: tuple[ListingRow, ...] = ()
    # the subjects the analysis leaves out, each with its reason, in subject-id order
    excluded: tuple[ListingRow, ...] = ()
    # the report document (report.html), built when first asked for
    document: Callable[[], ReportDocument] | None = None

    def listings(self) -> dict[ListingName, tuple[ListingRow, ...]]:
        """The listings the snapshot keeps, by name (each paged at its own endpoint)."""
        return {"subjects": self.listing, "swimmer": self.swimmer, "excluded": self.excluded}


@dataclass(frozen=True, slots=True)
class StudyTreatment:
    """A protocol-specified study treatment, as a tabulation (SDTM EX) needs it."""

    id: str  # the protocol's name for it ("cemiplimab")
    valueset: str  # the value set its administrations match
    dose: Decimal  # the planned dose on its day, in `unit`
    unit: str  # "mg"
    route: str  # the protocol's route ("IV", "SC")


@dataclass(frozen=True, slots=True)
class TabulationPlan:
    """What a tabulation export (SDTM) asks of a study kind, so it never reads the protocol model.

    `screening_days`: the screening epoch starts this many days before Day 1 (or at enrollment,
    if earlier). `treatment_end`: the last day of the treatment epoch of one subject (its events
    and Day 1 in), None while it is open; later dated records are follow-up.
    """

    treatments: tuple[StudyTreatment, ...]
    screening_days: int
    treatment_end: Callable[[Sequence[TrialEvent], dt.date | None], dt.date | None]


@dataclass(frozen=True)
class StudyKind(Generic[P]):
    """One kind of study: its protocol model and what the service asks of it.

    The optional parts are capabilities: a kind without `screening` has no eligibility endpoints,
    without `deviation_rules` no deviation log, without `subject_outcomes` no per-subject
    endpoints, without `tabulation` no SDTM export; the study API answers 404 `not_applicable`
    for them. With `reduce_member` (pure: a member with its events → a compact record of what its
    cohort report reads) the refresher reads the members chunk by chunk, reduces each at once and
    drops its events, and `cohort_report` gets the records (`CohortData.records`); without it,
    every member with all of its events.
    """

    name: str  # the `kind` protocol files name
    title: str  # what the API calls a study of this kind
    protocol_model: type[P]
    subject_statuses: frozenset[str]
    membership: Callable[[P, Sequence[TrialEvent]], SubjectFacts | None]
    # the event kinds `membership` (and `refresh`'s candidacy check) read: only these are loaded
    membership_events: frozenset[EventKind]
    cohort_report: Callable[[P, CohortData], CohortReport]
    # True when it changed what the cohort report reads beyond the subjects (a screening list)
    refresh: Callable[[UnitOfWork, P, SubjectBatch], bool] | None = None
    screening: Callable[[P, Sequence[TrialEvent], dt.date], dict[str, Any]] | None = None
    subject_outcomes: Callable[[P, Sequence[TrialEvent], dt.date | None], dict[str, Any]] | None = (
        None
    )
    deviation_rules: Callable[[P], tuple[str, ...]] | None = None
    # a tabulation (SDTM) export: the study treatments and epochs of the protocol
    tabulation: Callable[[P], TabulationPlan] | None = None
    # patients with events of these kinds are re-evaluated daily (time-relative verdicts)
    reevaluate_events: frozenset[EventKind] = frozenset()
    # a member (with its events) as the compact record its cohort report reads (streamed loading)
    reduce_member: Callable[[P, Member], Any] | None = None
    # event kinds `reduce_member` reads only as days the patient was seen: streamed, they are not
    # built as events, the member gets their latest day instead (`Member.seen`)
    days_only_events: frozenset[EventKind] = frozenset()
    # the per-subject listings its snapshots keep, each paged at its own endpoint, not in the
    # outcomes body (which names a subject only as an exception: left out of a curve or a model)
    listings: frozenset[ListingName] = frozenset({"subjects"})
