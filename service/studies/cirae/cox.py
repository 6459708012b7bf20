"""Cox proportional hazards for OS from ICB initiation on (start, stop] intervals, with strata.

Modelling decisions (the output names each of them next to the numbers they produced):

- Population of each Cox model: the matched set for one control group, i.e. every dupilumab case
  with at least one matched control plus its controls; cases matched to nobody are left out.
- Time origin: ICB initiation; time in days; death is the event; everyone else is censored at the
  last data point (`CirAESubject.os_days`). Zero follow-up is set to `ZERO_FOLLOWUP_DAYS` because a
  Cox risk set cannot hold an interval of length 0.
- Counting-process data: each subject's follow-up is split into (start, stop] intervals wherever a
  time-varying covariate switches on; covariate values hold over (start, stop], so a death on the
  switching day itself counts as unexposed, and a switch on day <= 0 means exposed from the start.
  Time-varying: systemic glucocorticoids from the first day of a course (the protocol window is
  applied upstream, by service.studies.cirae.cohort) and, in every model but the fixed-group one,
  dupilumab from its first dose (CLINICAL.md revision 2: no immortal time is credited to it).
- The fixed-group model (dupilumab = 1 for the whole follow-up of a case) is the sensitivity
  analysis CLINICAL.md asks for: a case had to live until its cirAE and its dupilumab, so this
  term carries immortal-time bias in favour of dupilumab.
- Strata: the matched-set model has one baseline hazard per matched set (a case and its controls);
  a covariate constant within every set has no information there and is dropped, named.
- Covariates: dupilumab, glucocorticoid, then the protocol's adjustment set. age and charlson enter
  as numbers (per year, per point); sex, race, icb_type, cancer_type and stage are one-hot encoded
  against a reference level = the most frequent level in the model's data (ties: alphabetical
  first); a missing category is its own level "unknown"; a missing age excludes the subject
  (complete case). Columns constant in the data (within strata), or linearly dependent on earlier
  columns, are dropped and named with the reason.
- Minimum events: at least `min_events_per_parameter` deaths per estimated parameter
  (Vittinghoff & McCulloch, Am J Epidemiol 2007;165:710-718: 5-9 events per variable are usually
  adequate for Cox models), else the model is not estimable.
- Separation / non-convergence: a ConvergenceError of the fit, a non-finite estimate, a standard error
  of the log-HR above `MAX_LOG_HR_SE`, or |log-HR| above `MAX_ABS_LOG_HR` makes the model not
  estimable when it hits the dupilumab or glucocorticoid term, and only that term when it hits an
  adjustment covariate. Convergence warnings are reported as caveats.
- Fitting: `service.stats.cox_fit` (Efron ties, risk sets within the matched sets when stratified):
  lifelines' `CoxTimeVaryingFitter` algorithm step for step, on numpy arrays with sorted cumulative
  sums instead of a mask per death time and a pandas split per stratum (issue 19).
- Proportional-hazards check: Grambsch-Therneau score tests on the Schoenfeld residuals of the
  fitted model itself (Efron-weighted risk-set means within each stratum, time transform = rank of
  the death times, per-term 1-df statistic as lifelines' `proportional_hazard_test` computes it,
  global p-df statistic d·uᵀVu / Σ(g-ḡ)²); PH is flagged when a p is below 1 - confidence level.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from service.stats.cox_fit import ConvergenceError, CoxArrays
from service.stats.cox_fit import fit_cox as fit_arrays
from service.stats.cox_fit import schoenfeld_residuals as _schoenfeld
from service.stats.distributions import chi2_sf, two_sided_normal_quantile
from service.studies.cirae.records import CirAESubject
from service.studies.cirae.results import (
    CoxFit,
    DroppedTerm,
    DupilumabCoding,
    ExcludedSubject,
    ModelSpec,
    PhCheck,
    PhTest,
    TermEstimate,
)
from service.studies.cirae.wire import cox_fit_json

if TYPE_CHECKING:
    import pandas as pd

MIN_EVENTS_PER_PARAMETER = 5
MAX_LOG_HR_SE = 5.0
MAX_ABS_LOG_HR = 10.0
ZERO_FOLLOWUP_DAYS = 0.5
# lifelines stops at a Newton decrement of 1e-7, which leaves ~1e-5 in the coefficients; the
# reported numbers have 6 decimals, so the fit is run to convergence (a few more cheap iterations).
FIT_PRECISION = 1e-10
DECIMALS = 6
GROUP_TERM = "dupilumab"
GC_TERM = "glucocorticoid"
STRATUM = "stratum"
_LAYOUT = ("id", "start", "stop", "event", STRATUM)
KEY_TERMS = (GROUP_TERM, GC_TERM)
NUMERIC_COVARIATES = frozenset({"age", "charlson"})
# Library-maintenance warnings raised inside lifelines (pandas/numpy API changes) say nothing about
# the data; every other warning raised while fitting becomes a caveat of the model.
_LIBRARY_NOISE = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)

_MODELLED = "Cox model of OS from ICB initiation on the matched population"
PRIMARY = ModelSpec(
    name="primary",
    label="Primary: dupilumab exposure time-varying from its first dose, adjusted",
    role="primary",
    dupilumab="time_varying",
    stratified_by_matched_set=False,
    glucocorticoid=True,
    adjusted=True,
    design=f"{_MODELLED}: dupilumab 0 before its first dose and 1 from the day after it (no "
    "immortal time credited to it), systemic glucocorticoids time-varying, the protocol's "
    "adjustment set; matched sets not used as strata",
)
MATCHED_SETS = ModelSpec(
    name="matched_sets",
    label="Stratified by matched set: dupilumab time-varying, adjusted",
    role="supplementary",
    dupilumab="time_varying",
    stratified_by_matched_set=True,
    glucocorticoid=True,
    adjusted=True,
    design=f"{_MODELLED}, one baseline hazard per matched set (a case and its controls): the "
    "model that respects the matching; terms of the primary model, those constant within every "
    "set (the exact matching keys) dropped",
)
UNADJUSTED = ModelSpec(
    name="unadjusted",
    label="Unadjusted: dupilumab exposure time-varying from its first dose",
    role="supplementary",
    dupilumab="time_varying",
    stratified_by_matched_set=False,
    glucocorticoid=False,
    adjusted=False,
    design=f"{_MODELLED}: the time-varying dupilumab term alone",
)
FIXED_GROUP = ModelSpec(
    name="fixed_group",
    label="Sensitivity analysis: dupilumab group fixed at ICB initiation (immortal-time bias)",
    role="sensitivity",
    dupilumab="fixed_group",
    stratified_by_matched_set=False,
    glucocorticoid=True,
    adjusted=True,
    design=f"{_MODELLED}: dupilumab = 1 over a case's whole follow-up. A case had to live until "
    "its cirAE and its dupilumab, so this term carries immortal-time bias in favour of "
    "dupilumab; the time-varying glucocorticoid term does not",
)
MODELS: tuple[ModelSpec, ...] = (PRIMARY, MATCHED_SETS, UNADJUSTED, FIXED_GROUP)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Interval:
    """One row of the long (counting-process) table: covariates hold over (start, stop]."""

    start: float
    stop: float
    glucocorticoid: int
    event: bool
    dupilumab: int = 0


@dataclass(frozen=True, slots=True)
class Design:
    """The long table a Cox model is fitted on, and what was done to build it."""

    table: pd.DataFrame
    terms: tuple[str, ...]
    references: dict[str, str]
    dropped: tuple[dict[str, str], ...]
    stratified: bool = False


class NotEstimableError(Exception):
    """A model that cannot be estimated from the data; the message says why, in words."""


# -- small numeric helpers -------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """A rounded float, or None for NaN/inf, so the output always passes json.dumps(allow_nan=False)."""
    number = float(value)
    return round(number, DECIMALS) if math.isfinite(number) else None


def _p(value: Any) -> float | None:
    """A p-value kept unrounded (tiny p-values matter) but JSON-safe."""
    number = float(value)
    return number if math.isfinite(number) else None


# -- the long table --------------------------------------------------------------------------------


def _switch_day(subject: CirAESubject, day: Any) -> float | None:
    """Days from ICB initiation to the day a covariate switches on (None: it never does)."""
    return float((day - subject.icb_start).days) if day is not None else None


def tv_intervals(
    subject: CirAESubject, *, dupilumab: DupilumabCoding = "time_varying"
) -> tuple[Interval, ...]:
    """Split follow-up where glucocorticoids (and time-varying dupilumab) switch on.

    Unexposed time must not count as exposed: a covariate switching on at day c is 0 on (·, c]
    and 1 on (c, ·); c <= 0 is exposure from the start, c >= the end no exposure at all.
    """
    end = float(subject.os_days) or ZERO_FOLLOWUP_DAYS
    case = subject.group == "dupilumab"
    g = _switch_day(subject, subject.glucocorticoid_start)
    if dupilumab == "fixed_group":
        d: float | None = float("-inf") if case else None
    else:
        d = _switch_day(subject, subject.dupilumab_start) if case else None
    cuts = sorted({c for c in (g, d) if c is not None and 0 < c < end})
    bounds = [0.0, *cuts, end]
    last = len(bounds) - 2
    return tuple(
        Interval(
            start,
            stop,
            int(g is not None and g <= start),
            subject.died and i == last,
            int(d is not None and d <= start),
        )
        for i, (start, stop) in enumerate(itertools.pairwise(bounds))
    )


_CATEGORICAL = frozenset({"sex", "race", "icb_type", "cancer_type", "stage"})


def _category(subject: CirAESubject, name: str) -> str:
    """A categorical covariate's level; missing is its own level so no subject is lost to it."""
    if name not in _CATEGORICAL:
        raise KeyError(name)
    value = getattr(subject, name)
    return value if value else "unknown"


