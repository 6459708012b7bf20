"""Cox proportional hazards for OS from ICB initiation with a time-varying glucocorticoid term.

Modelling decisions (the output names each of them next to the numbers they produced):

- Population of each Cox model: the matched set for one control group, i.e. every dupilumab case
  with at least one matched control plus its controls; cases matched to nobody are left out.
- Time origin: ICB initiation; time in days; death is the event; everyone else is censored at the
  last data point (`CirAESubject.os_days`). Zero follow-up is set to `ZERO_FOLLOWUP_DAYS` because a
  Cox risk set cannot hold an interval of length 0.
- Systemic glucocorticoid exposure is time-varying: 0 on (0, g], 1 on (g, end] where g is the day of
  the first glucocorticoid (the protocol window is applied upstream, by service.studies.cirae.cohort). Covariate
  values hold over (start, stop]: a death on day g itself counts as unexposed; g <= 0 means
  exposed from the start.
- Covariates: group (dupilumab = 1), glucocorticoid, then the protocol's adjustment set. age and
  charlson enter as numbers (per year, per point); sex, race, icb_type, cancer_type and stage are
  one-hot encoded against a reference level = the most frequent level in the model's data (ties:
  alphabetical first); a missing category is its own level "unknown"; a missing age excludes the
  subject (complete case). Columns constant in the data, or linearly dependent on earlier columns,
  are dropped and named with the reason.
- Minimum events: at least `MIN_EVENTS_PER_PARAMETER` deaths per estimated parameter
  (Vittinghoff & McCulloch, Am J Epidemiol 2007;165:710-718: 5-9 events per variable are usually
  adequate for Cox models), else the model is not estimable.
- Separation / non-convergence: a lifelines ConvergenceError, a non-finite estimate, a standard error
  of the log-HR above `MAX_LOG_HR_SE`, or |log-HR| above `MAX_ABS_LOG_HR` makes the model not
  estimable when it hits the group or glucocorticoid term, and only that term when it hits an
  adjustment covariate. Convergence warnings are reported as caveats.
- Proportional-hazards check: Grambsch-Therneau score tests on the Schoenfeld residuals of the
  fitted time-varying model itself (Efron-weighted risk-set means, time transform = rank of the death
  times, per-term 1-df statistic as lifelines' `proportional_hazard_test` computes it, global p-df
  statistic d·uᵀVu / Σ(g-ḡ)²); PH is flagged when a p is below 1 - confidence level.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from lifelines import CoxTimeVaryingFitter
from lifelines.exceptions import ConvergenceError
from scipy.stats import chi2, norm

from service.studies.cirae.records import CirAESubject

MIN_EVENTS_PER_PARAMETER = 5
MAX_LOG_HR_SE = 5.0
MAX_ABS_LOG_HR = 10.0
ZERO_FOLLOWUP_DAYS = 0.5
# lifelines stops at a Newton decrement of 1e-7, which leaves ~1e-5 in the coefficients; the
# reported numbers have 6 decimals, so the fit is run to convergence (a few more cheap iterations).
FIT_OPTIONS = {"precision": 1e-10, "r_precision": 1e-14}
DECIMALS = 6
GROUP_TERM = "dupilumab"
GC_TERM = "glucocorticoid"
KEY_TERMS = (GROUP_TERM, GC_TERM)
NUMERIC_COVARIATES = frozenset({"age", "charlson"})
# Library-maintenance warnings raised inside lifelines (pandas/numpy API changes) say nothing about
# the data; every other warning raised while fitting becomes a caveat of the model.
_LIBRARY_NOISE = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Interval:
    """One row of the long (counting-process) table: covariates hold over (start, stop]."""

    start: float
    stop: float
    glucocorticoid: int
    event: bool


@dataclass(frozen=True, slots=True)
class Design:
    """The long table a Cox model is fitted on, and what was done to build it."""

    table: pd.DataFrame
    terms: tuple[str, ...]
    references: dict[str, str]
    dropped: tuple[dict[str, str], ...]


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


def tv_intervals(subject: CirAESubject) -> tuple[Interval, ...]:
    """Split follow-up at the first glucocorticoid day: unexposed time must not count as exposed."""
    end = float(subject.os_days) or ZERO_FOLLOWUP_DAYS
    if subject.glucocorticoid_start is None:
        return (Interval(0.0, end, 0, subject.died),)
    g = float((subject.glucocorticoid_start - subject.icb_start).days)
    if g <= 0:
        return (Interval(0.0, end, 1, subject.died),)
    if g >= end:
        return (Interval(0.0, end, 0, subject.died),)
    return (Interval(0.0, g, 0, False), Interval(g, end, 1, subject.died))


def _category(subject: CirAESubject, name: str) -> str:
    """A categorical covariate's level; missing is its own level so no subject is lost to it."""
    value = {
        "sex": subject.sex,
        "race": subject.race,
        "icb_type": subject.icb_type,
        "cancer_type": subject.cancer_type,
        "stage": subject.stage,
    }[name]
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
    subjects: Sequence[CirAESubject], adjustment: Sequence[str]
) -> tuple[pd.DataFrame, _Covariates]:
    """The counting-process table: one row per interval, with every candidate term as a column."""
    covariates = _covariate_columns(subjects, adjustment)
    fixed = covariates.columns
    rows: list[dict[str, Any]] = []
    for i, s in enumerate(subjects):
        for iv in tv_intervals(s):
            row: dict[str, Any] = {
                "id": s.subject_id,
                "start": iv.start,
                "stop": iv.stop,
                "event": int(iv.event),
                GROUP_TERM: 1.0 if s.group == "dupilumab" else 0.0,
                GC_TERM: float(iv.glucocorticoid),
            }
            row.update({name: col[i] for name, col in fixed.items()})
            rows.append(row)
    return pd.DataFrame(rows), covariates


