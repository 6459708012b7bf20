"""Typed results of the cirAE analysis: what each model, comparison and summary found (pure data).

`analysis.analyse` returns a `CirAEAnalysis`; `wire.py` turns it into the JSON body of
`GET /api/v1/studies/cirae-dupilumab/outcomes`. Numbers are rounded where they are computed (HRs to
6 decimals, p-values kept whole) and are never NaN or infinite: a quantity that cannot be computed
is None with a reason next to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from service.studies.cirae.protocol import Matching
from service.studies.cirae.records import CirAESubject, Group, MatchResult, Resolution

ModelName = Literal["primary", "matched_sets", "unadjusted", "fixed_group"]
MODEL_NAMES: tuple[ModelName, ...] = ("primary", "matched_sets", "unadjusted", "fixed_group")
ModelRole = Literal["primary", "supplementary", "sensitivity"]
# How dupilumab enters a model: exposure from its first dose on (time-varying), or the group
# fixed at ICB initiation (the design CLINICAL.md revision 2 keeps as a sensitivity analysis).
DupilumabCoding = Literal["time_varying", "fixed_group"]


@dataclass(frozen=True, slots=True)
class TermEstimate:
    """One Cox term: HR with CI and Wald p, or why it cannot be trusted."""

    estimable: bool
    hr: float | None = None
    ci_lower: float | None = None
    ci_upper: float | None = None
    log_hr: float | None = None
    se_log_hr: float | None = None
    p: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DroppedTerm:
    """A candidate term left out of a model, and why (constant, collinear, one level)."""

    term: str
    reason: str


@dataclass(frozen=True, slots=True)
class ExcludedSubject:
    """A subject of the model population left out of the fit (complete-case analysis)."""

    subject_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PhTest:
    """One Grambsch–Therneau test statistic."""

    statistic: float | None
    df: int
    p: float | None


@dataclass(frozen=True, slots=True)
class PhCheck:
    """The proportional-hazards check of a fitted model, or why it was not run."""

    method: str
    alpha: float | None
    available: bool
    reason: str | None = None
    terms: Mapping[str, PhTest] = field(default_factory=dict)
    global_test: PhTest | None = None
    terms_flagged: tuple[str, ...] = ()
    verdict: str | None = None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a model is: its name and label, its role, and how dupilumab and matched sets enter."""

    name: ModelName
    label: str
    role: ModelRole
    dupilumab: DupilumabCoding
    stratified_by_matched_set: bool
    glucocorticoid: bool
    adjusted: bool
    design: str


@dataclass(frozen=True, slots=True)
class CoxFit:
    """One fitted (or not estimable) Cox model of OS from ICB initiation."""

    spec: ModelSpec
    estimable: bool
    reason: str | None
    n_subjects: int
    n_events: int
    adjustment: tuple[str, ...] = ()  # the adjustment covariates asked for (before any drop)
    excluded_subjects: tuple[ExcludedSubject, ...] = ()
    n_rows: int | None = None
    n_strata: int | None = None
    n_parameters: int | None = None
    min_events_per_parameter: int | None = None
    reference_levels: Mapping[str, str] = field(default_factory=dict)
    dropped_terms: tuple[DroppedTerm, ...] = ()
    dupilumab: TermEstimate | None = None
    glucocorticoid: TermEstimate | None = None
    covariates: Mapping[str, TermEstimate] = field(default_factory=dict)
    caveats: tuple[str, ...] = ()
    ph_check: PhCheck | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    """Dupilumab vs one control group: the matching, the matched population and its models.

    `matched_set` maps every subject of the population to its set number (1, 2, … in the order
    of `matching.sets` that found a control); `models` has every name of MODEL_NAMES.
    """

    control_group: Group
    estimable: bool
    reason: str | None
    n_cases: int
    matching: MatchResult | None
    population: tuple[CirAESubject, ...]
    matched_set: Mapping[str, int]
    models: Mapping[ModelName, CoxFit]


@dataclass(frozen=True, slots=True)
class Proportion:
    """A proportion with its exact (Clopper–Pearson) CI, as `stats.survival.proportion_ci` gives."""

    successes: int
    n: int
    rate: float | None
    ci_lower: float | None
    ci_upper: float | None
    level: float
    method: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ResolutionSummary:
    """Complete or partial resolution among subjects with a cirAE, overall and per cirAE group."""

    definition: str
    categories: Mapping[Resolution, int]
    overall: Proportion
    by_group: Mapping[Group, Proportion]


@dataclass(frozen=True, slots=True)
class CirAEAnalysis:
    """Everything the cirAE study reports, computed from its analysed subjects."""

    protocol_id: str
    protocol_version: str
    confidence_level: float
    matching_settings: Matching
    subjects: tuple[CirAESubject, ...]
    groups: Mapping[Group, int]
    resolution: ResolutionSummary
    comparisons: Mapping[Group, Comparison]
    survival: Mapping[Group, Mapping[str, Any]]  # lifelines KM summaries (stats.survival)