def _numeric(subject: CirAESubject, name: str) -> float | None:
    """A numeric covariate (age in years, Charlson points); None when not recorded."""
    return subject.age_years if name == "age" else float(subject.charlson)


def complete_cases(
    subjects: Sequence[CirAESubject], adjustment: Sequence[str]
) -> tuple[list[CirAESubject], list[dict[str, str]]]:
    """Subjects with every numeric covariate recorded, and those left out (with the reason)."""
    needed = [a for a in adjustment if a in NUMERIC_COVARIATES]
    kept: list[CirAESubject] = []
    excluded: list[dict[str, str]] = []
    for s in subjects:
        missing = [a for a in needed if _numeric(s, a) is None]
        if missing:
            excluded.append({"subject_id": s.subject_id, "reason": f"missing {', '.join(missing)}"})
        else:
            kept.append(s)
    return kept, excluded


def reference_level(levels: Iterable[str]) -> str:
    """The most frequent level (ties: alphabetical first), so estimates compare to the usual case."""
    counts = Counter(levels)
    return min(counts, key=lambda level: (-counts[level], level))


@dataclass(frozen=True, slots=True)
class _Covariates:
    """Per-subject covariate columns, each factor's reference level, and factors with one level."""

    columns: dict[str, list[float]]
    references: dict[str, str]
    single_level: tuple[dict[str, str], ...]