def _independent_terms(
    table: pd.DataFrame, candidates: Sequence[str]
) -> tuple[list[str], list[dict[str, str]]]:
    """Keep terms that vary and add information, in order; name the rest and why they went."""
    kept: list[str] = []
    dropped: list[dict[str, str]] = []
    for term in candidates:
        column = table[term].to_numpy(dtype=float)
        if np.ptp(column) == 0:
            dropped.append({"term": term, "reason": f"constant in the data (always {column[0]:g})"})
            continue
        trial = [*kept, term]
        centred = table[trial].to_numpy(dtype=float) - table[trial].to_numpy(dtype=float).mean(0)
        if np.linalg.matrix_rank(centred) < len(trial):
            dropped.append({"term": term, "reason": "linearly dependent on the terms before it"})
            continue
        kept.append(term)
    return kept, dropped


def build_design(subjects: Sequence[CirAESubject], adjustment: Sequence[str]) -> Design:
    """The long table restricted to estimable terms, with reference levels and dropped terms."""
    table, covariates = long_table(subjects, adjustment)
    candidates = [c for c in table.columns if c not in ("id", "start", "stop", "event")]
    terms, dropped = _independent_terms(table, candidates)
    return Design(
        table=table[["id", "start", "stop", "event", *terms]],
        terms=tuple(terms),
        references=covariates.references,
        dropped=(*covariates.single_level, *dropped),
    )


# -- fitting ---------------------------------------------------------------------------------------


def _caveat(warning: warnings.WarningMessage) -> str:
    """A warning's first two sentences (lifelines adds code samples after them)."""
    text = " ".join(str(warning.message).split())
    sentences = re.split(r"(?<=[.?!])\s+", text)
    return f"{warning.category.__name__}: {' '.join(sentences[:2])[:300]}"


