"""Normal and chi-squared tails and quantiles from `scipy.special`, not scipy.stats.

Why: importing scipy.stats costs a process ~40 MB it keeps for life and a second or more of its first
cohort computation (issue 19, issue 17's idle server). scipy.stats' `norm.ppf`, `norm.sf` and
`chi2.sf` are these `scipy.special` functions (`ndtri`, `ndtr` of −x, `chdtrc`) behind argument
checks, so the floats are the same ones (tests compare them bit for bit).
"""

from __future__ import annotations

import math


def normal_quantile(q: float) -> float:
    """The standard normal quantile: scipy.stats' `norm.ppf(q)`."""
    from scipy.special import ndtri

    return float(ndtri(q))


def two_sided_normal_quantile(level: float) -> float:
    """The z of a two-sided confidence interval (1.959964 for 95 %)."""
    return normal_quantile(1 - (1 - level) / 2)


def normal_sf(x: float) -> float:
    """The standard normal upper tail P(Z > x): scipy.stats' `norm.sf(x)`."""
    from scipy.special import ndtr

    return float(ndtr(-x))


def chi2_sf(x: float, df: int) -> float:
    """The chi-squared upper tail P(X > x) with `df` degrees of freedom: `chi2.sf(x, df)`."""
    from scipy.special import chdtrc

    if not df > 0:  # no such distribution: scipy.stats answers NaN (chdtrc would not)
        return math.nan
    if x < 0:  # below the support, as scipy.stats answers it (chdtrc itself gives NaN)
        return 1.0
    return float(chdtrc(df, x))
