"""Response shapes of the JSON API, for the OpenAPI schema and its examples."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

from service.studies.interventional.protocol import DeviationCode

_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _storable(value: str) -> str:
    """Text PostgreSQL can store: it refuses U+0000 (a 500 instead of a 422 otherwise)."""
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain U+0000")
    return value


def _not_blank(value: str) -> str:
    """A name or secret made only of whitespace says nothing: refuse it rather than store it."""
    if not value.strip():
        raise PydanticCustomError("blank_string", "must not be only whitespace")
    return value


def _iso_day(value: object) -> dt.date:
    """Only YYYY-MM-DD in ASCII: pydantic's lax date would read 86400 or a datetime as a day."""
    if not isinstance(value, str) or not _ISO_DAY.fullmatch(value):
        raise PydanticCustomError("day_format", "must be a day written YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise PydanticCustomError("day_value", "must be a day of the calendar") from exc


# Markers for body strings; put them after any StringConstraints so lengths are checked first.
STORABLE = AfterValidator(_storable)
NOT_BLANK = AfterValidator(_not_blank)
StorableText = Annotated[str, STORABLE]
"""A body string either database can store (no U+0000)."""
IsoDay = Annotated[dt.date, BeforeValidator(_iso_day)]
"""A query day written YYYY-MM-DD in ASCII digits, nothing looser."""


class ErrorDetail(BaseModel):
    """The body of every JSON-API error."""

    status: int = Field(examples=[404])
    code: str = Field(
        description="Stable machine-readable code",
        examples=["study_not_found", "subject_not_found", "invalid_cursor", "invalid_request"],
    )
    message: str = Field(examples=["no study 'NCT0000'; known: NCT06088771, cirae-dupilumab"])
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorBody(BaseModel):
    """`{"error": {...}}`: one shape for every error of /api/v1."""

    error: ErrorDetail


class StudyRef(BaseModel):
    """Which protocol version produced a result."""

    id: str = Field(examples=["NCT06088771"])
    version: str = Field(examples=["1.0.0"])


class StudySummary(StudyRef):
    """A study this deployment serves."""

    title: str
    kind: Literal["interventional", "cohort"]


class StudyList(BaseModel):
    """Every study served."""

    studies: list[StudySummary]


class StudyDetail(StudySummary):
    """A study with all of its protocol settings (schedule, criteria, rules, outcomes, choices)."""

    sources: list[str]
    settings: dict[str, Any] = Field(
        examples=[{"schedule": {"surgery_window": {"start": 15, "end": 22}}}]
    )


class Subject(BaseModel):
    """A subject under its pseudonymous id (never the MRN or the FHIR id)."""

    subject_id: str = Field(examples=["S-4C7QJ2M5ZK3XW6YB"])
    subject_number: str | None = Field(description="The study's own number", examples=["001-003"])
    status: str = Field(examples=["on-study", "included"])
    enrolled_on: str | None = Field(examples=["2025-03-03"])
    day1: str | None = Field(
        description="First study-drug day on or after enrollment (Day 1)", examples=["2025-03-10"]
    )
    updated_at: str


class SubjectPage(BaseModel):
    """One page of subjects; pass `next_cursor` back as `cursor` for the next."""

    study: StudyRef
    subjects: list[Subject]
    next_cursor: str | None


class DateValue(BaseModel):
    """A recorded date with its precision and the local calendar days it covers."""

    value: str = Field(examples=["2025-06", "2025-03-10T23:30:00-05:00"])
    precision: Literal["year", "month", "day", "time"]
    first_day: str
    last_day: str


class Evidence(BaseModel):
    """The exact resource version an event came from, cited without its FHIR id.

    `GET /api/v1/studies/{study}/evidence/{evidence_id}` resolves it to the FHIR reference for a
    token that may read that resource under /fhir (source-data verification).
    """

    evidence_id: str = Field(
        examples=["EV-3q2x0H8Qn9p5cA1xL0wLr1x2tX5u8d0Kk2m4b6c8e0g2i4k6m8o0q2s4u6w8y0"],
        description="Opaque and stable: the same resource version always has the same id",
    )
    resource_type: str = Field(examples=["MedicationAdministration"])


class EvidenceOut(BaseModel):
    """An evidence id resolved: the FHIR resource version it cites, and where to read it."""

    evidence_id: str
    resource_type: str = Field(examples=["Observation"])
    reference: str = Field(examples=["Observation/obs-1/_history/2"])
    url: str = Field(examples=["https://trialbridge.example/fhir/Observation/obs-1/_history/2"])


class ConceptMatchOut(BaseModel):
    """A value set the resource's code belongs to, and how it matched."""

    concept: str = Field(examples=["dupilumab"])
    matched_by: Literal["code", "name"]
    system: str | None
    code: str | None
    text: str | None


class Event(BaseModel):
    """One trial event; `values` depend on `kind` (see the README's event table)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(examples=["drug_administration"])
    date: DateValue | None
    end: DateValue | None
    study_day: int | None = Field(description="CDISC study day (no Day 0); null without Day 1")
    values: dict[str, Any] = Field(
        examples=[
            {"medication": "Dupixent 300 MG", "dose": {"mg": "300"}, "route_class": "systemic"}
        ]
    )
    concepts: list[ConceptMatchOut]
    source: Evidence


class Timeline(BaseModel):
    """A subject's events in study-day order."""

    study: StudyRef
    subject: Subject
    computed_at: str
    events: list[Event]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad cursor or parameter"},
    404: {"model": ErrorBody, "description": "Unknown study or subject"},
    422: {"model": ErrorBody, "description": "Invalid query parameters"},
    503: {"model": ErrorBody, "description": "Database unavailable"},
}


