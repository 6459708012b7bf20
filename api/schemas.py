"""Response shapes of the JSON API, for the OpenAPI schema and its examples."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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
    day1: str | None = Field(description="First study-drug day (Day 1)", examples=["2025-03-10"])
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
    """The exact resource version an event came from."""

    resource_type: str = Field(examples=["MedicationAdministration"])
    id: str
    version: str
    reference: str = Field(examples=["MedicationAdministration/ma-1/_history/1"])


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