def _covariate_columns(subjects: Sequence[CirAESubject], adjustment: Sequence[str]) -> _Covariates:
    """Numbers as they are, factors as dummies against their reference level."""
    columns: dict[str, list[float]] = {}
    references: dict[str, str] = {}
    single: list[dict[str, str]] = []
    for name in adjustment:
        if name in NUMERIC_COVARIATES:
            columns[name] = [float(_numeric(s, name) or 0.0) for s in subjects]
            continue
        levels = [_category(s, name) for s in subjects]
        references[name] = reference_level(levels)
        others = sorted(set(levels) - {references[name]})
        if not others:
            single.append({"term": name, "reason": f"one level only ({references[name]!r})"})
        for level in others:
            columns[f"{name}={level}"] = [1.0 if v == level else 0.0 for v in levels]
    return _Covariates(columns, references, tuple(single))


def long_table(
    subjects: Sequence[CirAESubject],
    adjustment: Sequence[str],
    *,
    dupilumab: DupilumabCoding = "time_varying",
    strata: Mapping[str, str] | None = None,
    glucocorticoid: bool = True,
) -> tuple[pd.DataFrame, _Covariates]:
    """The counting-process table: one row per interval, with every candidate term as a column."""
    import pandas as pd

    covariates = _covariate_columns(subjects, adjustment)
    fixed = covariates.columns
    # built column by column (one list per column, the subject's row index per interval), not a
    # dict per row: the same table, in the same column order and dtypes
    ids: list[str] = []
    owner: list[int] = []
    starts: list[float] = []
    stops: list[float] = []
    events: list[int] = []
    exposed: list[float] = []
    treated: list[float] = []
    for i, s in enumerate(subjects):
        for iv in tv_intervals(s, dupilumab=dupilumab):
            ids.append(s.subject_id)
            owner.append(i)
            starts.append(iv.start)
            stops.append(iv.stop)
            events.append(int(iv.event))
            exposed.append(float(iv.dupilumab))
            treated.append(float(iv.glucocorticoid))
    columns: dict[str, Any] = {
        "id": ids,
        "start": np.array(starts, dtype=float),
        "stop": np.array(stops, dtype=float),
        "event": np.array(events, dtype=np.int64),
        GROUP_TERM: np.array(exposed, dtype=float),
    }
    if strata is not None:
        columns[STRATUM] = [strata[subject_id] for subject_id in ids]
    if glucocorticoid:
        columns[GC_TERM] = np.array(treated, dtype=float)
    rows = np.array(owner, dtype=np.int64)
    for name, col in fixed.items():
        columns[name] = np.asarray(col, dtype=float)[rows]
    return pd.DataFrame(columns), covariates


