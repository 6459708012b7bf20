"""Cohort statistics: exact binomial CIs and Kaplan–Meier summaries (JSON-safe, no NaN or inf).

Numbers: probabilities, rates and times are rounded to `DECIMALS` decimal places so the wire shape
is stable and readable; anything not estimable is None, with a reason or note saying why.
Kaplan–Meier comes from lifelines (product-limit estimate; pointwise CIs by lifelines' default
exponential Greenwood, i.e. log(-log), method). The median and its CI are read from the curve and
the bands with R survival's convention (`quantile.survfit`), the one biostatisticians check
against: the first time S(t) <= 0.5, except where S(t) is 0.5 (within sqrt(machine epsilon)) on a
flat stretch, which gives the midpoint of that stretch (to the last follow-up if the curve ends
there). 5/6 · 4/5 · 3/4 is 0.5000000000000001 in floating point: lifelines alone skips that stretch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: lifelines and scipy cost ~100 MB of every process
    from lifelines import KaplanMeierFitter

DECIMALS = 4
# Survival in months: the mean Gregorian month (a Julian year of 365.25 days / 12), the usual
# convention of survival reports, so 12 months = 365.25 days.
DAYS_PER_MONTH = 365.25 / 12
KM_CI_METHOD = "log(-log) (exponential Greenwood), lifelines default"
# R survival's tolerance for "S(t) is exactly the quantile" (quantile.survfit: sqrt(.Machine$double.eps)).
R_TOLERANCE = math.sqrt(sys.float_info.epsilon)


def _num(value: Any) -> float | None:
    """A rounded float, or None for missing/NaN/inf, so JSON never carries NaN or Infinity."""
    if value is None:
        return None
    number = float(value)
    return round(number, DECIMALS) if math.isfinite(number) else None


def proportion_ci(successes: int, n: int, level: float = 0.95) -> dict[str, Any]:
    """A rate with its exact Clopper–Pearson CI: small trials need exact, not Wald, intervals."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    out: dict[str, Any] = {
        "successes": successes,
        "n": n,
        "rate": None,
        "ci_lower": None,
        "ci_upper": None,
        "level": level,
        "method": "clopper-pearson",
    }
    if n == 0:
        return {**out, "reason": "no subjects"}
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="exact")
    return {
        **out,
        "rate": _num(successes / n),
        "ci_lower": _num(ci.low),
        "ci_upper": _num(ci.high),
    }


def _validated(
    durations: Sequence[float], events: Sequence[bool]
) -> tuple[list[float], list[bool]]:
    """Equal lengths, finite non-negative times: bad input fails loudly, not as a NaN later."""
    if len(durations) != len(events):
        raise ValueError(f"{len(durations)} durations but {len(events)} event flags")
    times = [float(d) for d in durations]
    bad = [d for d in times if not math.isfinite(d) or d < 0]
    if bad:
        raise ValueError(f"durations must be finite and >= 0, got {bad[:3]}")
    return times, [bool(e) for e in events]


def km_fitter(
    durations: Sequence[float], events: Sequence[bool], label: str = "all", level: float = 0.95
) -> KaplanMeierFitter:
    """The fitted lifelines estimator, shared by the summary and the plots (needs n >= 1)."""
    times, flags = _validated(durations, events)
    if not times:
        raise ValueError("Kaplan–Meier needs at least one subject")
    from lifelines import KaplanMeierFitter

    return KaplanMeierFitter(alpha=1 - level).fit(times, event_observed=flags, label=label)


def at_risk(fitter: KaplanMeierFitter, time: float) -> int:
    """Subjects still at risk just before `time` (follow-up >= time), as KM tables show them."""
    table = fitter.event_table
    gone = table.loc[table.index < time, "removed"].sum()
    return int(table["at_risk"].iloc[0] - gone)


def survfit_median(times: Sequence[float], survival: Sequence[float]) -> float | None:
    """The median of a step curve as R's survfit reports it; None when S(t) never reaches 0.5.

    The first time S(t) <= 0.5; where S(t) sits at 0.5 (within R_TOLERANCE) the midpoint between
    that time and the next drop below it, or the last time on the curve if it never drops.
    `times` ascend from the curve's start; NaN values (an undefined band) are skipped.
    """
    points = [(float(t), float(v)) for t, v in zip(times, survival, strict=True) if v == v]
    if not points:
        return None
    last_time = float(times[-1])
    steps: list[tuple[float, float]] = []
    seen: set[float] = set()
    for t, v in points:  # the first time of each level (R drops repeated values: the censorings)
        if v not in seen:
            seen.add(v)
            steps.append((t, v))
    reached = next((t for t, v in steps if v <= 0.5 + R_TOLERANCE), None)
    if reached is None:
        return None
    below = next((t for t, v in steps if v <= 0.5 - R_TOLERANCE), None)
    return (reached + (below if below is not None else last_time)) / 2


