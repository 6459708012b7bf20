"""Each matched comparison as a paper reports it: sizes, deaths, follow-up, KM, log-rank, HRs (pure).

Decisions (each also stated in the output):

* Population: the matched sets the analysis formed (cases with at least one control, and those
  controls), read from its `matching` output; OS from ICB initiation (days), death the event,
  everyone else censored at the last data point.
* Median follow-up: reverse Kaplan–Meier (Schemper & Smith 1996): the same times with the event
  indicator flipped (alive at the last data point is the "event", a death censors), so deaths do not
  shorten the follow-up and the median is the potential follow-up.
* Kaplan–Meier per group and the two-group log-rank test (both service.stats.survival).
* Unadjusted hazard ratios beside the adjusted models of `cox` (the primary one, dupilumab
  time-varying; the one stratified by matched set; the fixed-group sensitivity analysis): (a) the group fixed at ICB
  initiation, as the KM curves compare them (carries the immortal time of the design: a dupilumab
  case lived until its cirAE and its first dose), with model-based and robust (sandwich, clustered
  on matched set) intervals; (b) dupilumab exposure time-varying from the first dose (0 before it,
  1 after; a death on that day counts as unexposed), free of that immortal time. Cox, Efron ties
  (both on arrays, service.stats.cox_fit, following lifelines' CoxPHFitter for (a) and its
  CoxTimeVaryingFitter for (b) step for step);
  zero follow-up is set to 0.5 day, as in the adjusted models.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from service.stats import survival
from service.stats.distributions import normal_sf, two_sided_normal_quantile
from service.stats.survival import DAYS_PER_MONTH, kaplan_meier, km_in_months
from service.studies.cirae.labels import group_label
from service.studies.cirae.records import CirAESubject, Group, MatchedSet

ZERO_FOLLOWUP_DAYS = 0.5
DECIMALS = 6
FOLLOW_UP_METHOD = (
    "reverse Kaplan–Meier: alive at the last data point is the event, a death censors "
    "(Schemper & Smith 1996)"
)


def _num(value: Any) -> float | None:
    number = float(value)
    return round(number, DECIMALS) if math.isfinite(number) else None


def _p(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _months(days: float | None) -> float | None:
    return round(days / DAYS_PER_MONTH, 2) if days is not None else None


def _end(subject: CirAESubject) -> float:
    return float(subject.os_days) or ZERO_FOLLOWUP_DAYS


def matched_population(
    subjects: Sequence[CirAESubject], sets: Sequence[MatchedSet]
) -> list[tuple[CirAESubject, int]]:
    """(subject, matched set number) of every case with a control and its controls, set order."""
    by_id = {s.subject_id: s for s in subjects}
    out: list[tuple[CirAESubject, int]] = []
    for number, matched in enumerate((s for s in sets if s.controls), start=1):
        for sid in (matched.case, *matched.controls):
            if sid in by_id:
                out.append((by_id[sid], number))
    return out


def follow_up(subjects: Sequence[CirAESubject], level: float) -> dict[str, Any]:
    """Median potential follow-up by reverse Kaplan–Meier, in days and months."""
    durations = [float(s.os_days) for s in subjects]
    alive = [not s.died for s in subjects]
    km = kaplan_meier(durations, alive, level=level, label="follow-up")
    ci = km["median_ci"]
    return {
        "n": km["n"],
        "median_days": km["median_days"],
        "median_months": _months(km["median_days"]),
        "ci_lower_days": ci["lower_days"],
        "ci_upper_days": ci["upper_days"],
        "method": FOLLOW_UP_METHOD,
    }


def _fit_quietly(fit: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit()


def _exp(value: float) -> float:
    """exp that saturates: a diverged fit (no events in a group) has an unbounded CI, not a crash."""
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _hr(coef: float, se: float, z: float) -> dict[str, Any]:
    return {
        "hr": _num(_exp(coef)),
        "ci_lower": _num(_exp(coef - z * se)),
        "ci_upper": _num(_exp(coef + z * se)),
        "log_hr": _num(coef),
        "se_log_hr": _num(se),
        "p": _p(2 * normal_sf(abs(coef / se))) if se > 0 else None,
    }


def _not_estimable(reason: str) -> dict[str, Any]:
    return {"estimable": False, "reason": reason}


def unadjusted_fixed(
    population: Sequence[tuple[CirAESubject, int]], level: float
) -> dict[str, Any]:
    """Cox with the group alone (fixed at ICB initiation); model-based and clustered intervals."""
    import numpy as np  # where used: start-up imports no statistics library

    from service.stats.cox_fit import fit_cox_ph

    z = two_sided_normal_quantile(level)
    try:
        fitted = _fit_quietly(
            lambda: fit_cox_ph(
                np.array([[1.0 if s.group == "dupilumab" else 0.0] for s, _ in population]),
                np.array([_end(s) for s, _ in population], dtype=float),
                np.array([s.died for s, _ in population], dtype=bool),
                clusters=np.array([number for _, number in population]),
                names=("dupilumab",),
            )
        )
    except (ValueError, ZeroDivisionError, ArithmeticError) as exc:
        return _not_estimable(f"the model did not converge ({' '.join(str(exc).split())[:200]})")
    coef = float(fitted.params[0])
    robust_se = fitted.robust_standard_errors
    with np.errstate(invalid="ignore"):
        model = _hr(coef, float(fitted.standard_errors[0]), z)
        clustered = _hr(coef, float(robust_se[0]) if robust_se is not None else math.nan, z)
    return {
        "estimable": model["hr"] is not None,
        "reason": None if model["hr"] is not None else "non-finite estimate",
        "model": "Cox, dupilumab group (fixed at ICB initiation) alone, Efron ties",
        "caveat": "the group is fixed at ICB initiation but defined by later events: "
        "immortal-time bias in favour of dupilumab",
        **model,
        "robust": {
            "variance": "sandwich, clustered on matched set",
            **{k: clustered[k] for k in ("ci_lower", "ci_upper", "se_log_hr", "p")},
        },
    }


def _exposure_rows(subject: CirAESubject) -> list[dict[str, Any]]:
    """(0, d] unexposed and (d, end] exposed for a dupilumab case; one unexposed row otherwise."""
    end = _end(subject)
    start = subject.dupilumab_start
    if subject.group != "dupilumab" or start is None:
        return [{"start": 0.0, "stop": end, "dupilumab": 0.0, "event": int(subject.died)}]
    d = float((start - subject.icb_start).days)
    if d <= 0:
        return [{"start": 0.0, "stop": end, "dupilumab": 1.0, "event": int(subject.died)}]
    if d >= end:
        return [{"start": 0.0, "stop": end, "dupilumab": 0.0, "event": int(subject.died)}]
    return [
        {"start": 0.0, "stop": d, "dupilumab": 0.0, "event": 0},
        {"start": d, "stop": end, "dupilumab": 1.0, "event": int(subject.died)},
    ]


def unadjusted_time_varying(
    population: Sequence[tuple[CirAESubject, int]], level: float
) -> dict[str, Any]:
    """Cox with dupilumab exposure alone, time-varying from the first dose (no immortal time)."""
    import numpy as np  # where used: start-up imports no statistics library

    from service.stats.cox_fit import fit_cox

    rows = [row for s, _ in population for row in _exposure_rows(s)]
    exposure = np.array([r["dupilumab"] for r in rows], dtype=float)
    if len(np.unique(exposure)) < 2:
        return _not_estimable("dupilumab exposure does not vary in the matched population")
    z = two_sided_normal_quantile(level)
    try:
        fitted = _fit_quietly(
            lambda: fit_cox(
                exposure[:, None],
                np.array([r["start"] for r in rows], dtype=float),
                np.array([r["stop"] for r in rows], dtype=float),
                np.array([r["event"] for r in rows], dtype=bool),
                names=("dupilumab",),
            )
        )
    except (ValueError, ZeroDivisionError, ArithmeticError) as exc:
        return _not_estimable(f"the model did not converge ({' '.join(str(exc).split())[:200]})")
    with np.errstate(invalid="ignore"):
        result = _hr(float(fitted.params[0]), float(fitted.standard_errors[0]), z)
    return {
        "estimable": result["hr"] is not None,
        "reason": None if result["hr"] is not None else "non-finite estimate",
        "model": "Cox, dupilumab exposure alone, time-varying from the first dose "
        "(0 before, 1 after; a death on that day counts as unexposed), Efron ties",
        "n_rows": len(rows),
        **result,
    }


def log_rank(population: Sequence[tuple[CirAESubject, int]]) -> dict[str, Any]:
    """Two-group log-rank test of OS, dupilumab cases against their matched controls."""
    cases = [s for s, _ in population if s.group == "dupilumab"]
    controls = [s for s, _ in population if s.group != "dupilumab"]
    if not cases or not controls:
        return {"statistic": None, "df": 1, "p": None, "reason": "a group is empty"}

    result = survival.log_rank(
        [float(s.os_days) for s in cases],
        [s.died for s in cases],
        [float(s.os_days) for s in controls],
        [s.died for s in controls],
    )
    return {
        "statistic": _num(result.statistic),
        "df": 1,
        "p": _p(result.p),
        "method": "log-rank (Mantel–Haenszel, hypergeometric variance), dupilumab cases vs "
        "matched controls",
        "reason": None,
    }


def _adjusted_term(model: Mapping[str, Any] | None) -> dict[str, Any]:
    """The dupilumab term of one model the analysis reported (see `cox`), with its label."""
    if not isinstance(model, Mapping):
        return _not_estimable("no adjusted model")
    term = model.get("dupilumab")
    if not model.get("estimable") or not isinstance(term, Mapping):
        return _not_estimable(str(model.get("reason") or "not estimable"))
    name = model.get("model")
    return {"model": f"{model.get('label')}; see `cox.<control>.{name}`", **term}


def comparison_summary(
    subjects: Sequence[CirAESubject],
    control: Group,
    sets: Sequence[MatchedSet],
    adjusted: Mapping[str, Any] | None,
    *,
    level: float,
    months: Sequence[int],
) -> dict[str, Any]:
    """One matched comparison: per-group sizes, deaths, follow-up, KM; log-rank; the HRs."""
    population = matched_population(subjects, sets)
    groups: dict[str, Any] = {}
    for group in ("dupilumab", control):
        members = [s for s, _ in population if s.group == group]
        durations = [float(s.os_days) for s in members]
        deaths = [s.died for s in members]
        groups[group] = {
            "label": group_label(group),
            "n": len(members),
            "deaths": sum(deaths),
            "follow_up": follow_up(members, level),
            "km": km_in_months(group, durations, deaths, months=months, level=level),
        }
    everyone = [s for s, _ in population]
    estimable = bool(everyone) and all(g["n"] for g in groups.values())
    reason = None if estimable else "no matched sets" if not everyone else "a group is empty"
    deaths_total = sum(s.died for s in everyone)
    hazard_ratios = {
        "unadjusted_fixed_group": unadjusted_fixed(population, level)
        if estimable and deaths_total
        else _not_estimable(reason or "no deaths in the matched population"),
        "unadjusted_time_varying": unadjusted_time_varying(population, level)
        if estimable and deaths_total
        else _not_estimable(reason or "no deaths in the matched population"),
        "adjusted": _adjusted_term(adjusted.get("primary") if adjusted else None),
        "adjusted_matched_sets": _adjusted_term(adjusted.get("matched_sets") if adjusted else None),
        "adjusted_fixed_group": _adjusted_term(adjusted.get("fixed_group") if adjusted else None),
    }
    return {
        "control_group": control,
        "label": f"{group_label('dupilumab')} vs {group_label(control)}",
        "population": "matched sets: dupilumab cases with at least one matched control, and "
        "those controls",
        "matched_sets": sum(1 for s in sets if s.controls),
        "n": len(everyone),
        "deaths": deaths_total,
        "groups": groups,
        "follow_up": follow_up(everyone, level),
        "log_rank": log_rank(population),
        "hazard_ratios": hazard_ratios,
        "estimable": estimable,
        "reason": reason,
    }
