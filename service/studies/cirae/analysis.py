"""Study 2 (dupilumab for cutaneous irAEs): group sizes, resolution, matching, KM and Cox models.

For each control group the dupilumab cases are matched to controls, and four Cox models of OS
from ICB initiation are fitted on the matched population (service.studies.cirae.cox holds the
modelling decisions):

- `primary`: dupilumab exposure time-varying from its first dose (CLINICAL.md revision 2: the
  groups are defined by later events, so a fixed group would credit a case's survival until its
  cirAE and its dupilumab to dupilumab), glucocorticoids time-varying, adjusted;
- `matched_sets`: the same terms, stratified by matched set (the model that respects the matching);
- `unadjusted`: the time-varying dupilumab term alone;
- `fixed_group`: the group fixed at ICB initiation, the sensitivity analysis CLINICAL.md keeps,
  labelled with its immortal-time bias.

`analyse` returns typed results (results.py); `cirae_outcomes` is their JSON (wire.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from service.stats.survival import km_in_months, proportion_ci
from service.studies.cirae.matching import match
from service.studies.cirae.protocol import CohortProtocol
from service.studies.cirae.records import CirAESubject, Group, MatchResult
from service.studies.cirae.results import (
    CirAEAnalysis,
    Comparison,
    Proportion,
    ResolutionSummary,
)
from service.studies.cirae.wire import km_groups_json, outcomes_json

GROUPS: tuple[Group, ...] = ("dupilumab", "control_1", "control_2")
CONTROL_GROUPS: tuple[Group, ...] = ("control_1", "control_2")
RESOLUTION_DEFINITION = (
    "complete or partial resolution among patients with a cirAE, from the latest status of the "
    "index cirAE episode (Condition.clinicalStatus, AdverseEvent.outcome of its records and of "
    "later cirAE records; a cirAE without a recorded status counts as none)"
)


def _level(protocol: CohortProtocol) -> float:
    """The protocol's confidence level as a float (the protocol keeps it as a Decimal)."""
    return float(protocol.cohort.confidence_level)


# -- descriptive parts -----------------------------------------------------------------------------


def group_sizes(cohort: Sequence[CirAESubject]) -> dict[Group, int]:
    """Subjects per group, every group listed even when empty (an empty group is a finding)."""
    counts = Counter(s.group for s in cohort)
    return {g: counts.get(g, 0) for g in GROUPS}


def _proportion(successes: int, n: int, level: float) -> Proportion:
    """An exact (Clopper–Pearson) proportion, typed."""
    return Proportion(**proportion_ci(successes, n, level))


def resolution_summary(cohort: Sequence[CirAESubject], level: float) -> ResolutionSummary:
    """Complete-or-partial resolution among patients with a cirAE, overall and per cirAE group."""
    with_cirae = [s for s in cohort if s.cirae_onset is not None]
    counts = Counter(s.resolution or "none" for s in with_cirae)

    def rate(subjects: Sequence[CirAESubject]) -> Proportion:
        resolved = sum(s.resolution in ("complete", "partial") for s in subjects)
        return _proportion(resolved, len(subjects), level)

    return ResolutionSummary(
        definition=RESOLUTION_DEFINITION,
        categories={k: counts.get(k, 0) for k in ("complete", "partial", "none")},
        overall=rate(with_cirae),
        by_group={g: rate([s for s in with_cirae if s.group == g]) for g in GROUPS[:2]},
    )


def km_groups(cohort: Sequence[CirAESubject]) -> list[dict[str, Any]]:
    """Per-group OS data (days from ICB initiation, death flags) for the Kaplan–Meier plot."""
    return km_groups_json(cohort)


def matched_population(result: MatchResult, cohort: Sequence[CirAESubject]) -> list[CirAESubject]:
    """Cases with at least one control, plus those controls, in a stable order."""
    wanted = {i for s in result.sets if s.controls for i in (s.case, *s.controls)}
    chosen = [s for s in cohort if s.subject_id in wanted]
    return sorted(chosen, key=lambda s: (s.group != "dupilumab", s.subject_id))