def _rank(r_columns: FloatArray, rows: int) -> int:
    """numpy.linalg.matrix_rank of the rows×k matrix whose QR factor has these R columns."""
    singular = np.linalg.svd(r_columns, compute_uv=False)
    if not singular.size:
        return 0
    tolerance = singular.max() * max(rows, r_columns.shape[1]) * np.finfo(float).eps
    return int((singular > tolerance).sum())


def _independent_terms(
    table: pd.DataFrame, candidates: Sequence[str], *, stratified: bool = False
) -> tuple[list[str], list[dict[str, str]]]:
    """Keep terms that vary (within strata) and add information, in order; name the rest and why.

    In a stratified model only variation inside a stratum informs a term, so columns are centred
    on their stratum means before the checks.
    """
    values = table[list(candidates)].astype(float)
    if stratified:
        centred = values - values.groupby(table[STRATUM]).transform("mean")
    else:
        centred = values - values.mean()
    matrix = centred.to_numpy(dtype=float)
    # The rank of any set of columns of `matrix` is that of the same columns of R in its QR
    # decomposition (Q has orthonormal columns, so the singular values are the same): a K×K
    # matrix per check instead of rows×K. numpy's default tolerance, for the original shape.
    r_factor: FloatArray = (
        np.asarray(np.linalg.qr(matrix, mode="r")) if len(candidates) else np.zeros((0, 0))
    )
    column_of = {term: i for i, term in enumerate(candidates)}
    kept: list[str] = []
    dropped: list[dict[str, str]] = []
    for term in candidates:
        column = matrix[:, column_of[term]]
        if np.allclose(column, 0.0, rtol=0.0, atol=1e-12):
            reason = (
                "constant within every matched set"
                if stratified and np.ptp(values[term].to_numpy(dtype=float)) > 0
                else f"constant in the data (always {values[term].iloc[0]:g})"
            )
            dropped.append({"term": term, "reason": reason})
            continue
        trial = [column_of[t] for t in (*kept, term)]
        if _rank(r_factor[:, trial], len(matrix)) < len(trial):
            dropped.append({"term": term, "reason": "linearly dependent on the terms before it"})
            continue
        kept.append(term)
    return kept, dropped


