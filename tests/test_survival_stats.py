"""Exact binomial CIs and Kaplan–Meier summaries: textbook formulas and hand-computed answers."""

from __future__ import annotations

import json
import math
import random
from statistics import NormalDist

import numpy as np
import pytest
from lifelines import KaplanMeierFitter
from lifelines.utils import median_survival_times
from scipy.stats import beta, binomtest

from service.stats import survival
from service.stats.survival import (
    DAYS_PER_MONTH,
    DECIMALS,
    at_risk,
    clopper_pearson,
    kaplan_meier,
    km_fit,
    km_fitter,
    km_in_months,
    proportion_ci,
)

TOL = 0.5 * 10**-DECIMALS  # outputs are rounded to DECIMALS places


def _clopper_pearson(k: int, n: int, level: float) -> tuple[float, float]:
    """The textbook definition: beta quantiles, with the bound pinned at 0 / 1 at the edges."""
    alpha = 1 - level
    lower = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    upper = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lower, upper


@pytest.mark.parametrize(
    ("k", "n", "level"),
    [(0, 5, 0.95), (5, 5, 0.95), (1, 5, 0.95), (3, 12, 0.95), (7, 21, 0.9), (20, 21, 0.99)],
)
def test_clopper_pearson_matches_the_beta_quantile_definition(k: int, n: int, level: float) -> None:
    """Exact CI bounds equal the beta-quantile formula, including 0/n and n/n."""
    out = proportion_ci(k, n, level)
    lower, upper = _clopper_pearson(k, n, level)
    assert (out["successes"], out["n"], out["level"], out["method"]) == (
        k,
        n,
        level,
        "clopper-pearson",
    )
    assert out["rate"] == pytest.approx(k / n, abs=TOL)
    assert out["ci_lower"] == pytest.approx(lower, abs=TOL)
    assert out["ci_upper"] == pytest.approx(upper, abs=TOL)


def test_clopper_pearson_closed_forms_at_the_edges() -> None:
    """0/10: upper = 1 − 0.025^(1/10) = 0.3085; 10/10: lower = 0.025^(1/10) = 0.6915."""
    none, all_ = proportion_ci(0, 10), proportion_ci(10, 10)
    assert (none["rate"], none["ci_lower"], none["ci_upper"]) == (0.0, 0.0, 0.3085)
    assert (all_["rate"], all_["ci_lower"], all_["ci_upper"]) == (1.0, 0.6915, 1.0)


def test_proportion_with_no_subjects_says_why() -> None:
    """n = 0: no rate and no CI, a reason instead of a division by zero."""
    out = proportion_ci(0, 0)
    assert (out["rate"], out["ci_lower"], out["ci_upper"]) == (None, None, None)
    assert out["reason"] == "no subjects"


@pytest.mark.parametrize(("k", "n"), [(-1, 3), (4, 3), (0, -1)])
def test_proportion_rejects_impossible_counts(k: int, n: int) -> None:
    """More successes than subjects (or negatives) is a caller bug."""
    with pytest.raises(ValueError, match="successes"):
        proportion_ci(k, n)


# -- Kaplan–Meier ------------------------------------------------------------------------------------

# Hand-computed product-limit case (censoring at a tied time comes after the event):
#   t=2: 5 at risk, 1 event  -> S = 4/5           = 0.8
#   t=3: 4 at risk, 1 event (+1 censored at 3) -> S = 0.8 * 3/4 = 0.6
#   t=5: 2 at risk (5 and 8), 1 event -> S = 0.6 * 1/2 = 0.3
#   t=8: censored, S stays 0.3. Median = first t with S <= 0.5 = 5.
#   At risk (follow-up >= t): t=0 -> 5, t=4 -> 2, t=6 -> 1, t=9 -> 0 (beyond follow-up).
HAND_T = [2.0, 3.0, 3.0, 5.0, 8.0]
HAND_E = [True, True, False, True, False]


def test_km_known_answer_by_hand() -> None:
    """The product-limit estimate, median and numbers at risk of the hand-computed case."""
    out = kaplan_meier(HAND_T, HAND_E, timepoints_days=[4, 6, 9])
    assert (out["n"], out["events"], out["censored"], out["estimable"]) == (5, 3, 2, True)
    assert (out["median_days"], out["median_reached"]) == (5.0, True)
    assert [(p["days"], p["survival"], p["at_risk"], p["reason"]) for p in out["timepoints"]] == [
        (4.0, 0.6, 2, None),
        (6.0, 0.3, 1, None),
        (9.0, None, 0, "beyond follow-up"),
    ]
    assert out["timepoints"][2]["ci_lower"] is None
    assert out["at_risk"] == [
        {"days": 0.0, "at_risk": 5},
        {"days": 4.0, "at_risk": 2},
        {"days": 6.0, "at_risk": 1},
        {"days": 9.0, "at_risk": 0},
    ]