def matched_sets(result: MatchResult) -> dict[str, int]:
    """Subject id → matched set number (1, 2, … over the sets that found a control)."""
    numbered = [s for s in result.sets if s.controls]
    return {
        member: number
        for number, s in enumerate(numbered, start=1)
        for member in (s.case, *s.controls)
    }


# -- the whole analysis ------------------------------------------------------------------------------


def _not_estimable_comparison(control_group: Group, n_cases: int, reason: str) -> Comparison:
    """A comparison that cannot be made: every model says why."""
    from service.studies.cirae.cox import MODELS, not_estimable  # where used, like compare's

    return Comparison(
        control_group=control_group,
        estimable=False,
        reason=reason,
        n_cases=n_cases,
        matching=None,
        population=(),
        matched_set={},
        models={spec.name: not_estimable(spec, reason) for spec in MODELS},
    )


def compare(
    protocol: CohortProtocol,
    cohort: Sequence[CirAESubject],
    control_group: Group,
    min_events_per_parameter: int,
) -> Comparison:
    """Matching and the four Cox models for dupilumab vs one control group."""
    # where used: the Cox models bring numpy, pandas and scipy.special/linalg (~65 MB a process)
    from service.studies.cirae.cox import MODELS, fit_cox, not_estimable

    cases = [s for s in cohort if s.group == "dupilumab"]
    controls = [s for s in cohort if s.group == control_group]
    if not cases or not controls:
        empty = "dupilumab" if not cases else control_group
        return _not_estimable_comparison(control_group, len(cases), f"the {empty} group is empty")
    result = match(protocol.cohort.matching, cases, controls, control_group)
    population = matched_population(result, cohort)
    sets = matched_sets(result)
    strata = {subject_id: f"set-{number}" for subject_id, number in sets.items()}
    level = _level(protocol)
    if population:
        models = {
            spec.name: fit_cox(
                spec,
                population,
                protocol.cohort.adjustment,
                level,
                min_events_per_parameter=min_events_per_parameter,
                strata=strata,
            )
            for spec in MODELS
        }
    else:
        reason = f"no dupilumab case matched a {control_group} subject"
        models = {spec.name: not_estimable(spec, reason) for spec in MODELS}
    return Comparison(
        control_group=control_group,
        estimable=True,
        reason=None,
        n_cases=len(cases),
        matching=result,
        population=tuple(population),
        matched_set=sets,
        models=models,
    )


def analyse(
    protocol: CohortProtocol,
    cohort: Sequence[CirAESubject],
    *,
    min_events_per_parameter: int | None = None,
) -> CirAEAnalysis:
    """Everything study 2 reports, as typed results computed from the cohort."""
    level = _level(protocol)
    if min_events_per_parameter is None:
        min_events_per_parameter = protocol.cohort.min_events_per_parameter
    comparisons = {
        g: compare(protocol, cohort, g, min_events_per_parameter) for g in CONTROL_GROUPS
    }
    survival = {}
    for g in GROUPS:
        members = sorted((s for s in cohort if s.group == g), key=lambda s: s.subject_id)
        survival[g] = km_in_months(
            g,
            [s.os_days for s in members],
            [s.died for s in members],
            months=protocol.cohort.survival_timepoints_months,
            level=level,
        )
    return CirAEAnalysis(
        protocol_id=protocol.id,
        protocol_version=protocol.version,
        confidence_level=level,
        matching_settings=protocol.cohort.matching,
        subjects=tuple(sorted(cohort, key=lambda s: s.subject_id)),
        groups=group_sizes(cohort),
        resolution=resolution_summary(cohort, level),
        comparisons=comparisons,
        survival=survival,
    )


def cirae_outcomes(
    protocol: CohortProtocol,
    cohort: Sequence[CirAESubject],
    *,
    min_events_per_parameter: int | None = None,
) -> dict[str, Any]:
    """Everything study 2 reports, as JSON-safe data (no NaN, no inf) computed from the cohort."""
    return outcomes_json(
        analyse(protocol, cohort, min_events_per_parameter=min_events_per_parameter)
    )
