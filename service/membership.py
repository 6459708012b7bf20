"""Who is a subject of which study, from their events (pure), and their pseudonymous id."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from service.protocol import CohortProtocol, TrialProtocol

# The width of study_subject.subject_number: a longer identifier is no subject number (it stays in
# the resource), so the same ResearchSubject is accepted alike on SQLite and PostgreSQL.
SUBJECT_NUMBER_MAX = 256


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


def _matches_study(event: TrialEvent, identifiers: Sequence[str]) -> bool:
    wanted = {i.strip().lower() for i in identifiers}
    values = event.values
    seen = [
        str(i.get("value", "")).strip().lower()
        for i in values.get("study_identifiers") or ()
        if isinstance(i, dict)
    ]
    display = str(values.get("study_display") or "").lower()
    return any(v in wanted for v in seen) or any(w in display for w in wanted)


def _earliest_day(events: Iterable[TrialEvent]) -> tuple[dt.date | None, SourceRef | None]:
    best: tuple[dt.date, SourceRef] | None = None
    for e in events:
        day = e.date.day if e.date else None
        if day is not None and (best is None or day < best[0]):
            best = (day, e.source)
    return (best[0], best[1]) if best else (None, None)


def trial_membership(protocol: TrialProtocol, events: Sequence[TrialEvent]) -> SubjectFacts | None:
    """A subject when a ResearchSubject for the study exists; Day 1 = first study-drug dose."""
    enrollments = [
        e
        for e in events
        if e.kind is EventKind.ENROLLMENT
        and _matches_study(e, protocol.membership.research_study_identifiers)
    ]
    if not enrollments:
        return None
    # The latest enrollment record wins (by start date, then by source for determinism).
    latest = max(
        enrollments,
        key=lambda e: (
            e.date.first if e.date else dt.date.min,
            e.source.resource_id,
            e.source.version_id,
        ),
    )
    # Every ResearchSubject status is listed (candidates too); clients filter by status.
    status = str(latest.values.get("status") or "unknown")
    numbers = [
        str(n["value"])
        for n in latest.values.get("subject_numbers") or ()
        if isinstance(n, dict) and n.get("value") and len(str(n["value"])) <= SUBJECT_NUMBER_MAX
    ]
    drugs = {d.valueset for d in protocol.schedule.study_drugs}
    doses = [e for e in events if e.kind is EventKind.DRUG_ADMINISTRATION and e.concept_ids & drugs]
    day1, day1_source = _earliest_day(doses)
    evidence = tuple(s for s in (latest.source, day1_source) if s is not None)
    return SubjectFacts(
        status=status,
        subject_number=numbers[0] if numbers else None,
        enrolled_on=latest.date.day if latest.date else None,
        day1=day1,
        evidence=evidence,
    )


def cohort_membership(
    protocol: CohortProtocol, events: Sequence[TrialEvent]
) -> SubjectFacts | None:
    """A subject when any cohort drug was given or ordered; Day 1 = its first day (ICB initiation)."""
    wanted = set(protocol.membership.cohort_valuesets)
    exposures = [
        e
        for e in events
        if e.kind in (EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE)
        and e.concept_ids & wanted
    ]
    if not exposures:
        return None
    day1, day1_source = _earliest_day(exposures)
    return SubjectFacts(
        status="included",
        subject_number=None,
        enrolled_on=day1,
        day1=day1,
        evidence=(day1_source or exposures[0].source,),
    )


def membership(
    protocol: TrialProtocol | CohortProtocol, events: Sequence[TrialEvent]
) -> SubjectFacts | None:
    """Dispatch on the study kind."""
    if isinstance(protocol, TrialProtocol):
        return trial_membership(protocol, events)
    return cohort_membership(protocol, events)