def _quietly(fit: Callable[[], CoxTimeVaryingFitter]) -> tuple[CoxTimeVaryingFitter, list[str]]:
    """Run one lifelines fit, turning its warnings into caveats instead of letting them escape."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = fit()
    caveats = [_caveat(w) for w in caught if not issubclass(w.category, _LIBRARY_NOISE)]
    return fitted, list(dict.fromkeys(caveats))


def fit_time_varying(design: Design, level: float) -> tuple[CoxTimeVaryingFitter, list[str]]:
    """Fit the Cox model on the long table; lifelines failures become NotEstimableError."""
    fitter = CoxTimeVaryingFitter(alpha=1 - level)
    try:
        return _quietly(
            lambda: fitter.fit(
                design.table,
                event_col="event",
                start_col="start",
                stop_col="stop",
                id_col="id",
                fit_options=FIT_OPTIONS,
            )
        )
    except (ConvergenceError, np.linalg.LinAlgError, ValueError, ZeroDivisionError) as exc:
        first = " ".join(str(exc).split())[:240]
        raise NotEstimableError(f"the model did not converge ({first})") from exc


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


def term_results(fitter: CoxTimeVaryingFitter, level: float) -> dict[str, dict[str, Any]]:
    """HR, CI and Wald p per term; a term that cannot be trusted says so instead of a number."""
    z = float(_normal_quantile(level))
    out: dict[str, dict[str, Any]] = {}
    for term in fitter.params_.index:
        coef = float(fitter.params_[term])
        se = float(fitter.standard_errors_[term])
        problem = _term_problem(coef, se)
        if problem is not None:
            out[term] = {"estimable": False, "reason": problem}
            continue
        out[term] = {
            "estimable": True,
            "hr": _num(math.exp(coef)),
            "ci_lower": _num(math.exp(coef - z * se)),
            "ci_upper": _num(math.exp(coef + z * se)),
            "log_hr": _num(coef),
            "se_log_hr": _num(se),
            "p": _p(chi2.sf((coef / se) ** 2, 1)),
        }
    return out


def _normal_quantile(level: float) -> float:
    """The two-sided normal quantile for a confidence level (1.959964 for 95 %)."""
    return float(norm.ppf(1 - (1 - level) / 2))


# -- proportional-hazards check ---------------------------------------------------------------------


def schoenfeld_residuals(
    x: FloatArray, start: FloatArray, stop: FloatArray, event: BoolArray, beta: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Per-death residuals x − Efron-weighted risk-set mean, with death times, in time order."""
    phi = np.exp(x @ beta)
    residuals: list[FloatArray] = []
    times: list[float] = []
    for t in np.unique(stop[event]):
        at_risk = (start < t) & (stop >= t)
        dead = event & (stop == t)
        m = int(dead.sum())
        s0, s1 = phi[at_risk].sum(), phi[at_risk] @ x[at_risk]
        t0, t1 = phi[dead].sum(), phi[dead] @ x[dead]
        mean = sum((s1 - k / m * t1) / (s0 - k / m * t0) for k in range(m)) / m
        for i in np.flatnonzero(dead):
            residuals.append(x[i] - mean)
            times.append(float(t))
    return np.asarray(residuals, dtype=float), np.asarray(times, dtype=float)


def ph_check(fitter: CoxTimeVaryingFitter, design: Design, level: float) -> dict[str, Any]:
    """Grambsch–Therneau tests on the fitted model's own residuals: does any HR drift with time?"""
    terms = list(fitter.params_.index)
    table = design.table
    resid, _ = schoenfeld_residuals(
        table[terms].to_numpy(dtype=float),
        table["start"].to_numpy(dtype=float),
        table["stop"].to_numpy(dtype=float),
        table["event"].to_numpy(dtype=bool),
        fitter.params_.to_numpy(dtype=float),
    )
    base: dict[str, Any] = {
        "method": "Grambsch-Therneau score test on Schoenfeld residuals of the time-varying "
        "model (Efron risk-set means, time transform: rank of death times; per-term statistic "
        "as lifelines proportional_hazard_test, global test with p degrees of freedom)",
        "alpha": _num(1 - level),
    }
    d = resid.shape[0]
    g = np.arange(1, d + 1, dtype=float) - (d + 1) / 2
    if d < 3:
        return {**base, "available": False, "reason": f"{d} deaths: too few to test"}
    variance = fitter.variance_matrix_.to_numpy(dtype=float)
    if not np.isfinite(variance).all() or (np.diag(variance) <= 0).any():
        return {**base, "available": False, "reason": "the model's variance matrix is degenerate"}
    u = g @ resid
    vu = variance @ u
    scale = float(g @ g)
    per_term = d * vu**2 / (np.diag(variance) * scale)
    global_stat = float(d * u @ vu / scale)
    alpha = 1 - level
    terms_out = {
        t: {"statistic": _num(s), "df": 1, "p": _p(chi2.sf(s, 1))}
        for t, s in zip(terms, per_term.tolist(), strict=True)
    }
    global_p = _p(chi2.sf(global_stat, len(terms)))
    flagged = [t for t, r in terms_out.items() if r["p"] is not None and r["p"] < alpha]
    violated = bool(flagged) or (global_p is not None and global_p < alpha)
    return {
        **base,
        "available": True,
        "terms": terms_out,
        "global": {"statistic": _num(global_stat), "df": len(terms), "p": global_p},
        "terms_flagged": flagged,
        "verdict": (
            "proportional hazards questionable"
            if violated
            else "no evidence against proportional hazards"
        ),
    }


