"""Study 2 (dupilumab for cutaneous irAEs): group sizes, resolution, matching, KM and Cox models.

The Cox modelling decisions are in service.studies.cirae.cox. One caveat of the design the study defines is
stated in every model's output: the groups are fixed at ICB initiation but defined by later events
(a dupilumab case had to live until its cirAE and its dupilumab), so the group hazard ratio carries
immortal-time bias towards the treated group; the glucocorticoid term, time-varying, does not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from service.stats.survival import km_in_months, proportion_ci
from service.studies.cirae.cox import GC_TERM, cox_model, not_estimable
from service.studies.cirae.matching import match
from service.studies.cirae.protocol import CohortProtocol, Matching
from service.studies.cirae.records import CirAESubject, Group, MatchResult

CONTROL_GROUPS: tuple[Group, ...] = ("control_1", "control_2")


def _level(protocol: CohortProtocol) -> float:
    """The protocol's confidence level as a float (the protocol keeps it as a Decimal)."""
    return float(protocol.cohort.confidence_level)


# -- descriptive parts -----------------------------------------------------------------------------


def group_sizes(cohort: Sequence[CirAESubject]) -> dict[str, int]:
    """Subjects per group, every group listed even when empty (an empty group is a finding)."""
    counts = Counter(s.group for s in cohort)
    return {g: counts.get(g, 0) for g in ("dupilumab", "control_1", "control_2")}


def resolution_summary(cohort: Sequence[CirAESubject], level: float) -> dict[str, Any]:
    """Complete-or-partial resolution among patients with a cirAE, overall and per cirAE group."""
    with_cirae = [s for s in cohort if s.cirae_onset is not None]
    counts = Counter(s.resolution or "none" for s in with_cirae)

    def rate(subjects: Sequence[CirAESubject]) -> dict[str, Any]:
        resolved = sum(s.resolution in ("complete", "partial") for s in subjects)
        return proportion_ci(resolved, len(subjects), level)

    return {
        "definition": "complete or partial resolution among patients with a cirAE "
        "(a cirAE without a recorded status counts as none)",
        "categories": {k: counts.get(k, 0) for k in ("complete", "partial", "none")},
        "overall": rate(with_cirae),
        "by_group": {
            g: rate([s for s in with_cirae if s.group == g]) for g in ("dupilumab", "control_1")
        },
    }


def km_groups(cohort: Sequence[CirAESubject]) -> list[dict[str, Any]]:
    """Per-group OS data (days from ICB initiation, death flags) for the Kaplan–Meier plot."""
    out = []
    for g in ("dupilumab", "control_1", "control_2"):
        members = sorted((s for s in cohort if s.group == g), key=lambda s: s.subject_id)
        out.append(
            {
                "label": g,
                "durations_days": [s.os_days for s in members],
                "events": [s.died for s in members],
            }
        )
    return out


def matching_settings(settings: Matching) -> dict[str, Any]:
    """The matching settings as plain JSON numbers (the protocol keeps the age caliper a Decimal)."""
    return {
        "ratio": settings.ratio,
        "exact": list(settings.exact),
        "calipers": {
            "age_years": float(settings.calipers.age_years),
            "charlson": settings.calipers.charlson,
            "icb_year": settings.calipers.icb_year,
        },
        "method": settings.method,
    }


def matching_summary(result: MatchResult, settings: Matching, n_cases: int) -> dict[str, Any]:
    """What the matching did: sets, matched controls, and the cases it could not serve fully."""
    sets = [s for s in result.sets if s.controls]
    return {
        "control_group": result.control_group,
        "settings": matching_settings(settings),
        "cases": n_cases,
        "sets": len(sets),
        "matched_controls": sum(len(s.controls) for s in sets),
        "unmatched_cases": sorted(result.unmatched_cases),
        "partially_matched_cases": sorted(result.partially_matched),
        "matched_sets": [{"case": s.case, "controls": list(s.controls)} for s in sets],
    }


def matched_population(result: MatchResult, cohort: Sequence[CirAESubject]) -> list[CirAESubject]:
    """Cases with at least one control, plus those controls, in a stable order."""
    wanted = {i for s in result.sets if s.controls for i in (s.case, *s.controls)}
    chosen = [s for s in cohort if s.subject_id in wanted]
    return sorted(chosen, key=lambda s: (s.group != "dupilumab", s.subject_id))


# -- the whole analysis ------------------------------------------------------------------------------


def _comparison(
    protocol: CohortProtocol,
    cohort: Sequence[CirAESubject],
    control_group: Group,
    min_events_per_parameter: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Matching summary and Cox model for dupilumab vs one control group."""
    settings = protocol.cohort.matching
    cases = [s for s in cohort if s.group == "dupilumab"]
    controls = [s for s in cohort if s.group == control_group]
    label = f"dupilumab vs {control_group}"
    method = {
        "comparison": label,
        "population": "matched set (cases with at least one matched control, and their controls)",
        "time_origin": "ICB initiation",
        "time_varying": [GC_TERM],
        "glucocorticoid_coding": "0 up to the first systemic glucocorticoid day, 1 after it "
        "(a death on that day counts as unexposed)",
        "adjustment": list(protocol.cohort.adjustment),
        "reference_level_rule": "most frequent level in the model population "
        "(ties: alphabetical first); a missing category is the level 'unknown'",
        "ties": "Efron",
        "design_caveat": "groups are fixed at ICB initiation but defined by later events (a "
        "dupilumab case lived until its cirAE and its dupilumab): the group hazard ratio carries "
        "immortal-time bias in favour of dupilumab; matched sets are not used as strata",
    }
    if not cases or not controls:
        empty = "dupilumab" if not cases else control_group
        reason = f"the {empty} group is empty"
        return (
            {"control_group": control_group, "estimable": False, "reason": reason},
            {**method, **not_estimable(reason, n_subjects=0, n_events=0)},
        )
    result = match(settings, cases, controls, control_group)
    population = matched_population(result, cohort)
    model = (
        cox_model(
            population,
            protocol.cohort.adjustment,
            _level(protocol),
            min_events_per_parameter=min_events_per_parameter,
        )
        if population
        else not_estimable(
            f"no dupilumab case matched a {control_group} subject", n_subjects=0, n_events=0
        )
    )
    return (
        {**matching_summary(result, settings, len(cases)), "estimable": True},
        {**method, **model},
    )


def cirae_outcomes(
    protocol: CohortProtocol,
    cohort: Sequence[CirAESubject],
    *,
    min_events_per_parameter: int | None = None,
) -> dict[str, Any]:
    """Everything study 2 reports, as JSON-safe data (no NaN, no inf) computed from the cohort."""
    level = _level(protocol)
    if min_events_per_parameter is None:
        min_events_per_parameter = protocol.cohort.min_events_per_parameter
    matching: dict[str, Any] = {}
    cox: dict[str, Any] = {}
    for control_group in CONTROL_GROUPS:
        matching[control_group], cox[control_group] = _comparison(
            protocol, cohort, control_group, min_events_per_parameter
        )
    curves = km_groups(cohort)
    return {
        "protocol": {"id": protocol.id, "version": protocol.version},
        "confidence_level": level,
        "groups": group_sizes(cohort),
        "resolution": resolution_summary(cohort, level),
        "matching": matching,
        "cox": cox,
        "survival": {
            g["label"]: km_in_months(
                g["label"],
                g["durations_days"],
                g["events"],
                months=protocol.cohort.survival_timepoints_months,
                level=level,
            )
            for g in curves
        },
        "km_groups": curves,
    }
