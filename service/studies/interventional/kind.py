"""The interventional study kind (NCT06088771 and trials like it), as the registry sees it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from fhir_mapping.events.model import EventKind, TrialEvent
from fhir_mapping.required_codes import REQUIRED_CODES
from service.stats.figures import km_figure, swimmer_figure
from service.studies.interventional.cohort_statistics import CohortInput, cohort_report
from service.studies.interventional.consort import trial_flow
from service.studies.interventional.deviation_rules import surgery
from service.studies.interventional.eligibility import evaluate
from service.studies.interventional.membership import trial_membership
from service.studies.interventional.protocol import TrialProtocol
from service.studies.interventional.report import trial_document
from service.studies.interventional.screening import refresh_screening
from service.studies.interventional.subject_outcomes import subject_outcomes
from service.studies.kind import (
    CohortData,
    CohortReport,
    ListingRow,
    StudyKind,
    StudyTreatment,
    TabulationPlan,
)


def trial_report(protocol: TrialProtocol, cohort: CohortData) -> CohortReport:
    """Cohort figures, KM of EFS and OS, the swimmer plot, and the flow of patients."""
    subjects = [CohortInput(m.subject_id, m.status, m.day1, m.events) for m in cohort.members]
    figures, data = cohort_report(protocol, subjects)
    level = data.level
    efs, os_ = data.km["efs"], data.km["os"]
    flow = trial_flow(protocol, cohort, figures["subjects"])
    # a row per subject and per dosed subject: listings paged at their own endpoints, not the body
    body = {k: v for k, v in figures.items() if k not in ("subjects", "swimmer")}
    return CohortReport(
        body,
        {
            "efs": km_figure([efs], f"{protocol.id}: event-free survival", level, "Day 1"),
            "os": km_figure([os_], f"{protocol.id}: overall survival", level, "Day 1"),
            "swimmer": swimmer_figure(data.swimmer),
        },
        flow=flow,
        listing=tuple(
            ListingRow(r["subject_id"], {k: v for k, v in r.items() if k != "subject_id"})
            for r in sorted(figures["subjects"], key=lambda r: str(r["subject_id"]))
        ),
        swimmer=tuple(
            ListingRow(
                row.subject_id, {k: v for k, v in row.to_json().items() if k != "subject_id"}
            )
            for row in sorted(data.swimmer, key=lambda row: row.subject_id)
        ),
        document=lambda: trial_document(protocol, figures, flow),
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


def surgery_day(events: Sequence[TrialEvent], day1: dt.date | None) -> dt.date | None:
    """The day of the study's surgery (the one the outcomes use): the treatment epoch's last day."""
    op = surgery(events, day1)
    return op.date.day if op is not None and op.date is not None else None


def tabulation_plan(protocol: TrialProtocol) -> TabulationPlan:
    """The study drugs and epochs an SDTM export needs (neoadjuvant: treatment ends at surgery)."""
    return TabulationPlan(
        treatments=tuple(
            StudyTreatment(d.id, d.valueset, d.dose_mg, "mg", d.route)
            for d in protocol.schedule.study_drugs
        ),
        screening_days=protocol.schedule.screening.window_days_before_day1,
        treatment_end=surgery_day,
    )


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
    listings=frozenset({"subjects", "swimmer"}),
    refresh=refresh_screening,
    screening=eligibility_on,
    subject_outcomes=subject_outcomes,
    deviation_rules=deviation_rules,
    tabulation=tabulation_plan,
    reevaluate_events=frozenset({EventKind.CONDITION, EventKind.ENROLLMENT}),
)