def build_design(
    subjects: Sequence[CirAESubject],
    adjustment: Sequence[str],
    *,
    dupilumab: DupilumabCoding = "time_varying",
    strata: Mapping[str, str] | None = None,
    glucocorticoid: bool = True,
) -> Design:
    """The long table restricted to estimable terms, with reference levels and dropped terms."""
    table, covariates = long_table(
        subjects, adjustment, dupilumab=dupilumab, strata=strata, glucocorticoid=glucocorticoid
    )
    stratified = strata is not None
    candidates = [c for c in table.columns if c not in _LAYOUT]
    terms, dropped = _independent_terms(table, candidates, stratified=stratified)
    layout = [c for c in _LAYOUT if c in table.columns]
    return Design(
        table=table[[*layout, *terms]],
        terms=tuple(terms),
        references=covariates.references,
        dropped=(*covariates.single_level, *dropped),
        stratified=stratified,
    )


# -- fitting ---------------------------------------------------------------------------------------


def _caveat(warning: warnings.WarningMessage) -> str:
    """A warning's first two sentences (lifelines adds code samples after them)."""
    text = " ".join(str(warning.message).split())
    sentences = re.split(r"(?<=[.?!])\s+", text)
    return f"{warning.category.__name__}: {' '.join(sentences[:2])[:300]}"


@dataclass(frozen=True, slots=True)
class Fitted:
    """A fitted model: the terms in order with their estimates and variance matrix."""

    terms: tuple[str, ...]
    arrays: CoxArrays


def _quietly(fit: Callable[[], CoxArrays]) -> tuple[CoxArrays, list[str]]:
    """Run one fit, turning its warnings into caveats instead of letting them escape."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = fit()
    caveats = [_caveat(w) for w in caught if not issubclass(w.category, _LIBRARY_NOISE)]
    return fitted, list(dict.fromkeys(caveats))


def fit_time_varying(design: Design, level: float) -> tuple[Fitted, list[str]]:
    """Fit the Cox model on the long table; fitting failures become NotEstimableError.

    `level` is not used by the fit itself (the intervals are built from the variance later); it is
    kept so callers state the level a model is reported at.
    """
    table = design.table
    terms = design.terms
    try:
        arrays, caveats = _quietly(
            lambda: fit_arrays(
                table[list(terms)].to_numpy(dtype=float),
                table["start"].to_numpy(dtype=float),
                table["stop"].to_numpy(dtype=float),
                table["event"].to_numpy(dtype=bool),
                strata=table[STRATUM].to_numpy() if design.stratified else None,
                names=terms,
                precision=FIT_PRECISION,
            )
        )
    except (ConvergenceError, np.linalg.LinAlgError, ValueError, ZeroDivisionError) as exc:
        first = " ".join(str(exc).split())[:240]
        raise NotEstimableError(f"the model did not converge ({first})") from exc
    return Fitted(terms, arrays), caveats


def _term_problem(coef: float, se: float) -> str | None:
    """Why a fitted term cannot be trusted (separation, non-convergence), or None."""
    if not (math.isfinite(coef) and math.isfinite(se)):
        return "non-finite estimate or standard error (non-convergence)"
    if se > MAX_LOG_HR_SE or abs(coef) > MAX_ABS_LOG_HR:
        return (
            f"log-HR {coef:.3g} with standard error {se:.3g}: the likelihood has no finite "
            "maximum (separation: the term perfectly separates deaths from survivors)"
        )
    return None


def term_results(fitter: Fitted, level: float) -> dict[str, TermEstimate]:
    """HR, CI and Wald p per term; a term that cannot be trusted says so instead of a number."""
    z = two_sided_normal_quantile(level)
    out: dict[str, TermEstimate] = {}
    with np.errstate(invalid="ignore"):
        errors = fitter.arrays.standard_errors
    for i, term in enumerate(fitter.terms):
        coef = float(fitter.arrays.params[i])
        se = float(errors[i])
        problem = _term_problem(coef, se)
        if problem is not None:
            out[term] = TermEstimate(estimable=False, reason=problem)
            continue
        out[term] = TermEstimate(
            estimable=True,
            hr=_num(math.exp(coef)),
            ci_lower=_num(math.exp(coef - z * se)),
            ci_upper=_num(math.exp(coef + z * se)),
            log_hr=_num(coef),
            se_log_hr=_num(se),
            p=_p(chi2_sf((coef / se) ** 2, 1)),
        )
    return out


# -- proportional-hazards check ---------------------------------------------------------------------


def schoenfeld_residuals(
    x: FloatArray,
    start: FloatArray,
    stop: FloatArray,
    event: BoolArray,
    beta: FloatArray,
    strata: npt.NDArray[Any] | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Per-death residuals x − Efron-weighted risk-set mean (within the stratum), in time order."""
    return _schoenfeld(x, start, stop, event, beta, strata)


