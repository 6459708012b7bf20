"""Cox partial-likelihood fit on numpy arrays: (start, stop] rows, strata, Efron ties.

Why: lifelines' `CoxTimeVaryingFitter` computes each death time's risk set with a mask over every
row (O(deaths × rows)) and splits a stratified table with pandas once per stratum per iteration;
at 10^4 patients the cirAE models took most of the cohort's recomputation. This module computes the
same quantities from sorted cumulative sums (O(rows log rows) per iteration) and otherwise follows
lifelines 0.30 step for step, so the numbers are the ones its fit gives:

* the covariates are centred and scaled by their mean and sample standard deviation (ddof 1) for
  the Newton–Raphson iterations, and the estimates and variance scaled back;
* the Newton step `step_size · (−H)⁻¹g` with lifelines' step-size rule (start 0.95, cut after a
  large step, grown after three shrinking ones); it stops when the step's norm or the Newton
  decrement falls below `precision`, after `max_steps`, when the step size falls to 1e-4, or when
  the log-likelihood nears 0 with a large step (complete separation);
* Efron's approximation for tied deaths, risk sets within each stratum; the variance is the
  inverse of the negative Hessian of the last iteration, as in lifelines;
* the same warnings (`ConvergenceWarning`) for low-variance columns, separation and
  non-convergence, and the same errors (`ConvergenceError`, a ValueError) when a step cannot be
  computed.

`fit_cox_ph` is lifelines' `CoxPHFitter` the same way (right-censored rows, one start), with the
sandwich variance clustered on a label that `cluster_col` gives, its score residuals in O(n) (two
running sums) where lifelines sums over every earlier row for each row (O(n²)).

The arrays also give the Schoenfeld residuals (x minus the Efron-weighted risk-set mean of each
death) at the estimate, for the proportional-hazards check.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

STEP_SIZE = 0.95
PRECISION = 1e-8
MAX_STEPS = 50
LOW_VARIANCE = 1e-4
# both Newton loops' warning when the log-likelihood nears 0 with a large step (lifelines' text)
SEPARATION_WARNING = (
    "The log-likelihood is getting suspiciously close to 0 and the delta is still large. There "
    "may be complete separation in the dataset. This may result in incorrect inference of "
    "coefficients."
)


class ConvergenceWarning(RuntimeWarning):
    """The fit may not have found the maximum (lifelines' warning of the same name and text)."""


class ConvergenceError(ValueError):
    """A Newton step could not be computed (singular or non-finite Hessian)."""


@dataclass(frozen=True, slots=True)
class CoxArrays:
    """A fitted model: estimates and variance on the covariates' own scale, and the fit's facts."""

    params: FloatArray  # log hazard ratios, per column of x
    variance: FloatArray  # model-based variance matrix of `params`
    log_likelihood: float
    steps: int
    converged: bool

    @property
    def standard_errors(self) -> FloatArray:
        return np.sqrt(np.diag(self.variance))


@dataclass(frozen=True, slots=True)
class _Layout:
    """Integer keys that order rows and death times by (stratum, time), fixed for a fit."""

    key_start: IntArray  # per row
    key_stop: IntArray
    by_start: IntArray  # row order by key_start
    by_stop: IntArray
    sorted_start: IntArray  # key_start[by_start]
    sorted_stop: IntArray
    stratum_end: IntArray  # per row: the first key past its stratum
    dead: IntArray  # rows that die, ordered by (stratum, time, row)
    group_of_dead: IntArray  # per dead row: its death-time group
    group_key: IntArray  # per group: its (stratum, time) key, increasing
    group_end: IntArray  # per group: the first key past its stratum
    group_size: IntArray  # deaths per group
    rank_in_group: IntArray  # per dead row: 0, 1, … within its group (Efron's k)


def _layout(
    start: FloatArray, stop: FloatArray, event: BoolArray, strata: IntArray | None
) -> _Layout:
    """Sort once: times become exact integer ranks, offset by stratum so strata never mix."""
    times, codes = np.unique(np.concatenate([start, stop]), return_inverse=True)
    n = len(start)
    width = len(times) + 1
    layer = np.zeros(n, dtype=np.int64) if strata is None else strata.astype(np.int64)
    key_start = layer * width + codes[:n]
    key_stop = layer * width + codes[n:]
    stratum_end = (layer + 1) * width
    by_start = np.argsort(key_start, kind="stable")
    by_stop = np.argsort(key_stop, kind="stable")
    dead = np.flatnonzero(event)
    dead = dead[np.lexsort((dead, key_stop[dead]))]
    group_key, group_of_dead, group_size = np.unique(
        key_stop[dead], return_inverse=True, return_counts=True
    )
    first = np.concatenate([[0], np.cumsum(group_size)[:-1]])
    rank_in_group = np.arange(len(dead)) - first[group_of_dead]
    return _Layout(
        key_start=key_start,
        key_stop=key_stop,
        by_start=by_start,
        by_stop=by_stop,
        sorted_start=key_start[by_start],
        sorted_stop=key_stop[by_stop],
        stratum_end=stratum_end,
        dead=dead,
        group_of_dead=group_of_dead.astype(np.int64),
        group_key=group_key,
        group_end=(group_key // width + 1) * width,
        group_size=group_size.astype(np.int64),
        rank_in_group=rank_in_group.astype(np.int64),
    )


def _prefix(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Cumulative sums along the first axis with a leading zero row."""
    out = np.zeros((len(values) + 1, *values.shape[1:]), dtype=float)
    np.cumsum(values, axis=0, out=out[1:])
    return out


def _range_sum(
    prefix: npt.NDArray[Any], sorted_keys: IntArray, low: IntArray, high: IntArray
) -> npt.NDArray[Any]:
    """Per query: the sum of the values whose key is in [low, high)."""
    a = np.searchsorted(sorted_keys, low, side="left")
    b = np.searchsorted(sorted_keys, high, side="left")
    return prefix[b] - prefix[a]  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class _Efron:
    """Per death (in layout order): Efron's risk-set denominator and numerator at one beta."""

    denominator: FloatArray  # s0 − k/m · t0
    numerator: FloatArray  # s1 − k/m · t1  (deaths × covariates)
    phi: FloatArray  # per row: exp(x·beta)


def _efron(x: FloatArray, beta: FloatArray, lay: _Layout) -> _Efron:
    """Risk-set and tie sums at each death time (within strata), spread over its Efron terms."""
    phi = np.exp(x @ beta)
    px = phi[:, None] * x
    # at risk at t: start < t <= stop, i.e. key_stop in [t, end) minus key_start in [t, end)
    low, high = lay.group_key, lay.group_end
    by_stop = np.column_stack([phi[lay.by_stop], px[lay.by_stop]])
    by_start = np.column_stack([phi[lay.by_start], px[lay.by_start]])
    risk = _range_sum(_prefix(by_stop), lay.sorted_stop, low, high) - _range_sum(
        _prefix(by_start), lay.sorted_start, low, high
    )
    dead = lay.dead
    tie = np.zeros((len(lay.group_key), risk.shape[1]))
    np.add.at(tie, lay.group_of_dead, np.column_stack([phi[dead], px[dead]]))
    g = lay.group_of_dead
    share = (lay.rank_in_group / lay.group_size[g])[:, None]
    per_death = risk[g] - share * tie[g]
    return _Efron(denominator=per_death[:, 0], numerator=per_death[:, 1:], phi=phi)


def _gradients(
    x: FloatArray, beta: FloatArray, lay: _Layout
) -> tuple[FloatArray, FloatArray, float]:
    """Hessian, gradient and log partial likelihood (Efron) at beta."""
    e = _efron(x, beta, lay)
    dead = lay.dead
    inverse = 1.0 / e.denominator
    mean = e.numerator * inverse[:, None]
    gradient = x[dead].sum(axis=0) - mean.sum(axis=0)
    log_lik = float(x[dead].sum(axis=0) @ beta - np.log(e.denominator).sum())
    # Σ_t Σ_k (risk xxᵀ − k/m · tie xxᵀ)/den_k, written per row: each row's phi·x xᵀ times the sum
    # of 1/den over the death terms it is at risk for, less k/m/den over its own death's terms.
    groups = len(lay.group_key)
    per_group = np.bincount(lay.group_of_dead, weights=inverse, minlength=groups)
    cumulative = np.concatenate([[0.0], np.cumsum(per_group)])
    at_risk = (
        cumulative[np.searchsorted(lay.group_key, lay.key_stop, side="right")]
        - cumulative[np.searchsorted(lay.group_key, lay.key_start, side="right")]
    )
    share = lay.rank_in_group / lay.group_size[lay.group_of_dead]
    tied = np.zeros(len(x))
    tied[dead] = np.bincount(lay.group_of_dead, weights=share * inverse, minlength=groups)[
        lay.group_of_dead
    ]
    weight = e.phi * (at_risk - tied)
    a1 = x.T @ (weight[:, None] * x)
    a2 = mean.T @ mean
    return a2 - a1, gradient, log_lik


class _StepSizer:
    """lifelines' step-size rule (utils.StepSizer), so the iterations are the same."""

    def __init__(self, initial: float) -> None:
        self.initial = initial
        self.size = initial
        self.temper_back_up = False
        self.norms: list[float] = []

    def update(self, norm_of_delta: float) -> float:
        self.norms.append(norm_of_delta)
        if self.temper_back_up:
            self.size = min(self.size * 1.3, self.initial)
        if norm_of_delta >= 15.0:
            self.size *= 0.1
            self.temper_back_up = True
        elif 15.0 > norm_of_delta > 5.0:
            self.size *= 0.25
            self.temper_back_up = True
        if len(self.norms) >= 3:
            decreasing = bool(np.all(np.diff(self.norms[-3:]) < 0))
            self.size = min(self.size * 1.3, 1.0) if decreasing else self.size * 0.98
        return self.size


def _check_columns(x: FloatArray, event: BoolArray, names: tuple[str, ...]) -> None:
    """lifelines' pre-fit warnings: low-variance columns, and columns that separate deaths."""

    def low(values: FloatArray) -> BoolArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(np.var(values, axis=0, ddof=1) < LOW_VARIANCE)

    total = low(x)
    if total.any():
        columns = str([n for n, flag in zip(names, total, strict=True) if flag])
        warnings.warn(
            f"Column(s) {columns} have very low variance. This may harm convergence. 1) Are you "
            "using formula's? Did you mean to add '-1' to the end. 2) Try dropping this redundant "
            "column before fitting if convergence fails.\n",
            ConvergenceWarning,
            stacklevel=3,
        )
    either = low(x[event]) | low(x[~event])
    problem = sorted(n for n, e, t in zip(names, either, total, strict=True) if e and not t)
    if problem:
        warnings.warn(
            f"Column {problem[0]} have very low variance when conditioned on death event present "
            "or not. This may harm convergence. This could be a form of 'complete separation'.",
            ConvergenceWarning,
            stacklevel=3,
        )


def _solve(negative_hessian: FloatArray, gradient: FloatArray) -> FloatArray:
    """(−H)⁻¹g as lifelines solves it (a positive-definite solve).

    Non-finite input is a ConvergenceError; a singular matrix is scipy's LinAlgError, itself a
    ValueError, passed on as lifelines passes it on.
    """
    from scipy.linalg import solve

    try:
        return np.asarray(solve(negative_hessian, gradient, assume_a="pos"), dtype=float)
    except ValueError as exc:
        if "infs or NaNs" in str(exc):
            raise ConvergenceError(
                f"hessian or gradient contains nan or inf value(s). Convergence halted. {exc}"
            ) from exc
        raise


def fit_cox(
    x: FloatArray,
    start: FloatArray,
    stop: FloatArray,
    event: BoolArray,
    *,
    strata: npt.NDArray[Any] | None = None,
    names: tuple[str, ...] | None = None,
    precision: float = PRECISION,
    max_steps: int = MAX_STEPS,
    step_size: float = STEP_SIZE,
) -> CoxArrays:
    """Maximise the Efron partial likelihood of (start, stop] rows, within strata.

    `strata` holds any labels (one per row); `names` only label the warnings. Raises a ValueError
    when a step cannot be computed (ConvergenceError, or numpy's LinAlgError for a singular
    Hessian) and for impossible intervals.
    """
    x = np.asarray(x, dtype=float)
    start, stop = np.asarray(start, dtype=float), np.asarray(stop, dtype=float)
    event = np.asarray(event, dtype=bool)
    d = x.shape[1]
    names = names or tuple(f"x{i}" for i in range(d))
    if not (np.isfinite(x).all() and np.isfinite(start).all() and np.isfinite(stop).all()):
        raise ValueError("NaNs or infs in the data")
    if (stop < start).any():
        raise ValueError(
            "There exist values in the `stop_col` column that are less than `start_col`."
        )
    if ((start == stop) & (stop == 0) & event).any():
        raise ValueError("The dataset provided has subjects that die on the day of entry.")
    _check_columns(x, event, names)
    codes = None if strata is None else np.unique(np.asarray(strata), return_inverse=True)[1]
    lay = _layout(start, stop, event, codes)
    mean, std = x.mean(axis=0), x.std(axis=0, ddof=1)
    z = (x - mean) / std

    beta = np.zeros(d)
    sizer = _StepSizer(step_size)
    size = step_size
    steps = 0
    completed = False
    norm_delta = 0.0
    log_lik = 0.0
    hessian = np.zeros((d, d))
    while True:
        steps += 1
        h, g, log_lik = _gradients(z, beta, lay)
        solved = _solve(-h, g)
        delta = size * solved
        if np.isnan(delta).any():
            raise ConvergenceError("delta contains nan value(s). Convergence halted.")
        hessian = h
        norm_delta = float(np.linalg.norm(delta))
        decrement = float(g @ solved) / 2
        stop_now = True
        if norm_delta < precision or decrement < precision:
            completed = True
        elif steps >= max_steps or size <= 0.0001:
            completed = False
        elif abs(log_lik) < 0.0001 and norm_delta > 1.0:
            warnings.warn(SEPARATION_WARNING, ConvergenceWarning, stacklevel=2)
            completed = False
        else:
            stop_now = False
        size = sizer.update(norm_delta)
        beta = beta + delta
        if stop_now:
            break
    if completed and norm_delta > 0.1:
        warnings.warn(
            "Newton-Raphson convergence completed but norm(delta) is still high, "
            f"{norm_delta:.3f}. This may imply non-unique solutions to the maximum likelihood. "
            "Perhaps there is colinearity or complete separation in the dataset?",
            ConvergenceWarning,
            stacklevel=2,
        )
    elif not completed:
        warnings.warn(
            f"Newton-Raphson failed to converge sufficiently in {max_steps} steps.",
            ConvergenceWarning,
            stacklevel=2,
        )
    variance = -np.linalg.inv(hessian) / np.outer(std, std)
    return CoxArrays(
        params=beta / std,
        variance=variance,
        log_likelihood=log_lik,
        steps=steps,
        converged=completed,
    )


def schoenfeld_residuals(
    x: FloatArray,
    start: FloatArray,
    stop: FloatArray,
    event: BoolArray,
    beta: FloatArray,
    strata: npt.NDArray[Any] | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Per death: x − the Efron-weighted risk-set mean at its time (within its stratum), ordered by
    (time, row); and the death times in that order."""
    x = np.asarray(x, dtype=float)
    start, stop = np.asarray(start, dtype=float), np.asarray(stop, dtype=float)
    event = np.asarray(event, dtype=bool)
    codes = None if strata is None else np.unique(np.asarray(strata), return_inverse=True)[1]
    lay = _layout(start, stop, event, codes)
    e = _efron(x, np.asarray(beta, dtype=float), lay)
    terms = e.numerator / e.denominator[:, None]
    groups = len(lay.group_key)
    means = np.zeros((groups, x.shape[1]))
    np.add.at(means, lay.group_of_dead, terms)
    means /= lay.group_size[:, None]
    residuals = x[lay.dead] - means[lay.group_of_dead]
    order = np.lexsort((lay.dead, stop[lay.dead]))
    return residuals[order], stop[lay.dead][order]


# -- right-censored rows, one start: lifelines' CoxPHFitter, with a clustered (sandwich) variance ---


@dataclass(frozen=True, slots=True)
class CoxPhArrays:
    """A CoxPHFitter-style fit: the estimates, their model-based and clustered variances."""

    params: FloatArray
    variance: FloatArray  # model-based: the inverse of the last Newton step's information
    robust_variance: FloatArray | None  # sandwich, clustered; None when no clusters were given
    log_likelihood: float
    steps: int
    converged: bool

    @property
    def standard_errors(self) -> FloatArray:
        return np.sqrt(np.diag(self.variance))

    @property
    def robust_standard_errors(self) -> FloatArray | None:
        return None if self.robust_variance is None else np.sqrt(np.diag(self.robust_variance))


def _solve_ph(negative_hessian: FloatArray, gradient: FloatArray) -> FloatArray:
    """(−H)⁻¹g as CoxPHFitter solves it (no finiteness check; failures are ConvergenceErrors)."""
    from scipy.linalg import LinAlgError, solve

    try:
        return np.asarray(
            solve(negative_hessian, gradient, assume_a="pos", check_finite=False), dtype=float
        )
    except LinAlgError as exc:
        raise ConvergenceError(
            "Convergence halted due to matrix inversion problems. Suspicion is high collinearity."
        ) from exc
    except ValueError as exc:
        if "infs or NaNs" in str(exc):
            raise ConvergenceError(
                f"Hessian or gradient contains nan or inf value(s). Convergence halted. {exc}"
            ) from exc
        raise


def _score_residuals(z: FloatArray, event: BoolArray, beta: FloatArray) -> FloatArray:
    """CoxPHFitter's per-row score residuals (`_compute_score_within_strata`), rows in its order.

    For row i (rows sorted by time, then event), with R_j = Σ_{k≥j} φ_k and M_j the φ-weighted
    mean of x over rows j…n: −φ_i Σ_{j≤i} E_j (x_i − M_j) / R_j + E_i (x_i − M_i). lifelines
    computes the sum over j ≤ i afresh for every row (O(n²)); here two running sums give it in
    O(n). Tied times are not grouped, exactly as lifelines does (its TODO: "doesn't handle ties").
    """
    phi = np.exp(z @ beta)
    risk = np.cumsum(phi[::-1])[::-1]
    risk_x = np.cumsum((z * phi[:, None])[::-1], axis=0)[::-1]
    mean = risk_x / risk[:, None]
    weight = event / risk
    running = np.cumsum(weight)
    running_mean = np.cumsum(weight[:, None] * mean, axis=0)
    residuals: FloatArray = -phi[:, None] * (z * running[:, None] - running_mean) + event[
        :, None
    ] * (z - mean)
    return residuals


def fit_cox_ph(
    x: FloatArray,
    time: FloatArray,
    event: BoolArray,
    *,
    clusters: npt.NDArray[Any] | None = None,
    names: tuple[str, ...] | None = None,
    precision: float = 1e-7,
    r_precision: float = 1e-9,
    max_steps: int = 500,
    step_size: float = STEP_SIZE,
) -> CoxPhArrays:
    """lifelines 0.30's `CoxPHFitter().fit(...)` (Efron ties, no strata, no weights) on arrays.

    Step for step: rows sorted by (time, event), stably; covariates centred and scaled by mean and
    sample SD; Newton steps `step_size · (−H)⁻¹g` applied at the start of the next iteration, with
    its step-size rule; it stops when the step's norm, the relative change of the log-likelihood or
    the Newton decrement is small, after `max_steps`, or when the step size falls to 1e-5; the
    estimate is the last point the gradient was computed at. `clusters` (one label per row) give the
    sandwich variance lifelines computes with `cluster_col`: its score residuals (O(n) here instead
    of O(n²)) times the model variance, summed per cluster, D'D. Raises ConvergenceError (a
    ValueError) when a step cannot be computed.
    """
    x = np.asarray(x, dtype=float)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    if not (np.isfinite(x).all() and np.isfinite(time).all()):
        raise ValueError("NaNs or infs in the data")
    if (time <= 0).any():
        raise ValueError("durations must be positive")
    order = np.lexsort((event.astype(np.int64), time))
    x, time, event = x[order], time[order], event[order]
    d = x.shape[1]
    names = names or tuple(f"x{i}" for i in range(d))
    _check_columns(x, event, names)
    lay = _layout(np.zeros_like(time), time, event, None)
    mean, std = x.mean(axis=0), x.std(axis=0, ddof=1)
    z = (x - mean) / std

    beta = np.zeros(d)
    delta = np.zeros(d)
    sizer = _StepSizer(step_size)
    size = step_size
    steps = 0
    log_lik, previous = 0.0, 0.0
    norm_delta = 0.0
    hessian = np.zeros((d, d))
    while True:
        beta = beta + size * delta
        steps += 1
        h, g, log_lik = _gradients(z, beta, lay)
        delta = _solve_ph(-h, g)
        if np.isnan(delta).any():
            raise ConvergenceError("delta contains nan value(s). Convergence halted.")
        hessian = h
        norm_delta = float(np.linalg.norm(delta))
        decrement = float(g @ delta) / 2
        small_change = previous != 0 and abs(log_lik - previous) / (-previous) < r_precision
        stop_now, completed = True, True
        if norm_delta < precision or small_change or decrement < precision:
            pass
        elif steps >= max_steps or size <= 0.00001:
            completed = False
        elif abs(log_lik) < 0.0001 and norm_delta > 1.0:
            warnings.warn(SEPARATION_WARNING, ConvergenceWarning, stacklevel=2)
            completed = False
        else:
            stop_now = False
        previous = log_lik
        size = sizer.update(norm_delta)
        if stop_now:
            break
    if completed and norm_delta > 0.1:
        warnings.warn(
            "Newton-Raphson convergence completed successfully but norm(delta) is still high, "
            f"{norm_delta:.3f}. This may imply non-unique solutions to the maximum likelihood. "
            "Perhaps there is collinearity or complete separation in the dataset?",
            ConvergenceWarning,
            stacklevel=2,
        )
    elif not completed:
        warnings.warn(
            "Newton-Raphson failed to converge sufficiently.", ConvergenceWarning, stacklevel=2
        )
    variance = -np.linalg.inv(hessian) / np.outer(std, std)
    robust = None
    if clusters is not None:
        labels = np.asarray(clusters)[order]
        residuals = _score_residuals(z, event, beta) @ (variance * std[:, None])
        codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
        per_cluster = np.zeros((int(codes.max()) + 1 if len(codes) else 0, d))
        np.add.at(per_cluster, codes, residuals)
        robust = per_cluster.T @ per_cluster
    return CoxPhArrays(
        params=beta / std,
        variance=variance,
        robust_variance=robust,
        log_likelihood=log_lik,
        steps=steps,
        converged=completed,
    )
