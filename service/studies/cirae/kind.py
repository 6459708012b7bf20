"""The retrospective cirAE cohort kind, as the registry sees it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fhir_mapping.events.model import EventKind
from service.stats.figures import km_figure
from service.studies.cirae.analysis import cirae_outcomes
from service.studies.cirae.membership import cohort_membership
from service.studies.cirae.protocol import CohortProtocol
from service.studies.cirae.reduction import cohort_of, reduce_member
from service.studies.cirae.report import cirae_document
from service.studies.cirae.reporting import ORIGIN, group_curves, report_additions
from service.studies.kind import CohortData, CohortReport, ListingRow, StudyKind


def cirae_report(protocol: CohortProtocol, cohort: CohortData) -> CohortReport:
    """Groups, resolution, matching, Cox models, KM of OS by group; Table 1, the matched
    comparisons, the cirAE description, the flow of patients and the listing (reporting.py);
    from the members' records when the refresher streamed them, else from the members."""
    records = (
        cohort.records
        if cohort.records is not None
        else [reduce_member(protocol, m) for m in cohort.members]
    )
    built, episodes = cohort_of(protocol, records)
    figures = cirae_outcomes(protocol, built.subjects)
    # who is left out, and why: counted here, listed at its own endpoint (…/outcomes/excluded)
    figures["excluded"] = {
        "n": len(built.excluded),
        "by_reason": dict(sorted(Counter(e.reason for e in built.excluded).items())),
    }
    added = report_additions(protocol, episodes, built, figures)
    figures.update(added.body)
    curves = group_curves(figures["km_groups"])
    title = "Overall survival from ICB initiation, by group"
    return CohortReport(
        _served(figures),
        {"os": km_figure(curves, title, figures["confidence_level"], ORIGIN), **added.plots},
        flow=added.flow,
        table1=added.table1,
        listing=added.listing,
        excluded=tuple(
            ListingRow(e.subject_id, {"reason": e.reason})
            for e in sorted(built.excluded, key=lambda e: e.subject_id)
        ),
        document=lambda: cirae_document(protocol, figures, added.flow, added.table1),
    )


# What a comparison's matching lists by subject; the body counts them, and the analysis listing
# gives each subject's set and role (`matched_sets`), so the body does not grow with the cases.
_LISTED = frozenset({"matched_sets", "unmatched_cases", "partially_matched_cases"})


def _served(figures: dict[str, Any]) -> dict[str, Any]:
    """The outcomes body: the figures with each comparison's matching counted, not listed."""
    matching = {
        control: (
            {k: v for k, v in found.items() if k not in _LISTED}
            | {
                "unmatched": len(found["unmatched_cases"]),
                "partially_matched": len(found["partially_matched_cases"]),
            }
            if "matched_sets" in found
            else found
        )
        for control, found in figures["matching"].items()
    }
    return {**figures, "matching": matching}


CIRAE_COHORT: StudyKind[CohortProtocol] = StudyKind(
    name="cohort",
    title="retrospective cohort",
    protocol_model=CohortProtocol,
    subject_statuses=frozenset({"included"}),
    membership=cohort_membership,
    membership_events=frozenset({EventKind.DRUG_ADMINISTRATION, EventKind.DRUG_EXPOSURE}),
    cohort_report=cirae_report,
    listings=frozenset({"subjects", "excluded"}),
    reduce_member=reduce_member,
    # visits and lab results are read only for the last data point (cohort.py: `last_seen`)
    days_only_events=frozenset({EventKind.DATA_POINT, EventKind.ENCOUNTER}),
)