_PH_METHOD = (
    "Grambsch-Therneau score test on Schoenfeld residuals of the fitted (start, stop] model "
    "(Efron risk-set means within each stratum, time transform: rank of death times; per-term "
    "statistic as lifelines proportional_hazard_test, global test with p degrees of freedom)"
)


def ph_check(fitter: Fitted, design: Design, level: float) -> PhCheck:
    """Grambsch–Therneau tests on the fitted model's own residuals: does any HR drift with time?"""
    terms = list(fitter.terms)
    table = design.table
    resid, _ = schoenfeld_residuals(
        table[terms].to_numpy(dtype=float),
        table["start"].to_numpy(dtype=float),
        table["stop"].to_numpy(dtype=float),
        table["event"].to_numpy(dtype=bool),
        fitter.arrays.params,
        table[STRATUM].to_numpy() if design.stratified else None,
    )
    base = PhCheck(method=_PH_METHOD, alpha=_num(1 - level), available=False)
    d = resid.shape[0]
    g = np.arange(1, d + 1, dtype=float) - (d + 1) / 2
    if d < 3:
        return replace(base, reason=f"{d} deaths: too few to test")
    variance = fitter.arrays.variance
    if not np.isfinite(variance).all() or (np.diag(variance) <= 0).any():
        return replace(base, reason="the model's variance matrix is degenerate")
    u = g @ resid
    vu = variance @ u
    scale = float(g @ g)
    per_term = d * vu**2 / (np.diag(variance) * scale)
    global_stat = float(d * u @ vu / scale)
    alpha = 1 - level
    terms_out = {
        t: PhTest(statistic=_num(s), df=1, p=_p(chi2_sf(s, 1)))
        for t, s in zip(terms, per_term.tolist(), strict=True)
    }
    global_p = _p(chi2_sf(global_stat, len(terms)))
    flagged = tuple(t for t, r in terms_out.items() if r.p is not None and r.p < alpha)
    violated = bool(flagged) or (global_p is not None and global_p < alpha)
    return replace(
        base,
        available=True,
        terms=terms_out,
        global_test=PhTest(statistic=_num(global_stat), df=len(terms), p=global_p),
        terms_flagged=flagged,
        verdict=(
            "proportional hazards questionable"
            if violated
            else "no evidence against proportional hazards"
        ),
    )


# -- one model --------------------------------------------------------------------------------------


def not_estimable(
    spec: ModelSpec, reason: str, *, n_subjects: int = 0, n_events: int = 0
) -> CoxFit:
    """The one shape every not-estimable model takes."""
    return CoxFit(
        spec=spec, estimable=False, reason=reason, n_subjects=n_subjects, n_events=n_events
    )


