"""Who is in the retrospective cohort: anyone given or ordered a cohort drug (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from fhir_mapping.events.model import EventKind, TrialEvent
from service.studies.cirae.protocol import CohortProtocol
from service.studies.kind import SubjectFacts, earliest_day


def cohort_membership(
    protocol: CohortProtocol, events: Sequence[TrialEvent]
) -> SubjectFacts | None:
    """A subject when any cohort drug was given or ordered; Day 1 = its first day (ICB initiation)."""
    wanted = set(protocol.membership.cohort_valuesets)
    exposures = [
        e
        for e in events
        if e.kind in (EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE)
        and any(c.concept in wanted for c in e.concepts)
    ]
    if not exposures:
        return None
    day1, day1_source = earliest_day(exposures)
    return SubjectFacts(
        status="included",
        subject_number=None,
        enrolled_on=day1,
        day1=day1,
        evidence=(day1_source or exposures[0].source,),
    )
