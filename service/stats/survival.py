"""Cohort statistics: exact binomial CIs and Kaplan–Meier summaries (JSON-safe, no NaN or inf).

Numbers: probabilities, rates and times are rounded to `DECIMALS` decimal places so the wire shape
is stable and readable; anything not estimable is None, with a reason or note saying why.
Kaplan–Meier is lifelines' product-limit estimate with its default pointwise CIs (exponential
Greenwood, i.e. log(-log)), computed here on numpy arrays with lifelines' own operations in its
order (`_fit`), so the floats are the ones lifelines gives (tests compare them bit for bit): a
cohort recomputation then imports numpy and `scipy.special` only, not lifelines and scipy.stats
(3–5 s of a process's first computation, issue 19). The plots still draw with lifelines
(`km_fitter`). The median and its CI are read from the curve and the bands with R survival's
convention (`quantile.survfit`), the one biostatisticians check against: the first time
S(t) <= 0.5, except where S(t) is 0.5 (within sqrt(machine epsilon)) on a flat stretch, which gives
the midpoint of that stretch (to the last follow-up if the curve ends there). 5/6 · 4/5 · 3/4 is
0.5000000000000001 in floating point: lifelines alone skips that stretch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: lifelines and scipy cost ~100 MB of every process
    import numpy as np
    import numpy.typing as npt
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
    lower, upper = clopper_pearson(successes, n, level)
    return {
        **out,
        "rate": _num(successes / n),
        "ci_lower": _num(lower),
        "ci_upper": _num(upper),
    }


def clopper_pearson(successes: int, n: int, level: float) -> tuple[float, float]:
    """The exact two-sided bounds as beta quantiles (the roots scipy.stats' `binomtest` searches
    for), pinned at 0 for 0/n and 1 for n/n: `scipy.special` only, not scipy.stats' import."""
    from scipy.special import betainccinv, betaincinv

    alpha = (1 - level) / 2  # as binomtest's exact interval halves it
    lower = 0.0 if successes == 0 else float(betaincinv(successes, n - successes + 1, alpha))
    upper = 1.0 if successes == n else float(betainccinv(successes + 1, n - successes, alpha))
    return lower, upper


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


@dataclass(frozen=True, slots=True)
class KmFit:
    """One Kaplan–Meier fit as lifelines holds it: per time of its event table (0, then every
    distinct follow-up time), the numbers at risk and removed, S(t) and its CI band."""

    times: npt.NDArray[np.float64]
    at_risk: npt.NDArray[np.int64]
    removed: npt.NDArray[np.int64]
    survival: npt.NDArray[np.float64]
    lower: npt.NDArray[np.float64]
    upper: npt.NDArray[np.float64]
    last_follow_up: float

    def at_risk_at(self, time: float) -> int:
        """Subjects still at risk just before `time` (follow-up >= time), as `at_risk` counts."""
        return int(self.at_risk[0] - self.removed[self.times < time].sum())

    def index_at(self, time: float) -> int:
        """The row in force at `time` (the last event-table time <= `time`; -1 before the first)."""
        import numpy as np

        return int(np.searchsorted(self.times, time, side="right")) - 1


def km_fit(times: Sequence[float], flags: Sequence[bool], level: float) -> KmFit:
    """lifelines' `KaplanMeierFitter(alpha=1 - level).fit(times, flags)`, its operations in its
    order on numpy arrays (event table, `_additive_estimate` with its `_additive_f` and
    `_additive_var`, `_bounds`), so S(t) and the bands are the same floats (needs n >= 1)."""
    import numpy as np

    from service.stats.distributions import two_sided_normal_quantile

    durations = np.asarray(times, dtype=float)
    observed = np.asarray(flags, dtype=bool)
    # The event table: births at 0 (no late entry), then every distinct follow-up time.
    grid, row = np.unique(np.concatenate(([0.0], durations)), return_inverse=True)
    row = row[1:]
    removed = np.bincount(row, minlength=len(grid)).astype(np.int64)
    deaths = np.bincount(row, weights=observed, minlength=len(grid)).astype(np.int64)
    entered = np.zeros(len(grid), dtype=np.int64)
    entered[0] = len(durations)
    gone_before = np.concatenate(([0], np.cumsum(removed)[:-1]))
    at_risk = np.cumsum(entered) - gone_before
    population = at_risk  # lifelines' at_risk - entrances with the first entrance set to 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_survival = np.cumsum(np.log(population - deaths) - np.log(population))
        unsigned = population.astype("uint64")
        variance = deaths / (unsigned * (unsigned - deaths))
        variance[variance == np.inf] = 0
        cumulative_sq = np.cumsum(variance)
        survival = np.exp(log_survival)
        z = two_sided_normal_quantile(level)
        v = np.log(survival)
        lower = np.exp(-np.exp(np.log(-v) - z * np.sqrt(cumulative_sq) / v))
        upper = np.exp(-np.exp(np.log(-v) + z * np.sqrt(cumulative_sq) / v))
    lower[np.isnan(lower)] = 1.0  # lifelines' fillna(1.0): S = 1, where log(-log) is undefined
    upper[np.isnan(upper)] = 1.0
    return KmFit(grid, at_risk, removed, survival, lower, upper, float(durations.max()))