def fit_cox(
    spec: ModelSpec,
    subjects: Sequence[CirAESubject],
    adjustment: Sequence[str],
    level: float,
    *,
    min_events_per_parameter: int = MIN_EVENTS_PER_PARAMETER,
    strata: Mapping[str, str] | None = None,
) -> CoxFit:
    """One OS Cox model as `spec` describes it; never raises on data (not estimable: why)."""
    if spec.stratified_by_matched_set and strata is None:
        raise ValueError(f"model {spec.name!r} is stratified by matched set but has no sets")
    adjustment = adjustment if spec.adjusted else ()
    kept, excluded = complete_cases(subjects, adjustment)
    base = CoxFit(
        spec=spec,
        estimable=False,
        reason=None,
        n_subjects=len(kept),
        n_events=sum(s.died for s in kept),
        adjustment=tuple(adjustment),
        excluded_subjects=tuple(ExcludedSubject(**e) for e in excluded),
    )
    try:
        return _fit(
            base,
            kept,
            adjustment,
            level,
            min_events_per_parameter,
            strata if spec.stratified_by_matched_set else None,
        )
    except NotEstimableError as exc:
        return replace(base, reason=str(exc))


def cox_model(
    subjects: Sequence[CirAESubject],
    adjustment: Sequence[str],
    level: float,
    *,
    min_events_per_parameter: int = MIN_EVENTS_PER_PARAMETER,
    spec: ModelSpec | None = None,
    strata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`fit_cox` as the JSON the API shows (the primary model's specification by default)."""
    fitted = fit_cox(
        spec or PRIMARY,
        subjects,
        adjustment,
        level,
        min_events_per_parameter=min_events_per_parameter,
        strata=strata,
    )
    return cox_fit_json(fitted)


def _fit(
    base: CoxFit,
    subjects: Sequence[CirAESubject],
    adjustment: Sequence[str],
    level: float,
    min_epv: int,
    strata: Mapping[str, str] | None,
) -> CoxFit:
    """The body of an estimable model, or NotEstimableError saying what stands in the way."""
    spec = base.spec
    groups = Counter(s.group == "dupilumab" for s in subjects)
    if not groups[True] or not groups[False]:
        side = "dupilumab" if not groups[True] else "control"
        raise NotEstimableError(f"no {side} subjects in the model population")
    events = sum(s.died for s in subjects)
    if events == 0:
        raise NotEstimableError("no deaths in the model population")
    design = build_design(
        subjects,
        adjustment,
        dupilumab=spec.dupilumab,
        strata=strata,
        glucocorticoid=spec.glucocorticoid,
    )
    if GROUP_TERM not in design.terms:
        raise NotEstimableError("the dupilumab indicator does not vary in the model population")
    if events < min_epv * len(design.terms):
        raise NotEstimableError(
            f"{events} deaths for {len(design.terms)} estimated parameter(s): "
            f"fewer than {min_epv} deaths per parameter"
        )
    fitter, caveats = fit_time_varying(design, level)
    terms = term_results(fitter, level)
    key_terms = [t for t in KEY_TERMS if t != GC_TERM or spec.glucocorticoid]
    broken = [t for t in key_terms if t in terms and not terms[t].estimable]
    if broken:
        raise NotEstimableError(f"{broken[0]}: {terms[broken[0]].reason}")
    for term in design.dropped:
        if term["term"] in key_terms:
            terms[term["term"]] = TermEstimate(estimable=False, reason=f"dropped: {term['reason']}")
    return replace(
        base,
        estimable=True,
        n_rows=len(design.table),
        n_strata=int(design.table[STRATUM].nunique()) if design.stratified else None,
        n_parameters=len(design.terms),
        min_events_per_parameter=min_epv,
        reference_levels=design.references,
        dropped_terms=tuple(DroppedTerm(**d) for d in design.dropped),
        dupilumab=terms[GROUP_TERM],
        glucocorticoid=terms.get(GC_TERM) if spec.glucocorticoid else None,
        covariates={t: r for t, r in terms.items() if t not in KEY_TERMS},
        caveats=tuple(caveats + [f"{t}: {r.reason}" for t, r in terms.items() if not r.estimable]),
        ph_check=ph_check(fitter, design, level),
    )