class VerdictCounts(BaseModel):
    """How many criteria have each verdict."""

    met: int
    not_met: int
    unknown: int


class Candidate(BaseModel):
    """One row of the screening list."""

    subject_id: str
    overall: Literal["eligible", "ineligible", "indeterminate"]
    counts: VerdictCounts
    at_enrollment: Literal["eligible", "ineligible", "indeterminate"] | None = Field(
        description="Overall status on the enrollment day (null when not enrolled)"
    )
    as_of: str
    computed_at: str


class ScreeningPage(BaseModel):
    """One page of the screening list; pass `next_cursor` back as `cursor` for the next."""

    study: StudyRef
    candidates: list[Candidate]
    next_cursor: str | None


class CriterionEvidence(Evidence):
    """A resource version that decided a verdict, and the deciding value."""

    value: str = Field(examples=["EGFR positive (ctDNA)", "T1a", "prednisone 49 days before"])


class CriterionOut(BaseModel):
    """One criterion's verdict with its reason and evidence."""

    id: str = Field(examples=["driver"])
    number: int
    type: Literal["inclusion", "exclusion"]
    title: str
    verdict: Literal["met", "not_met", "unknown"]
    reason: str
    evidence: list[CriterionEvidence]
    missing: str | None = Field(description="What data would settle an unknown verdict")


class EligibilityOut(BaseModel):
    """A candidate's eligibility as of a day: every criterion and the overall status."""

    study: StudyRef
    subject_id: str
    computed_at: str
    as_of: str
    overall: Literal["eligible", "ineligible", "indeterminate"]
    counts: VerdictCounts
    criteria: list[CriterionOut]
    missing: list[str]
    at_enrollment: Literal["eligible", "ineligible", "indeterminate"] | None


class HistoryEntry(BaseModel):
    """One change to a deviation."""

    at: str
    actor: str = Field(examples=["system", "j.doe@site.org"])
    action: Literal["opened", "updated", "resolved", "reopened", "acknowledged", "commented"]
    detail: dict[str, Any]