def test_km_agrees_with_lifelines_fitted_in_the_test() -> None:
    """Median, its CI and landmark survival with CI agree with lifelines on the same data."""
    durations = [5, 12, 30, 30, 41, 60, 75, 90, 120, 150, 200, 240]
    events = [True, False, True, True, False, True, False, True, True, True, True, False]
    times = [10.0, 45.0, 100.0, 230.0]
    out = kaplan_meier(durations, events, level=0.9, timepoints_days=times, label="efs")
    reference = KaplanMeierFitter(alpha=0.1).fit(durations, events)
    ci = median_survival_times(reference.confidence_interval_).iloc[0].tolist()
    assert out["median_days"] == pytest.approx(reference.median_survival_time_)
    assert out["median_ci"]["lower_days"] == pytest.approx(ci[0])
    assert out["median_ci"]["upper_days"] == pytest.approx(ci[1])
    assert out["median_ci"]["note"] is None
    for point, t in zip(out["timepoints"], times, strict=True):
        s = reference.survival_function_.loc[:t].iloc[-1, 0]  # right-continuous step
        band = reference.confidence_interval_.loc[:t].iloc[-1]
        assert point["survival"] == pytest.approx(s, abs=TOL)
        assert point["ci_lower"] == pytest.approx(band.iloc[0], abs=TOL)
        assert point["ci_upper"] == pytest.approx(band.iloc[1], abs=TOL)
        assert point["at_risk"] == sum(1 for d in durations if d >= t)


def test_km_median_not_reached() -> None:
    """One early event in four: S stays at 0.75, so no median and the upper bound is unknown."""
    out = kaplan_meier([10, 20, 30, 40], [True, False, False, False], timepoints_days=[25])
    assert (out["median_days"], out["median_reached"]) == (None, False)
    assert out["median_ci"]["upper_days"] is None
    assert "upper" in out["median_ci"]["note"]
    assert out["timepoints"][0]["survival"] == 0.75
    json.dumps(out, allow_nan=False)


def test_km_all_censored() -> None:
    """No events: survival 1 throughout, no median, neither median bound."""
    out = kaplan_meier([3, 7, 9], [False, False, False], timepoints_days=[5])
    assert (out["events"], out["censored"], out["median_days"]) == (0, 3, None)
    assert (out["median_ci"]["lower_days"], out["median_ci"]["upper_days"]) == (None, None)
    assert out["median_ci"]["note"].startswith("lower and upper")
    point = out["timepoints"][0]
    assert (point["survival"], point["ci_lower"], point["ci_upper"], point["at_risk"]) == (
        1.0,
        1.0,
        1.0,
        2,
    )
    json.dumps(out, allow_nan=False)


def test_km_all_events_at_once_has_no_nan() -> None:
    """Survival falling to 0 is where variance formulas give NaN; the output must stay JSON."""
    out = kaplan_meier([4, 4], [True, True], timepoints_days=[2, 4])
    assert [p["survival"] for p in out["timepoints"]] == [1.0, 0.0]
    assert out["median_days"] == 4.0
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize(
    ("durations", "events", "later"),
    [
        # one subject, event at 10: S = 0 from day 10 on
        ([10.0], [True], 365.25),
        # 2 E, 5 C, 9 E: S = 2/3 after 2, then 0 at 9 (1 at risk, 1 event)
        ([2.0, 5.0, 9.0], [True, False, True], 20.0),
    ],
)
def test_km_landmark_after_the_curve_reached_zero_is_zero(
    durations: list[float], events: list[bool], later: float
) -> None:
    """Once everyone has had the event S stays 0: a later landmark is 0 with CI [0, 0]."""
    point = kaplan_meier(durations, events, timepoints_days=[later])["timepoints"][0]
    assert (point["survival"], point["ci_lower"], point["ci_upper"]) == (0.0, 0.0, 0.0)
    assert (point["at_risk"], point["reason"]) == (0, None)


