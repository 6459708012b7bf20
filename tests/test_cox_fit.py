"""The Cox fit on arrays (service.stats.cox_fit): known answers from R's survival package and
Therneau & Grambsch, and the same numbers as lifelines' CoxTimeVaryingFitter on random data.

Known answers: the two small data sets of Therneau & Grambsch, "Modeling Survival Data" (2000),
appendix E, with Efron ties, as R's survival package checks them in its own test suite
(tests/book2.R and tests/book4.R, with the output printed in book4.Rout.save): closed forms of the
score and information in r = exp(beta), and R's printed coefficient, standard error and Schoenfeld
residuals.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, CoxTimeVaryingFitter

from service.stats.cox_fit import (
    ConvergenceError,
    ConvergenceWarning,
    fit_cox,
    fit_cox_ph,
    schoenfeld_residuals,
)

TIGHT = 1e-10

# -- Therneau & Grambsch appendix E -----------------------------------------------------------------

# Data set 1 (right-censored; the subject with a missing status left out): deaths at 1, 6, 6, 9.
TG1_TIME = [9.0, 1.0, 1.0, 6.0, 6.0, 8.0]
TG1_STATUS = [True, True, False, True, True, False]
TG1_X = [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]

# Data set 2 ((start, stop] rows): deaths at 2, 3, 6, 7, 8, 9, 9.
TG2_START = [1.0, 2.0, 5.0, 2.0, 1.0, 7.0, 3.0, 4.0, 8.0, 8.0]
TG2_STOP = [2.0, 3.0, 6.0, 7.0, 8.0, 9.0, 9.0, 9.0, 14.0, 17.0]
TG2_EVENT = [True, True, True, True, True, True, True, False, False, False]
TG2_X = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def _bisect(f, low: float, high: float) -> float:  # type: ignore[no-untyped-def]
    """The root of a decreasing function between low and high (to machine precision)."""
    for _ in range(200):
        mid = (low + high) / 2
        if f(mid) > 0:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _tg1_score(beta: float) -> float:
    """Efron score of data set 1 (book2.R: u = (30 + 23r − r³) / ((r+1)(r+3)(r+5)))."""
    r = math.exp(beta)
    return (30 + 23 * r - r**3) / ((r + 1) * (r + 3) * (r + 5))


def _tg1_information(beta: float) -> float:
    """Efron information of data set 1 (book2.R: Σ p − p² over r/(r+1), r/(r+5), r/(r+3))."""
    r = math.exp(beta)
    return sum(p - p * p for p in (r / (r + 1), r / (r + 5), r / (r + 3)))


def _tg2_score(beta: float) -> float:
    """Efron score of data set 2 (book4.R)."""
    r = math.exp(beta)
    return (
        1 / (r + 1)
        + 1 / (3 * r + 1)
        + 2 * (1 / (3 * r + 2) + 1 / (2 * r + 2))
        - (r / (r + 2) + 3 * r / (3 * r + 2) + 3 * r / (3 * r + 1))
    )


def _tg2_log_likelihood(beta: float) -> float:
    """Efron log partial likelihood of data set 2 (book4.R)."""
    r = math.exp(beta)
    return 4 * beta - (
        math.log(r + 1)
        + math.log(r + 2)
        + 2 * math.log(3 * r + 2)
        + 2 * math.log(3 * r + 1)
        + math.log(2 * r + 2)
    )


def test_therneau_grambsch_data_set_1_efron() -> None:
    """beta solves the closed-form score (R: 1.676857); the variance is 1 / the information."""
    fit = fit_cox(
        np.array(TG1_X)[:, None],
        np.zeros(6),
        np.array(TG1_TIME),
        np.array(TG1_STATUS),
        precision=1e-12,
    )
    root = _bisect(_tg1_score, 0.0, 5.0)
    assert fit.converged is True
    assert fit.params[0] == pytest.approx(root, abs=1e-9)
    assert round(float(fit.params[0]), 6) == 1.676857  # R survival, tests/book2.R
    assert fit.standard_errors[0] == pytest.approx(1 / math.sqrt(_tg1_information(root)), rel=1e-9)


def test_therneau_grambsch_data_set_2_counting_process_efron() -> None:
    """(start, stop] rows with a tie at 9: R's coefficient, standard error and Schoenfeld
    residuals (book4.Rout.save), and the closed-form score and log-likelihood."""
    x = np.array(TG2_X)[:, None]
    start, stop, event = np.array(TG2_START), np.array(TG2_STOP), np.array(TG2_EVENT)
    fit = fit_cox(x, start, stop, event, precision=1e-12)
    root = _bisect(_tg2_score, -3.0, 3.0)
    assert fit.params[0] == pytest.approx(root, abs=1e-9)
    assert fit.log_likelihood == pytest.approx(_tg2_log_likelihood(root), abs=1e-12)
    # R prints the linear predictor beta·(x − 0.5) = ∓0.01055260 with se.fit 0.3975884 = se/2
    assert fit.params[0] == pytest.approx(-2 * 0.01055260, abs=2e-8)
    assert fit.standard_errors[0] == pytest.approx(2 * 0.3975884, abs=2e-7)
    residuals, times = schoenfeld_residuals(x, start, stop, event, fit.params)
    assert times.tolist() == [2.0, 3.0, 6.0, 7.0, 8.0, 9.0, 9.0]
    r_schoenfeld = [0.5052761, -0.3286599, -0.5949242, 0.2539781, -0.7460219, 0.4551759, 0.4551759]
    assert residuals[:, 0] == pytest.approx(r_schoenfeld, abs=1e-7)


def test_one_stratum_per_copy_keeps_the_estimate_and_halves_the_variance() -> None:
    """Data set 2 twice, each copy its own stratum: the same beta, twice the information."""
    x = np.array(TG2_X * 2)[:, None]
    start, stop = np.array(TG2_START * 2), np.array(TG2_STOP * 2)
    event = np.array(TG2_EVENT * 2)
    single = fit_cox(np.array(TG2_X)[:, None], start[:10], stop[:10], event[:10], precision=1e-12)
    double = fit_cox(
        x, start, stop, event, strata=np.array(["a"] * 10 + ["b"] * 10), precision=1e-12
    )
    assert double.params[0] == pytest.approx(single.params[0], abs=1e-10)
    assert double.variance[0, 0] == pytest.approx(single.variance[0, 0] / 2, rel=1e-9)


# -- the same numbers as lifelines ------------------------------------------------------------------


def _random_table(seed: int, subjects: int = 240) -> pd.DataFrame:
    """Whole-day times (many ties), a time-varying switch splitting follow-up, fixed covariates, a
    stratum of four subjects; several rows per subject (the subject is the cluster of its rows)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(subjects):
        end = float(rng.integers(1, 50))
        switch = float(rng.integers(0, 70))
        age = float(rng.normal(60, 10))
        level = int(rng.integers(0, 3))
        died = bool(rng.random() < 0.6)
        bounds = [0.0, switch, end] if 0 < switch < end else [0.0, end]
        for k, (a, b) in enumerate(itertools.pairwise(bounds)):
            rows.append(
                {
                    "id": f"p{i}",
                    "start": a,
                    "stop": b,
                    "event": int(died and k == len(bounds) - 2),
                    "stratum": f"s{i // 4}",
                    "exposed": float(0 < switch <= a),
                    "age": age,
                    "level=1": float(level == 1),
                    "level=2": float(level == 2),
                }
            )
    return pd.DataFrame(rows)