class DeviationOut(BaseModel):
    """A protocol deviation, computed from the data and annotated by staff."""

    id: str = Field(examples=["DEV-MFRGGZDFMZTWQ2LK"])
    study_id: str
    subject_id: str
    rule: DeviationCode
    severity: Literal["major", "minor"]
    status: Literal["open", "acknowledged", "resolved"]
    study_day: int | None
    date: str | None
    message: str = Field(examples=["surgery on Day 31; window Day 15–22"])
    evidence: list[Evidence]
    detected_at: str
    updated_at: str
    acknowledged_by: str | None
    acknowledged_at: str | None
    resolved_at: str | None
    resolution: str | None
    version: int


class DeviationDetail(DeviationOut):
    """A deviation with every change ever made to it."""

    history: list[HistoryEntry]


class DeviationPage(BaseModel):
    """One page of the deviation log."""

    study: StudyRef
    deviations: list[DeviationOut]
    next_cursor: str | None


class DeviationPatch(BaseModel):
    """Staff handling: acknowledge and/or comment (send If-Match with the ETag)."""

    model_config = ConfigDict(extra="forbid")

    by: Annotated[str, StringConstraints(min_length=1, max_length=200), STORABLE, NOT_BLANK] = (
        Field(examples=["j.doe@site.org"])
    )
    status: Literal["acknowledged"] | None = None
    comment: Annotated[str, StringConstraints(min_length=1, max_length=4000), STORABLE] | None = (
        None
    )


class SubscriptionIn(BaseModel):
    """A webhook receiver: URL, events, and optionally your own secret."""

    model_config = ConfigDict(extra="forbid")

    url: StorableText = Field(examples=["https://ctms.example.org/hooks/trialbridge"])
    events: list[StorableText] = Field(
        examples=[["deviation.opened", "deviation.resolved", "eligibility.changed"]]
    )
    secret: (
        Annotated[str, StringConstraints(min_length=16, max_length=400), STORABLE, NOT_BLANK] | None
    ) = None


class SubscriptionOut(BaseModel):
    """A subscription (the secret is only shown when it is created)."""

    id: str
    url: str
    events: list[str]
    created_at: str
    secret: str | None = None


class SubscriptionList(BaseModel):
    """Every subscription."""

    subscriptions: list[SubscriptionOut]


class TimeToEventOut(BaseModel):
    """Days from Day 1 to the event, or to censoring at the last data point."""

    days: int | None
    event: bool
    censored: bool | None
    event_type: str | None = Field(examples=["death", "progression_or_recurrence"])
    date: str | None
    evidence: Evidence | None
    reason: str | None = Field(
        default=None,
        description="Why `days` is null (a death before Day 1, a death without a date)",
        examples=["death recorded before Day 1 (2025-03-01)"],
    )
    imputed_from: str | None = Field(
        default=None,
        description="The partial death date as recorded when `date` was imputed from it",
        examples=["2025-09"],
    )


class SubjectOutcomesOut(BaseModel):
    """Per-subject endpoints of NCT06088771 (time origin Day 1)."""

    study: StudyRef
    subject_id: str
    computed_at: str
    day1: str | None
    time_to_surgery_days: int | None
    surgery: dict[str, Any] | None
    on_time_surgery: bool | None
    mpr: dict[str, Any] = Field(examples=[{"result": "met", "viable_pct": "5"}])
    pcr: dict[str, Any] = Field(examples=[{"result": "not_evaluable"}])
    efs: TimeToEventOut | None
    os: TimeToEventOut | None
    safety: dict[str, Any] | None
    reason: str | None = None