def test_km_12_month_survival_of_one_early_death_is_zero() -> None:
    """durations [10], events [True]: 12-month survival is 0.0, not None."""
    out = km_in_months("os", [10.0], [True], months=[12])
    assert out["timepoints"] == [
        {
            "months": 12,
            "days": 365.25,
            "survival": 0.0,
            "ci_lower": 0.0,
            "ci_upper": 0.0,
            "at_risk": 0,
            "reason": None,
        }
    ]
    assert (out["median_days"], out["days_per_month"]) == (10.0, DAYS_PER_MONTH)


@pytest.mark.parametrize(
    ("durations", "events"),
    [
        ([10.0], [False]),  # last observation censored
        ([5.0, 5.0], [True, False]),  # event and censoring tied last: S = 0.5 stays above 0
    ],
)
def test_km_landmark_after_a_censored_last_observation_is_beyond_follow_up(
    durations: list[float], events: list[bool]
) -> None:
    """Past a censored last follow-up the curve says nothing: None with the reason."""
    point = kaplan_meier(durations, events, timepoints_days=[30])["timepoints"][0]
    assert (point["survival"], point["ci_lower"], point["ci_upper"]) == (None, None, None)
    assert (point["at_risk"], point["reason"]) == (0, "beyond follow-up")


def test_km_without_subjects_is_not_estimable() -> None:
    """n = 0 gives the same keys, all empty, and a reason; never an exception or NaN."""
    out = kaplan_meier([], [], timepoints_days=[365.25])
    assert (out["n"], out["estimable"], out["median_days"], out["median_reached"]) == (
        0,
        False,
        None,
        False,
    )
    assert out["reason"] == "no subjects: not estimable"
    assert out["timepoints"][0]["survival"] is None
    assert out["at_risk"] == [{"days": 0.0, "at_risk": 0}, {"days": 365.25, "at_risk": 0}]
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize(
    ("durations", "events", "message"),
    [
        ([1.0, 2.0], [True], "2 durations but 1"),
        ([-1.0], [True], ">= 0"),
        ([math.nan], [True], ">= 0"),
    ],
)
def test_km_rejects_bad_input(durations: list[float], events: list[bool], message: str) -> None:
    """Mismatched lengths, negative or NaN times fail loudly rather than as NaN output."""
    with pytest.raises(ValueError, match=message):
        kaplan_meier(durations, events)


def test_fitter_and_at_risk_for_plots() -> None:
    """The shared fitter carries label and level; at_risk counts follow-up >= t."""
    fitter = km_fitter(HAND_T, HAND_E, "efs", 0.9)
    assert fitter.survival_function_.columns.tolist() == ["efs"]
    assert fitter.alpha == pytest.approx(0.1)
    assert [at_risk(fitter, t) for t in (0, 2, 2.5, 3, 3.5, 8, 8.5)] == [5, 5, 4, 4, 2, 1, 0]


# -- the estimator on arrays (issue 19: no lifelines or scipy.stats in a cohort recomputation) ---------


def _textbook_km(
    durations: list[float], events: list[bool], level: float
) -> list[tuple[float, int, float, float, float]]:
    """Product-limit S(t), Greenwood's variance and the log(-log) band, written from the formulas
    (Kalbfleisch & Prentice; R survfit's conf.type = "log-log"): per event time (t, at risk, S,
    lower, upper). Where S = 0 the band is [0, 0]."""
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    out = []
    s, greenwood = 1.0, 0.0
    for t in sorted({d for d, e in zip(durations, events, strict=True) if e}):
        n = sum(1 for d in durations if d >= t)
        d = sum(1 for x, e in zip(durations, events, strict=True) if e and x == t)
        s *= (n - d) / n
        if s == 0:
            out.append((t, n, 0.0, 0.0, 0.0))
            continue
        greenwood += d / (n * (n - d))
        se = math.sqrt(greenwood) / abs(math.log(s))
        centre = math.log(-math.log(s))
        lower = math.exp(-math.exp(centre + z * se))
        upper = math.exp(-math.exp(centre - z * se))
        out.append((t, n, s, lower, upper))
    return out


