"""Who is a subject of an interventional study: a ResearchSubject for it (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from fhir_mapping.events.model import EventKind, TrialEvent
from service.studies.interventional.protocol import TrialProtocol
from service.studies.kind import SUBJECT_NUMBER_MAX, SubjectFacts, earliest_day


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
    day1, day1_source = earliest_day(doses)
    evidence = tuple(s for s in (latest.source, day1_source) if s is not None)
    return SubjectFacts(
        status=status,
        subject_number=numbers[0] if numbers else None,
        enrolled_on=latest.date.day if latest.date else None,
        day1=day1,
        evidence=evidence,
    )
