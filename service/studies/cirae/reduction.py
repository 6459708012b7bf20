"""Each member of the cirAE cohort reduced to what the report reads of it (pure).

The refresher reads a cohort's members chunk by chunk and reduces each at once (StudyKind's
`reduce_member`), so a 10^5 cohort's ~10^6 events are never all held: a member's record keeps its
cohort outcome (subject draft, exclusion or none: cohort.py) and, for a cirAE subject, what the
cirAE description reads of its events (description.py). The plain path reduces the same way, so
both give the same report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.studies.cirae.cohort import (
    CohortBuild,
    CohortPatient,
    PatientOutcome,
    assemble_cohort,
    patient_outcome,
)
from service.studies.cirae.description import Episode, describes, episode
from service.studies.cirae.protocol import CohortProtocol
from service.studies.kind import Member


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member as the cirAE report reads it: no events."""

    patient_id: str
    outcome: PatientOutcome
    episode: Episode | None  # a cirAE subject's (description.py), else None


def reduce_member(protocol: CohortProtocol, member: Member) -> MemberRecord:
    """The member's cohort outcome and cirAE episode, from one look at its events."""
    patient = CohortPatient(member.patient_id, member.subject_id, member.events, member.seen)
    outcome = patient_outcome(protocol, patient)
    subject = outcome.subject
    found = (
        episode(protocol, subject, member.events)
        if subject is not None and describes(subject)
        else None
    )
    return MemberRecord(member.patient_id, outcome, found)


def cohort_of(
    protocol: CohortProtocol, records: Sequence[MemberRecord]
) -> tuple[CohortBuild, dict[str, Episode]]:
    """The cohort (Charlson, subjects, exclusions) and the episodes by patient."""
    built = assemble_cohort(protocol, [r.outcome for r in records])
    return built, {r.patient_id: r.episode for r in records if r.episode is not None}