@pytest.mark.parametrize(
    ("durations", "events", "level"),
    [
        # ties among events (two at 1, two at 3) and a censoring tied with events at 3
        ([1, 1, 2, 3, 3, 3, 4, 6], [True, True, False, True, True, False, True, False], 0.95),
        # the hand case above: censoring at an event time (3), last observation censored
        (HAND_T, HAND_E, 0.95),
        # every subject has the event (ties at 2): S falls to 0 at 4
        ([1, 2, 2, 4], [True, True, True, True], 0.9),
        # an event at time 0 (Day 1 itself), then censorings and events
        ([0, 0, 5, 7, 7, 9, 12], [True, False, True, False, True, True, False], 0.99),
    ],
)
def test_km_landmarks_match_the_textbook_formulas(
    durations: list[float], events: list[bool], level: float
) -> None:
    """S(t), its log(-log) Greenwood band and the numbers at risk at each event time (and just
    after it) equal the formulas computed independently here, to the printed precision."""
    expected = _textbook_km([float(d) for d in durations], events, level)
    times = [t for t, *_ in expected]
    out = kaplan_meier(durations, events, level=level, timepoints_days=times)
    for (t, n, s, lower, upper), point in zip(expected, out["timepoints"], strict=True):
        assert point["days"] == t
        assert point["survival"] == pytest.approx(s, abs=TOL)
        assert point["ci_lower"] == pytest.approx(lower, abs=TOL)
        assert point["ci_upper"] == pytest.approx(upper, abs=TOL)
        assert point["at_risk"] == n


def test_km_hand_case_band_at_day_3() -> None:
    """At t = 3 of the hand case: S = 0.6, Greenwood Σ d/(n(n−d)) = 1/20 + 1/12 = 2/15, so the
    log(-log) band is exp(−exp(log(−log 0.6) ± 1.96·sqrt(2/15)/|log 0.6|)) = [0.1257, 0.8818]."""
    point = kaplan_meier(HAND_T, HAND_E, timepoints_days=[3])["timepoints"][0]
    assert (point["survival"], point["ci_lower"], point["ci_upper"]) == (0.6, 0.1257, 0.8818)


def test_km_zero_event_group_and_all_event_group() -> None:
    """No events: S = 1 with band [1, 1] to the last follow-up; every subject an event: S = 0 from
    the last event on, with band [0, 0], and a median at the first time S <= 0.5."""
    none = kaplan_meier([2, 4, 4, 9], [False] * 4, timepoints_days=[0, 4, 9])
    assert [(p["survival"], p["ci_lower"], p["ci_upper"]) for p in none["timepoints"]] == [
        (1.0, 1.0, 1.0)
    ] * 3
    assert [p["at_risk"] for p in none["timepoints"]] == [4, 3, 1]
    every = kaplan_meier([1, 2, 2, 4], [True] * 4, timepoints_days=[1, 2, 4, 100])
    assert [p["survival"] for p in every["timepoints"]] == [0.75, 0.25, 0.0, 0.0]
    assert [(p["ci_lower"], p["ci_upper"]) for p in every["timepoints"][2:]] == [(0.0, 0.0)] * 2
    assert (every["median_days"], every["events"], every["censored"]) == (2.0, 4, 0)


def _random_cohort(rng: random.Random) -> tuple[list[float], list[bool], float]:
    """Follow-up times with many ties (small grids), some at 0, half-days, any event share."""
    n = rng.choice([1, 2, 3, 7, 25, 120, 900])
    grid = rng.choice([4, 30, 400, 5000])
    half = rng.random() < 0.3
    durations = [rng.randrange(grid) + (0.5 if half else 0.0) for _ in range(n)]
    share = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])
    return durations, [rng.random() < share for _ in range(n)], rng.choice([0.8, 0.9, 0.95, 0.99])


def test_km_fit_gives_lifelines_floats_bit_for_bit() -> None:
    """The same times, numbers at risk and removed, S(t) and bands, equal as floats (not only to
    the printed precision), over 400 seeded cohorts with ties, zero and all-event groups."""
    rng = random.Random(19)
    for _ in range(400):
        durations, events, level = _random_cohort(rng)
        ours = km_fit(durations, events, level)
        theirs = KaplanMeierFitter(alpha=1 - level).fit(durations, events)
        table = theirs.event_table
        assert np.array_equal(ours.times, theirs.survival_function_.index.to_numpy())
        assert np.array_equal(ours.at_risk, table["at_risk"].to_numpy())
        assert np.array_equal(ours.removed, table["removed"].to_numpy())
        assert np.array_equal(ours.survival, theirs.survival_function_.iloc[:, 0].to_numpy())
        assert np.array_equal(ours.lower, theirs.confidence_interval_.iloc[:, 0].to_numpy())
        assert np.array_equal(ours.upper, theirs.confidence_interval_.iloc[:, 1].to_numpy())


