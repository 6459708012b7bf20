"""Who is a subject of an interventional study: a ResearchSubject for it (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
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


def day_one(
    protocol: TrialProtocol, events: Sequence[TrialEvent], enrolled_on: dt.date | None
) -> tuple[dt.date | None, SourceRef | None]:
    """Day 1: the first study-drug dose on or after enrollment (an earlier one is prior medication).

    Without an enrollment date, the first day one of the protocol's anchor drugs is given
    (`day1_without_enrollment`: cemiplimab, so a dupilumab-only day is never Day 1).
    """
    drugs = protocol.schedule.study_drugs
    if enrolled_on is None:
        anchors = set(protocol.schedule.day1_without_enrollment)
        wanted = {d.valueset for d in drugs if d.id in anchors}
    else:
        wanted = {d.valueset for d in drugs}
    doses = []
    for e in events:
        if e.kind is not EventKind.DRUG_ADMINISTRATION or not e.concept_ids & wanted:
            continue
        day = e.date.day if e.date else None
        if enrolled_on is None or (day is not None and day >= enrolled_on):
            doses.append(e)
    return earliest_day(doses)


def trial_membership(protocol: TrialProtocol, events: Sequence[TrialEvent]) -> SubjectFacts | None:
    """A subject when a ResearchSubject for the study exists; Day 1 as `day_one` says."""
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
    enrolled_on = latest.date.day if latest.date else None
    day1, day1_source = day_one(protocol, events, enrolled_on)
    evidence = tuple(s for s in (latest.source, day1_source) if s is not None)
    return SubjectFacts(
        status=status,
        subject_number=numbers[0] if numbers else None,
        enrolled_on=enrolled_on,
        day1=day1,
        evidence=evidence,
    )
