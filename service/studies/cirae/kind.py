"""The retrospective cirAE cohort kind, as the registry sees it."""

from __future__ import annotations

from collections.abc import Sequence

from fhir_mapping.events.model import EventKind
from service.stats.plots import Curves, km_figure
from service.studies.cirae.analysis import cirae_outcomes
from service.studies.cirae.cohort import CohortPatient, build_cohort_report
from service.studies.cirae.membership import cohort_membership
from service.studies.cirae.protocol import CohortProtocol
from service.studies.kind import CohortReport, Member, StudyKind


def cirae_report(protocol: CohortProtocol, members: Sequence[Member]) -> CohortReport:
    """Groups, resolution, matching, Cox models, KM of OS by group."""
    patients = [CohortPatient(m.patient_id, m.subject_id, m.events) for m in members]
    built = build_cohort_report(protocol, patients)
    figures = cirae_outcomes(protocol, built.subjects)
    figures["excluded"] = {
        "n": len(built.excluded),
        "subjects": [{"subject_id": e.subject_id, "reason": e.reason} for e in built.excluded],
    }
    curves: Curves = [
        (g["label"], g["durations_days"], g["events"]) for g in figures["km_groups"] if g["events"]
    ]
    title = "Overall survival from ICB initiation, by group"
    return CohortReport(
        figures, {"os": km_figure(curves, title, figures["confidence_level"], "ICB initiation")}
    )


CIRAE_COHORT: StudyKind[CohortProtocol] = StudyKind(
    name="cohort",
    title="retrospective cohort",
    protocol_model=CohortProtocol,
    subject_statuses=frozenset({"included"}),
    membership=cohort_membership,
    membership_events=frozenset({EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE}),
    cohort_report=cirae_report,
)