def test_km_summary_equals_the_one_lifelines_gave() -> None:
    """`kaplan_meier`'s whole output equals what it gave when it read lifelines' fitter (medians,
    bands' medians, landmarks, numbers at risk), over 200 seeded cohorts."""
    rng = random.Random(20)
    for _ in range(200):
        durations, events, level = _random_cohort(rng)
        landmarks = sorted(rng.uniform(0, max(durations) * 1.2) for _ in range(4))
        fitter = km_fitter(durations, events, "all", level)
        times = fitter.survival_function_.index.tolist()
        bands = fitter.confidence_interval_
        out = kaplan_meier(durations, events, level=level, timepoints_days=landmarks)
        assert out["median_days"] == _round(
            survival.survfit_median(times, fitter.survival_function_.iloc[:, 0].tolist())
        )
        assert out["median_ci"]["lower_days"] == _round(
            survival.survfit_median(times, bands.iloc[:, 0].tolist())
        )
        assert out["median_ci"]["upper_days"] == _round(
            survival.survfit_median(times, bands.iloc[:, 1].tolist())
        )
        estimates = fitter.survival_function_at_times(landmarks).tolist()
        banded = bands.reindex(landmarks, method="ffill")
        for point, t, s, (lo, hi) in zip(
            out["timepoints"], landmarks, estimates, banded.itertuples(index=False), strict=True
        ):
            if point["reason"] is None:
                assert (point["survival"], point["ci_lower"], point["ci_upper"]) == (
                    _round(s),
                    _round(lo),
                    _round(hi),
                )
            assert point["at_risk"] == at_risk(fitter, t)


def _round(value: float | None) -> float | None:
    """The summary's rounding (DECIMALS places)."""
    return None if value is None else round(float(value), DECIMALS)


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_clopper_pearson_equals_scipy_binomtest_to_the_printed_precision(level: float) -> None:
    """Every k of every n up to 40, and sampled k of cohort-sized n: the same rounded bounds as
    scipy.stats' `binomtest(...).proportion_ci(method="exact")`, 0/n and n/n included."""
    rng = random.Random(int(level * 100))
    cases = [(k, n) for n in range(1, 41) for k in range(n + 1)]
    for n in (585, 5908, 25815):
        cases += [(k, n) for k in {0, 1, 2, n - 2, n - 1, n, *rng.sample(range(n + 1), 12)}]
    for k, n in cases:
        reference = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
        lower, upper = clopper_pearson(k, n, level)
        assert (_round(lower), _round(upper)) == (_round(reference.low), _round(reference.high))


def test_clopper_pearson_edges_are_pinned() -> None:
    """0/n has lower bound exactly 0 and n/n upper bound exactly 1 (no root search there); 0/1
    and 1/1 at 95 %: upper 1 − 0.025 = 0.975 and lower 0.025."""
    assert clopper_pearson(0, 7, 0.95)[0] == 0.0
    assert clopper_pearson(7, 7, 0.95)[1] == 1.0
    none_of_one, one_of_one = clopper_pearson(0, 1, 0.95), clopper_pearson(1, 1, 0.95)
    assert none_of_one[0] == 0.0
    assert none_of_one[1] == pytest.approx(0.975, abs=1e-12)
    assert one_of_one[0] == pytest.approx(0.025, abs=1e-12)
    assert one_of_one[1] == 1.0


# -- the log-rank test and the distribution tails (no lifelines or scipy.stats in a recomputation) --


def _chi2_1_sf(x: float) -> float:
    """P(χ²₁ > x) = P(|Z| > √x) = erfc(√(x/2)): the standard library's, not scipy's."""
    return math.erfc(math.sqrt(x / 2))