TERMS = ["exposed", "age", "level=1", "level=2"]


@pytest.mark.parametrize("stratified", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_estimates_and_variance_as_lifelines(seed: int, stratified: bool) -> None:
    """Ties, strata, a time-varying covariate and several rows per subject: every estimate, the
    variance matrix and the log-likelihood equal lifelines' to 1e-9 relative."""
    table = _random_table(seed)
    assert table["id"].nunique() == 240
    assert len(table) > 240  # some subjects have two rows
    assert table.loc[table["event"] == 1, "stop"].duplicated().any()  # tied deaths
    layout = ["id", "start", "stop", "event", *(["stratum"] if stratified else [])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = CoxTimeVaryingFitter().fit(
            table[[*layout, *TERMS]],
            event_col="event",
            id_col="id",
            strata=["stratum"] if stratified else None,
            fit_options={"precision": TIGHT},
        )
    fit = fit_cox(
        table[TERMS].to_numpy(dtype=float),
        table["start"].to_numpy(dtype=float),
        table["stop"].to_numpy(dtype=float),
        table["event"].to_numpy(dtype=bool),
        strata=table["stratum"].to_numpy() if stratified else None,
        precision=TIGHT,
    )
    assert fit.converged is True
    np.testing.assert_allclose(fit.params, reference.params_[TERMS].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(
        fit.standard_errors, reference.standard_errors_[TERMS].to_numpy(), rtol=1e-9
    )
    np.testing.assert_allclose(
        fit.variance,
        reference.variance_matrix_.to_numpy(dtype=float),  # rows and columns in TERMS order
        rtol=1e-8,
        atol=1e-15,
    )
    assert fit.log_likelihood == pytest.approx(reference.log_likelihood_, rel=1e-12)


def test_separation_warns_as_lifelines_does() -> None:
    """Every exposed subject dies first: no finite maximum; the fit says so with a warning."""
    exposed = [1.0] * 5 + [0.0] * 10
    stop = [float(t) for t in range(1, 16)]
    event = [True] * 5 + [False] * 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_cox(np.array(exposed)[:, None], np.zeros(15), np.array(stop), np.array(event))
    assert fit.params[0] > 5
    assert any(issubclass(w.category, ConvergenceWarning) for w in caught)


def test_collinear_columns_cannot_be_solved() -> None:
    """Two identical columns: the Hessian is singular, a LinAlgError (a ValueError, as in lifelines)."""
    x = np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    event = np.array([True, True, False, True, False, True])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(np.linalg.LinAlgError, match="singular"):
            fit_cox(x, np.zeros(6), np.arange(1.0, 7.0), event)
    assert issubclass(ConvergenceError, ValueError)
    assert issubclass(np.linalg.LinAlgError, ValueError)


def test_impossible_intervals_are_refused() -> None:
    """A stop before its start, or a death at time 0 on a (0, 0] row, is a ValueError."""
    x = np.array([[1.0], [0.0]])
    with pytest.raises(ValueError, match="less than"):
        fit_cox(x, np.array([2.0, 0.0]), np.array([1.0, 3.0]), np.array([True, True]))
    with pytest.raises(ValueError, match="die on the day of entry"):
        fit_cox(x, np.array([0.0, 0.0]), np.array([0.0, 3.0]), np.array([True, True]))


# -- right-censored rows: lifelines' CoxPHFitter, with the variance clustered on matched sets ------


def _right_censored(seed: int, n: int, d: int) -> pd.DataFrame:
    """Integer times (many ties), a binary first column, clusters of about four rows."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.normal(size=(n, d)), columns=[f"c{i}" for i in range(d)])
    table["c0"] = rng.integers(0, 2, n).astype(float)
    table["time"] = rng.integers(1, 60, n).astype(float)
    table["event"] = (rng.random(n) < 0.6).astype(int)
    table["set"] = rng.integers(0, max(n // 4, 1), n)
    return table


@pytest.mark.parametrize(("seed", "n", "d"), [(0, 40, 1), (1, 300, 1), (2, 1000, 3), (3, 90, 2)])
def test_coxph_same_estimates_and_clustered_variance_as_lifelines(
    seed: int, n: int, d: int
) -> None:
    """Tied times, default stopping rules: the estimates, the model-based variance, the sandwich
    variance clustered on sets and the log-likelihood equal lifelines' CoxPHFitter's to 1e-9."""
    table = _right_censored(seed, n, d)
    columns = [f"c{i}" for i in range(d)]
    assert table.loc[table["event"] == 1, "time"].duplicated().any()  # tied deaths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = CoxPHFitter().fit(table[[*columns, "time", "event"]], "time", "event")
        robust = CoxPHFitter().fit(table, "time", "event", cluster_col="set")
        fit = fit_cox_ph(
            table[columns].to_numpy(dtype=float),
            table["time"].to_numpy(dtype=float),
            table["event"].to_numpy(dtype=bool),
            clusters=table["set"].to_numpy(),
        )
    assert fit.converged is True
    np.testing.assert_allclose(fit.params, plain.params_[columns].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(
        fit.variance, plain.variance_matrix_.to_numpy(dtype=float), rtol=1e-9, atol=1e-15
    )
    assert fit.robust_standard_errors is not None
    np.testing.assert_allclose(
        fit.robust_standard_errors, robust.standard_errors_[columns].to_numpy(), rtol=1e-9
    )
    assert fit.log_likelihood == pytest.approx(plain.log_likelihood_, rel=1e-12)


def test_coxph_clustered_variance_by_hand() -> None:
    """Three rows, no ties, one cluster per row: the sandwich is Σ (score residual × variance)²,
    each residual written out from its definition (Lin & Wei 1989)."""
    x, time, event = np.array([1.0, 0.0, 1.0]), np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one censored row: its variance has no degree of freedom
        fit = fit_cox_ph(
            x[:, None], time, event.astype(bool), clusters=np.arange(3), precision=1e-12
        )
    beta = float(fit.params[0])
    phi = np.exp(beta * x)
    at_risk = [range(i, 3) for i in range(3)]
    mean = [sum(phi[k] * x[k] for k in r) / sum(phi[k] for k in r) for r in at_risk]
    total = [sum(phi[k] for k in r) for r in at_risk]
    residuals = [
        event[i] * (x[i] - mean[i])
        - phi[i] * sum(event[j] * (x[i] - mean[j]) / total[j] for j in range(i + 1))
        for i in range(3)
    ]
    variance = float(fit.variance[0, 0])
    expected = math.sqrt(sum((r * variance) ** 2 for r in residuals))
    assert fit.robust_standard_errors is not None
    assert float(fit.robust_standard_errors[0]) == pytest.approx(expected, rel=1e-9)
    # the score at the estimate is zero: the residuals sum to it
    assert sum(residuals) == pytest.approx(0.0, abs=1e-9)


def test_coxph_therneau_grambsch_data_set_1() -> None:
    """Right-censored data set 1 of appendix E: R's coefficient 1.676857, the closed-form score's
    root, and the variance 1 / the information."""
    fit = fit_cox_ph(
        np.array(TG1_X)[:, None],
        np.array(TG1_TIME),
        np.array(TG1_STATUS),
        precision=1e-12,
        r_precision=0.0,
    )
    assert float(fit.params[0]) == pytest.approx(_bisect(_tg1_score, -5.0, 5.0), abs=1e-9)
    assert round(float(fit.params[0]), 6) == 1.676857  # R survival, tests/book2.R
    root = float(fit.params[0])
    assert float(fit.standard_errors[0]) == pytest.approx(
        1 / math.sqrt(_tg1_information(root)), rel=1e-9
    )
    assert fit.robust_variance is None