def _median(fitter: KaplanMeierFitter) -> dict[str, Any]:
    """The median survival time and its CI; a bound the band never crosses is None, with a note."""
    times = [float(t) for t in fitter.survival_function_.index]
    median = _num(survfit_median(times, fitter.survival_function_.iloc[:, 0].tolist()))
    bands = fitter.confidence_interval_
    lower, upper = (_num(survfit_median(times, bands.iloc[:, i].tolist())) for i in (0, 1))
    missing = [name for name, v in (("lower", lower), ("upper", upper)) if v is None]
    note = (
        f"{' and '.join(missing)} confidence bound not reached (survival band stays above 0.5)"
        if missing
        else None
    )
    return {
        "median_days": median,
        "median_reached": median is not None,
        "median_ci": {"lower_days": lower, "upper_days": upper, "note": note},
    }


def _reached_zero(fitter: KaplanMeierFitter) -> bool:
    """The curve ended at 0: everyone had the event, so S(t) = 0 is known for every later t."""
    return float(fitter.survival_function_.iloc[-1, 0]) == 0.0


def _at_times(fitter: KaplanMeierFitter, times: Sequence[float]) -> list[dict[str, Any]]:
    """Survival with CI at each time; past a censored last follow-up the curve says nothing.

    Past the last observation the estimate is only known when that observation ended the curve
    at 0 (an event with no one left at risk): it stays 0, with lifelines' band there, [0, 0].
    """
    last = float(fitter.durations.max())
    known_after_last = _reached_zero(fitter)
    estimates = fitter.survival_function_at_times(list(times)).tolist()
    bands = fitter.confidence_interval_.reindex(list(times), method="ffill")
    out = []
    for t, s, (lo, hi) in zip(times, estimates, bands.itertuples(index=False), strict=True):
        beyond = t > last and not known_after_last
        out.append(
            {
                "days": _num(t),
                "survival": None if beyond else _num(s),
                "ci_lower": None if beyond else _num(lo),
                "ci_upper": None if beyond else _num(hi),
                "at_risk": at_risk(fitter, t),
                "reason": "beyond follow-up" if beyond else None,
            }
        )
    return out


def kaplan_meier(
    durations: Sequence[float],
    events: Sequence[bool],
    *,
    level: float = 0.95,
    timepoints_days: Sequence[float] = (),
    label: str = "all",
) -> dict[str, Any]:
    """A Kaplan–Meier summary (median, landmark survival, numbers at risk) safe to send as JSON."""
    times, flags = _validated(durations, events)
    n_events = sum(flags)
    base: dict[str, Any] = {
        "label": label,
        "n": len(times),
        "events": n_events,
        "censored": len(times) - n_events,
        "level": level,
        "method": "kaplan-meier",
        "ci_method": KM_CI_METHOD,
    }
    points = [float(t) for t in timepoints_days]
    if not times:
        return {
            **base,
            "estimable": False,
            "reason": "no subjects: not estimable",
            "median_days": None,
            "median_reached": False,
            "median_ci": {"lower_days": None, "upper_days": None, "note": "not estimable"},
            "timepoints": [
                {
                    "days": _num(t),
                    "survival": None,
                    "ci_lower": None,
                    "ci_upper": None,
                    "at_risk": 0,
                    "reason": "not estimable",
                }
                for t in points
            ],
            "at_risk": [{"days": _num(t), "at_risk": 0} for t in [0.0, *points]],
        }
    fitter = km_fitter(times, flags, label, level)
    return {
        **base,
        "estimable": True,
        "reason": None,
        **_median(fitter),
        "timepoints": _at_times(fitter, points),
        "at_risk": [{"days": _num(t), "at_risk": at_risk(fitter, t)} for t in [0.0, *points]],
    }


def km_in_months(
    label: str,
    durations: Sequence[float],
    events: Sequence[bool],
    *,
    months: Sequence[int],
    level: float = 0.95,
) -> dict[str, Any]:
    """A KM summary at landmarks given in months, with times in both days and months."""
    out = kaplan_meier(
        durations,
        events,
        level=level,
        timepoints_days=[m * DAYS_PER_MONTH for m in months],
        label=label,
    )
    median = out["median_days"]
    ci = out["median_ci"]
    return {
        **out,
        "days_per_month": DAYS_PER_MONTH,
        "median_months": _months(median),
        "median_ci": {
            **ci,
            "lower_months": _months(ci["lower_days"]),
            "upper_months": _months(ci["upper_days"]),
        },
        "timepoints": [
            {"months": m, **point} for m, point in zip(months, out["timepoints"], strict=True)
        ],
    }


def _months(days: float | None) -> float | None:
    """Days as months for display, to 2 decimals (days stay the exact, 4-decimal figure)."""
    return round(days / DAYS_PER_MONTH, 2) if days is not None else None