class CohortOutcomesOut(BaseModel):
    """A study's cohort outcomes; the shape of `outcomes` depends on the study kind (README)."""

    study: dict[str, str] = Field(
        examples=[{"id": "NCT06088771", "version": "1.0.0", "kind": "interventional"}]
    )
    computed_at: str = Field(description="When the snapshot served was computed (UTC)")
    data_as_of: int = Field(
        description="The number of the last change the snapshot reflects; numbers only grow"
    )
    stale: bool = Field(
        description="True when a change since (or another protocol or release) is not reflected "
        "yet; the background refresher is computing or will compute a new snapshot"
    )
    plots: dict[str, dict[str, str]] = Field(
        description="Figure name → format → URL",
        examples=[
            {
                "os": {
                    "png": "/api/v1/studies/NCT06088771/outcomes/plots/os.png",
                    "svg": "/api/v1/studies/NCT06088771/outcomes/plots/os.svg",
                }
            }
        ],
    )
    outcomes: dict[str, Any] = Field(
        description="NCT06088771: counts, mpr, pcr, time_to_surgery, feasibility, safety, efs, os, "
        "flow. cirae-dupilumab: protocol, groups, resolution, matching (counts: cases, sets, "
        "matched_controls, unmatched, partially_matched), cox (per control group: "
        "primary, matched_sets, unadjusted, fixed_group models), survival, km_groups, excluded "
        "(n, by_reason), comparisons, cirae_description, glucocorticoids, table1, flow. "
        "Summaries: the per-subject rows are paged at "
        "…/outcomes/subjects, …/outcomes/swimmer (NCT06088771) and …/outcomes/excluded "
        "(cirae-dupilumab).",
        examples=[
            {
                "mpr": {
                    "met": 1,
                    "not_met": 1,
                    "not_evaluable": 1,
                    "rate": {
                        "successes": 1,
                        "n": 3,
                        "rate": 0.3333,
                        "ci_lower": 0.0084,
                        "ci_upper": 0.9057,
                        "level": 0.95,
                        "method": "clopper-pearson",
                    },
                },
                "os": {"n": 3, "events": 1, "censored": 2, "median_days": None},
            }
        ],
    )


class _SnapshotPage(BaseModel):
    """What every page of a snapshot's listings carries beside its rows."""

    study: StudyRef
    computed_at: str
    data_as_of: int = Field(description="The last change the snapshot reflects")
    stale: bool = Field(description="A later change is not reflected yet")
    next_cursor: str | None


class ListingPageOut(_SnapshotPage):
    """One page of a study's per-subject analysis listing (pseudonymous; no dates for the cohort),
    from the same snapshot as the outcomes."""

    subjects: list[dict[str, Any]] = Field(
        description="One row per subject: `subject_id` and the study kind's analysis fields "
        "(README)",
        examples=[
            {
                "subject_id": "S-ABCDEFGHIJKLMNOP",
                "group": "dupilumab",
                "group_label": "Dupilumab",
                "matched_sets": {"control_1": {"set": 1, "role": "case"}, "control_2": None},
                "icb_year": 2020,
                "os_days": 731,
                "died": False,
            }
        ],
    )


class SwimmerPageOut(_SnapshotPage):
    """One page of NCT06088771's swimmer rows (the swimmer plot's data: one per dosed subject, in
    days since Day 1, Day 1 = day 0), from the same snapshot as the outcomes."""

    swimmer: list[dict[str, Any]] = Field(
        description="One row per dosed subject, in subject-id order; `problem` says in words "
        "what kept an endpoint from being placed (it may quote the date recorded)",
        examples=[
            {
                "subject_id": "S-ABCDEFGHIJKLMNOP",
                "dose_days": [0, 21],
                "surgery_day": 42,
                "last_followup_day": 120,
                "efs_event_day": None,
                "efs_event_type": None,
                "efs_censored": True,
                "death_day": None,
                "os_censored": True,
                "mpr": "met",
                "problem": None,
            }
        ],
    )


class ExcludedPageOut(_SnapshotPage):
    """One page of the subjects cirae-dupilumab's analysis leaves out, each with its reason, from
    the same snapshot as the outcomes."""

    excluded: list[dict[str, Any]] = Field(
        description="One row per subject left out, in subject-id order",
        examples=[{"subject_id": "S-ABCDEFGHIJKLMNOP", "reason": "death recorded without a date"}],
    )