# -- one model --------------------------------------------------------------------------------------


def not_estimable(reason: str, **facts: Any) -> dict[str, Any]:
    """The one shape every not-estimable model takes."""
    return {"estimable": False, "reason": reason, **facts}


def cox_model(
    subjects: Sequence[CirAESubject],
    adjustment: Sequence[str],
    level: float,
    *,
    min_events_per_parameter: int = MIN_EVENTS_PER_PARAMETER,
) -> dict[str, Any]:
    """OS Cox model with time-varying glucocorticoids, group and adjustment; never raises on data."""
    kept, excluded = complete_cases(subjects, adjustment)
    facts: dict[str, Any] = {
        "n_subjects": len(kept),
        "n_events": sum(s.died for s in kept),
        "excluded_subjects": excluded,
    }
    try:
        return {**facts, **_fit_report(kept, adjustment, level, min_events_per_parameter)}
    except NotEstimableError as exc:
        return {**facts, **not_estimable(str(exc))}


def _fit_report(
    subjects: Sequence[CirAESubject], adjustment: Sequence[str], level: float, min_epv: int
) -> dict[str, Any]:
    """The body of an estimable model, or NotEstimableError saying what stands in the way."""
    groups = Counter(s.group == "dupilumab" for s in subjects)
    if not groups[True] or not groups[False]:
        side = "dupilumab" if not groups[True] else "control"
        raise NotEstimableError(f"no {side} subjects in the model population")
    events = sum(s.died for s in subjects)
    if events == 0:
        raise NotEstimableError("no deaths in the model population")
    design = build_design(subjects, adjustment)
    facts: dict[str, Any] = {
        "n_rows": len(design.table),
        "reference_levels": design.references,
        "dropped_terms": list(design.dropped),
    }
    if GROUP_TERM not in design.terms:
        raise NotEstimableError("the group indicator does not vary in the model population")
    if events < min_epv * len(design.terms):
        raise NotEstimableError(
            f"{events} deaths for {len(design.terms)} estimated parameter(s): "
            f"fewer than {min_epv} deaths per parameter"
        )
    fitter, caveats = fit_time_varying(design, level)
    terms = term_results(fitter, level)
    broken = [t for t in KEY_TERMS if t in terms and not terms[t]["estimable"]]
    if broken:
        raise NotEstimableError(f"{broken[0]}: {terms[broken[0]]['reason']}")
    for term in design.dropped:
        if term["term"] in KEY_TERMS:
            terms[term["term"]] = {"estimable": False, "reason": f"dropped: {term['reason']}"}
    return {
        "estimable": True,
        "reason": None,
        **facts,
        "n_parameters": len(design.terms),
        "min_events_per_parameter": min_epv,
        GROUP_TERM: terms[GROUP_TERM],
        GC_TERM: terms[GC_TERM],
        "covariates": {t: r for t, r in terms.items() if t not in KEY_TERMS},
        "caveats": caveats
        + [f"{t}: {r['reason']}" for t, r in terms.items() if not r["estimable"]],
        "ph_check": ph_check(fitter, design, level),
    }