@dataclass(frozen=True, slots=True)
class LogRank:
    """A two-group log-rank test: the chi-squared statistic (1 df) and its p-value."""

    statistic: float
    p: float


def log_rank(
    times_a: Sequence[float],
    flags_a: Sequence[bool],
    times_b: Sequence[float],
    flags_b: Sequence[bool],
) -> LogRank:
    """The Mantel–Haenszel log-rank test of group A against B, on arrays (not lifelines').

    At each distinct death time t with n at risk (n_A in A) and d deaths (d_A in A):
    U = (Σ d_A − d·n_A/n)² / Σ d·(n_A/n)(1 − n_A/n)(n − d)/(n − 1), the hypergeometric variance
    (its last factor 1 where n = 1), p = P(χ²₁ > U). With no information (no death while both
    groups are at risk, or everyone at risk dying at once) U is 0 and p is 1, as lifelines answers
    it for two non-empty groups (the caller refuses an empty one). Tests compare it with lifelines'
    `logrank_test` and scipy.stats' `logrank` (equal to round-off, 1e-9 relative).
    """
    import numpy as np

    from service.stats.distributions import chi2_sf

    a, died_in_a = _validated(times_a, flags_a)
    b, died_in_b = _validated(times_b, flags_b)
    durations = np.asarray(a + b, dtype=float)
    died = np.asarray(died_in_a + died_in_b, dtype=bool)
    in_a = np.arange(len(durations)) < len(a)
    death_times, deaths = np.unique(durations[died], return_counts=True)
    if len(death_times) == 0:
        return LogRank(0.0, 1.0)
    a_times, a_deaths = np.unique(durations[died & in_a], return_counts=True)
    died_a = np.zeros(len(death_times), dtype=float)
    died_a[np.searchsorted(death_times, a_times)] = a_deaths
    everyone = np.sort(durations)
    only_a = np.sort(durations[in_a])
    n = (len(everyone) - np.searchsorted(everyone, death_times, side="left")).astype(float)
    n_a = (len(only_a) - np.searchsorted(only_a, death_times, side="left")).astype(float)
    d = deaths.astype(float)
    share = n_a / n
    with np.errstate(divide="ignore", invalid="ignore"):
        ties = np.where(n > 1, (n - d) / (n - 1), 1.0)
    observed_minus_expected = float(np.sum(died_a - d * share))
    variance = float(np.sum(d * share * (1 - share) * ties))
    if variance <= 0:
        return LogRank(0.0, 1.0)
    statistic = observed_minus_expected**2 / variance
    return LogRank(statistic, chi2_sf(statistic, 1))


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


def _median(fit: KmFit) -> dict[str, Any]:
    """The median survival time and its CI; a bound the band never crosses is None, with a note."""
    times = fit.times.tolist()
    median = _num(survfit_median(times, fit.survival.tolist()))
    lower, upper = (_num(survfit_median(times, band.tolist())) for band in (fit.lower, fit.upper))
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


def _reached_zero(fit: KmFit) -> bool:
    """The curve ended at 0: everyone had the event, so S(t) = 0 is known for every later t."""
    return float(fit.survival[-1]) == 0.0


def _at_times(fit: KmFit, times: Sequence[float]) -> list[dict[str, Any]]:
    """Survival with CI at each time; past a censored last follow-up the curve says nothing.

    Past the last observation the estimate is only known when that observation ended the curve
    at 0 (an event with no one left at risk): it stays 0, with lifelines' band there, [0, 0].
    """
    last = fit.last_follow_up
    known_after_last = _reached_zero(fit)
    out = []
    for t in times:
        beyond = t > last and not known_after_last
        i = fit.index_at(t)  # lifelines' `asof` / ffill: the step in force at t (None before 0)
        s, lo, hi = (None, None, None) if i < 0 else (fit.survival[i], fit.lower[i], fit.upper[i])
        out.append(
            {
                "days": _num(t),
                "survival": None if beyond else _num(s),
                "ci_lower": None if beyond else _num(lo),
                "ci_upper": None if beyond else _num(hi),
                "at_risk": fit.at_risk_at(t),
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
    fit = km_fit(times, flags, level)
    return {
        **base,
        "estimable": True,
        "reason": None,
        **_median(fit),
        "timepoints": _at_times(fit, points),
        "at_risk": [{"days": _num(t), "at_risk": fit.at_risk_at(t)} for t in [0.0, *points]],
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
