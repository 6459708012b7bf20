"""The interventional study kind (NCT06088771 and trials like it), as the registry sees it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from fhir_mapping.events.model import EventKind, TrialEvent
from fhir_mapping.required_codes import REQUIRED_CODES
from service.stats.plots import km_figure, swimmer_plot
from service.studies.interventional.cohort_statistics import CohortInput, cohort_report
from service.studies.interventional.eligibility import evaluate
from service.studies.interventional.membership import trial_membership
from service.studies.interventional.protocol import TrialProtocol
from service.studies.interventional.screening import refresh_screening
from service.studies.interventional.subject_outcomes import subject_outcomes
from service.studies.kind import CohortReport, Member, StudyKind


def trial_report(protocol: TrialProtocol, members: Sequence[Member]) -> CohortReport:
    """Cohort figures, KM of EFS and OS, and the swimmer plot."""
    subjects = [CohortInput(m.subject_id, m.status, m.day1, m.events) for m in members]
    figures, data = cohort_report(protocol, subjects)
    level = data.level
    efs, os_ = data.km["efs"], data.km["os"]
    return CohortReport(
        figures,
        {
            "efs": km_figure([efs], f"{protocol.id}: event-free survival", level, "Day 1"),
            "os": km_figure([os_], f"{protocol.id}: overall survival", level, "Day 1"),
            "swimmer": lambda fmt: swimmer_plot(data.swimmer, fmt=fmt),
        },
    )


def eligibility_on(
    protocol: TrialProtocol, events: Sequence[TrialEvent], day: dt.date
) -> dict[str, Any]:
    """A candidate's criteria evaluated as of `day` (not stored: an on-demand what-if)."""
    facts = trial_membership(protocol, events)
    result = evaluate(
        protocol,
        events,
        as_of=day,
        enrolled_on=facts.enrolled_on if facts else None,
        day1=facts.day1 if facts else None,
    )
    return result.to_json()


def deviation_rules(protocol: TrialProtocol) -> tuple[str, ...]:
    """The deviation codes this protocol checks (the filters a deviation log accepts)."""
    return tuple(sorted(str(d.code) for d in protocol.deviations))


INTERVENTIONAL: StudyKind[TrialProtocol] = StudyKind(
    name="interventional",
    title="interventional study",
    protocol_model=TrialProtocol,
    # membership gives the ResearchSubject's status, or `unknown`
    subject_statuses=REQUIRED_CODES[("ResearchSubject", "status")] | {"unknown"},
    membership=trial_membership,
    # enrollment and Day 1 (first study drug); a lung-cancer condition makes a candidate
    membership_events=frozenset(
        {EventKind.ENROLLMENT, EventKind.DRUG_ADMINISTRATION, EventKind.CONDITION}
    ),
    cohort_report=trial_report,
    refresh=refresh_screening,
    screening=eligibility_on,
    subject_outcomes=subject_outcomes,
    deviation_rules=deviation_rules,
    reevaluate_events=frozenset({EventKind.CONDITION, EventKind.ENROLLMENT}),
)