@pytest.mark.parametrize(
    ("a", "b", "statistic"),
    [
        # worked by hand: deaths at 1 (A), 2 (B), 3 (B), 4 (A); A censored at 3, B at 5.
        # O_A − E_A = 2 − (3/6 + 2/5 + 2/4 + 1/2) = 0.1; V = .25 + .24 + .25 + .25 = 0.99
        ([(1, True), (3, False), (4, True)], [(2, True), (3, True), (5, False)], 0.01 / 0.99),
        # three tied deaths at 2 (two in A) among four at risk: E_A = 3·2/4 = 1.5, the variance
        # 3·(1/2)(1/2)·(4 − 3)/(4 − 1) = 0.25, so U = (2 − 1.5)² / 0.25 = 1
        ([(2, True), (2, True)], [(2, True), (4, False)], 1.0),
        # no death at all: no information, U = 0 and p = 1 (as lifelines answers it)
        ([(3, False)], [(4, False), (5, False)], 0.0),
        # the only death when A has left (n_A = 0): no information
        ([(1, False)], [(2, True), (3, False)], 0.0),
    ],
)
def test_log_rank_known_answers(
    a: list[tuple[float, bool]], b: list[tuple[float, bool]], statistic: float
) -> None:
    """U = (O_A − E_A)² / V with the hypergeometric variance, computed by hand."""
    result = survival.log_rank(
        [t for t, _ in a], [e for _, e in a], [t for t, _ in b], [e for _, e in b]
    )
    assert result.statistic == pytest.approx(statistic, rel=1e-12, abs=1e-15)
    assert result.p == pytest.approx(_chi2_1_sf(statistic), rel=1e-12)


def test_log_rank_equals_lifelines_and_scipy_on_random_cohorts() -> None:
    """400 seeded two-group cohorts (ties, censoring at death times, groups without deaths): the
    statistic and p equal lifelines' `logrank_test` and scipy.stats' `logrank` to round-off."""
    from lifelines.statistics import logrank_test
    from scipy.stats import CensoredData, logrank

    rng = random.Random(19)
    compared = 0
    for _ in range(400):
        a_times, a_events, _ = _random_cohort(rng)
        b_times, b_events, _ = _random_cohort(rng)
        ours = survival.log_rank(a_times, a_events, b_times, b_events)
        theirs = logrank_test(
            a_times, b_times, event_observed_A=a_events, event_observed_B=b_events
        )
        # the O − E sum cancels: each side's round-off is ~1e-14 of the expected count
        assert ours.statistic == pytest.approx(float(theirs.test_statistic), rel=1e-9, abs=1e-12)
        assert ours.p == pytest.approx(float(theirs.p_value), rel=1e-9)

        def censored(times: list[float], events: list[bool]) -> CensoredData:
            return CensoredData(
                uncensored=[t for t, e in zip(times, events, strict=True) if e],
                right=[t for t, e in zip(times, events, strict=True) if not e],
            )

        # scipy divides by a zero variance where there is no information (checked just below)
        with np.errstate(invalid="ignore", divide="ignore"):
            other = logrank(censored(a_times, a_events), censored(b_times, b_events))
        if math.isnan(other.statistic):  # no death with both groups at risk: zero variance
            assert (ours.statistic, ours.p) == (0.0, 1.0)
            continue
        compared += 1
        assert ours.statistic == pytest.approx(float(other.statistic) ** 2, rel=1e-9, abs=1e-12)
        assert ours.p == pytest.approx(float(other.pvalue), rel=1e-9)
    assert compared > 300  # most cohorts have deaths: the second comparison ran


def test_log_rank_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="durations must be finite"):
        survival.log_rank([1.0, -2.0], [True, False], [3.0], [True])
    with pytest.raises(ValueError, match="2 durations but 1 event flags"):
        survival.log_rank([1.0, 2.0], [True], [3.0], [True])


def test_normal_and_chi2_tails_are_scipy_stats_floats_bit_for_bit() -> None:
    """norm.ppf, norm.sf and chi2.sf as scipy.stats computes them, over their whole range."""
    from scipy.stats import chi2, norm

    from service.stats import distributions

    rng = np.random.default_rng(17)
    xs = [*rng.normal(0, 4, 3000).tolist(), 0.0, 1e-300, 40.0, -40.0, math.inf, -math.inf]
    for x in xs:
        assert distributions.normal_sf(x) == float(norm.sf(x))
        for df in (1, 2, 5):
            assert distributions.chi2_sf(abs(x), df) == float(chi2.sf(abs(x), df))
    assert distributions.chi2_sf(-1.0, 1) == float(chi2.sf(-1.0, 1)) == 1.0
    assert math.isnan(distributions.chi2_sf(3.0, 0))
    assert math.isnan(float(chi2.sf(3.0, 0)))
    for q in [*rng.random(3000).tolist(), 0.0, 1.0, 0.5, 1e-300]:
        assert distributions.normal_quantile(q) == float(norm.ppf(q))
    for level in (0.8, 0.9, 0.95, 0.99):
        assert distributions.two_sided_normal_quantile(level) == float(
            norm.ppf(1 - (1 - level) / 2)
        )
    assert distributions.two_sided_normal_quantile(0.95) == pytest.approx(1.959964, abs=1e-6)
