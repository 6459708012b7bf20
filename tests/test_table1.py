"""Table 1 (baseline characteristics and SMDs) against standardized mean differences worked by hand.

Continuous: SMD = (mean₁ − mean₂) / √((s₁² + s₂²) / 2), sample SDs. Categorical: per-level
(p₁ − p₂) / √((p₁(1 − p₁) + p₂(1 − p₂)) / 2), and Yang & Dalton's multi-level SMD
√(dᵀ S⁻¹ d) over the levels but the first, written out here for 2 × 2 matrices.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest

from service.stats.balance import (
    BalancePanel,
    BalanceRow,
    Comparison,
    GroupData,
    Variable,
    balance_panel,
    smd_categorical,
    smd_continuous,
)
from service.studies.cirae.records import CirAESubject, MatchedSet
from service.studies.cirae.table1 import baseline_table, matched_sets


def _subject(
    sid: str,
    group: str,
    *,
    sex: str | None = "female",
    age: float | None = 60.0,
    stage: str = "IV",
    race: str | None = "2106-3",
    charlson: int = 0,
    year: int = 2020,
) -> CirAESubject:
    start = dt.date(year, 3, 1)
    return CirAESubject(
        patient_id=f"p-{sid}",
        subject_id=sid,
        group=group,  # type: ignore[arg-type]
        icb_start=start,
        icb_type="PD-1",
        sex=sex,
        race=race,
        age_years=age,
        charlson=charlson,
        cancer_type="C34",
        stage=stage,
        cirae_onset=None if group == "control_2" else start + dt.timedelta(days=30),
        resolution=None if group == "control_2" else "complete",
        dupilumab_start=start + dt.timedelta(days=40) if group == "dupilumab" else None,
        glucocorticoid_start=None,
        death=None,
        last_seen=start + dt.timedelta(days=400),
    )


# dupilumab: ages 60, 62, 64, 70; sexes F F M M; stages III IV IV unknown
# control 1: ages 61, 65, 67, 71; sexes F F F M; stages III III IV IV
# control 2: ages 50, 80, 65;     sexes M M M;   stages IV IV IV
COHORT = [
    _subject("S-D1", "dupilumab", sex="female", age=60, stage="III", charlson=1),
    _subject("S-D2", "dupilumab", sex="female", age=62, stage="IV", charlson=2),
    _subject("S-D3", "dupilumab", sex="male", age=64, stage="IV", charlson=0),
    _subject("S-D4", "dupilumab", sex="male", age=70, stage="unknown", charlson=3),
    _subject("S-C1", "control_1", sex="female", age=61, stage="III", charlson=1),
    _subject("S-C2", "control_1", sex="female", age=65, stage="III", charlson=1),
    _subject("S-C3", "control_1", sex="female", age=67, stage="IV", charlson=2),
    _subject("S-C4", "control_1", sex="male", age=71, stage="IV", charlson=0),
    _subject("S-K1", "control_2", sex="male", age=50, stage="IV", year=2019),
    _subject("S-K2", "control_2", sex="male", age=80, stage="IV", year=2020),
    _subject("S-K3", "control_2", sex="male", age=65, stage="IV", year=2021),
]


def _binary(p1: float, p2: float) -> float:
    return (p1 - p2) / math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / 2)


def _row(panel: BalancePanel, name: str) -> BalanceRow:
    return next(r for r in panel.rows if r.name == name)


def _smd(row: BalanceRow, comparison: str) -> Any:
    return next(s for s in row.smds if s.comparison == comparison)


def test_continuous_smd_by_hand() -> None:
    """Ages 60 62 64 70 vs 61 65 67 71: means 64 and 66, variances 56/3 and 52/3."""
    value, reason = smd_continuous([60, 62, 64, 70], [61, 65, 67, 71])
    assert reason is None
    assert value == pytest.approx(-2 / math.sqrt((56 / 3 + 52 / 3) / 2), abs=1e-12)
    assert smd_continuous([1.0], [2.0, 3.0]) == (None, "fewer than two recorded values in a group")
    assert smd_continuous([], [2.0, 3.0]) == (None, "an empty group")
    assert smd_continuous([5.0, 5.0], [5.0, 5.0]) == (0.0, None)
    assert smd_continuous([5.0, 5.0], [6.0, 6.0]) == (None, "no variance in either group")


def test_multilevel_smd_by_hand() -> None:
    """Two levels: |per-level SMD|. Three levels: the 2 × 2 Mahalanobis form, inverted by hand."""
    assert smd_categorical([0.5, 0.5], [0.75, 0.25]) == pytest.approx(
        abs(_binary(0.5, 0.75)), abs=1e-12
    )
    # levels III, IV, unknown: (0.25, 0.5, 0.25) vs (0.5, 0.5, 0); the first level is dropped
    t, c = (0.5, 0.25), (0.5, 0.0)
    s11 = (t[0] * (1 - t[0]) + c[0] * (1 - c[0])) / 2
    s22 = (t[1] * (1 - t[1]) + c[1] * (1 - c[1])) / 2
    s12 = -(t[0] * t[1] + c[0] * c[1]) / 2
    det = s11 * s22 - s12 * s12
    d1, d2 = t[0] - c[0], t[1] - c[1]
    by_hand = math.sqrt((d1 * d1 * s22 - 2 * d1 * d2 * s12 + d2 * d2 * s11) / det)
    assert by_hand == pytest.approx(math.sqrt(0.8), abs=1e-12)
    assert smd_categorical([0.25, 0.5, 0.25], [0.5, 0.5, 0.0]) == pytest.approx(by_hand, abs=1e-12)
    # the same distributions with the levels in another order: the SMD does not depend on it
    assert smd_categorical([0.25, 0.5, 0.25], [0.0, 0.5, 0.5]) == pytest.approx(by_hand, abs=1e-12)
    assert smd_categorical([1.0, 0.0], [1.0, 0.0]) == 0.0


def test_before_matching_panel() -> None:
    """Counts, proportions, summaries and SMDs of the whole cohort, by hand."""
    table = baseline_table(COHORT, {})
    assert table.threshold == 0.1
    before = table.panels[0]
    assert [(g.key, g.label, g.n) for g in before.groups] == [
        ("dupilumab", "Dupilumab", 4),
        ("control_1", "cirAE, no dupilumab", 4),
        ("control_2", "No cirAE", 3),
    ]
    assert [r.name for r in before.rows] == [
        "sex",
        "race",
        "age",
        "icb_type",
        "icb_year",
        "charlson",
        "cancer_type",
        "stage",
    ]
    age = _row(before, "age")
    dupi = age.continuous[0]
    assert (dupi.n, dupi.missing, dupi.mean, dupi.median) == (4, 0, 64.0, 63.0)
    assert dupi.sd == pytest.approx(math.sqrt(56 / 3), abs=1e-12)
    assert (dupi.q1, dupi.q3, dupi.minimum, dupi.maximum) == (61.5, 65.5, 60.0, 70.0)
    smd = _smd(age, "dupilumab_vs_control_1")
    assert smd.value == pytest.approx(-2 / math.sqrt(18), abs=1e-12)
    assert smd.balanced is False
    # control 2 ages 50 80 65: mean 65, variance 225
    assert _smd(age, "dupilumab_vs_control_2").value == pytest.approx(
        (64 - 65) / math.sqrt((56 / 3 + 225) / 2), abs=1e-12
    )
    sex = _row(before, "sex")
    assert sex.levels == (("female", "Female"), ("male", "Male"))
    assert [(c.level, c.n, c.proportion) for c in sex.categorical[1]] == [
        ("female", 3, 0.75),
        ("male", 1, 0.25),
    ]
    sex_smd = _smd(sex, "dupilumab_vs_control_1")
    assert sex_smd.value == pytest.approx(abs(_binary(0.5, 0.75)), abs=1e-12)
    assert dict(sex_smd.per_level)["female"] == pytest.approx(_binary(0.5, 0.75), abs=1e-12)
    assert dict(sex_smd.per_level)["male"] == pytest.approx(_binary(0.5, 0.25), abs=1e-12)
    # every control-2 patient is male: per-level SMD of 'female' (0.5 vs 0) by hand
    assert _smd(sex, "dupilumab_vs_control_2").value == pytest.approx(
        abs(_binary(0.5, 0.0)), abs=1e-12
    )
    stage = _row(before, "stage")
    assert stage.levels == (("III", "Stage III"), ("IV", "Stage IV"), ("unknown", "Unknown"))
    assert _smd(stage, "dupilumab_vs_control_1").value == pytest.approx(math.sqrt(0.8), abs=1e-12)
    race = _row(before, "race")
    assert race.levels == (("2106-3", "White"),)
    assert (
        _smd(race, "dupilumab_vs_control_1").value,
        _smd(race, "dupilumab_vs_control_1").balanced,
    ) == (0.0, True)
    year = _row(before, "icb_year")
    assert [lv for lv, _ in year.levels] == ["2019", "2020", "2021"]
    # dupilumab all 2020 vs control 2 one each of 2019, 2020, 2021: drop 2019 → T = (1, 0),
    # C = (1/3, 1/3); S = [[(0 + 2/9)/2, -(0 + 1/9)/2], [-(0 + 1/9)/2, (0 + 2/9)/2]]
    s11, s12 = (2 / 9) / 2, -(1 / 9) / 2
    det = s11 * s11 - s12 * s12
    d1, d2 = 1 - 1 / 3, 0 - 1 / 3
    by_hand = math.sqrt((d1 * d1 * s11 - 2 * d1 * d2 * s12 + d2 * d2 * s11) / det)
    assert _smd(year, "dupilumab_vs_control_2").value == pytest.approx(by_hand, abs=1e-9)


def test_after_matching_panels_use_the_matched_sets() -> None:
    """Matched D1→C1,C2 and D2→C3; D3 and D4 unmatched: the panel compares D1, D2 with C1–C3."""
    matching = {
        "control_1": {
            "matched_sets": [
                {"case": "S-D1", "controls": ["S-C1", "S-C2"]},
                {"case": "S-D2", "controls": ["S-C3"]},
            ]
        },
        "control_2": {"estimable": False, "reason": "…"},
    }
    sets = matched_sets(matching)
    assert sets["control_1"] == (
        MatchedSet("S-D1", ("S-C1", "S-C2")),
        MatchedSet("S-D2", ("S-C3",)),
    )
    assert sets["control_2"] == ()
    table = baseline_table(COHORT, sets)
    matched = table.panels[1]
    assert matched.key == "matched_control_1"
    assert matched.title == "After matching: Dupilumab vs cirAE, no dupilumab"
    assert [(g.key, g.n) for g in matched.groups] == [("dupilumab", 2), ("control_1", 3)]
    # ages 60, 62 (mean 61, var 2) vs 61, 65, 67 (mean 193/3, var by hand)
    controls = [61, 65, 67]
    mean = sum(controls) / 3
    var = sum((a - mean) ** 2 for a in controls) / 2
    assert _smd(_row(matched, "age"), "dupilumab_vs_control_1").value == pytest.approx(
        (61 - mean) / math.sqrt((2 + var) / 2), abs=1e-12
    )
    # Charlson 1, 2 vs 1, 1, 2
    c_mean, c_var = 4 / 3, ((1 - 4 / 3) ** 2 * 2 + (2 - 4 / 3) ** 2) / 2
    assert _smd(_row(matched, "charlson"), "dupilumab_vs_control_1").value == pytest.approx(
        (1.5 - c_mean) / math.sqrt((0.5 + c_var) / 2), abs=1e-12
    )
    # both groups all female: balanced, SMD 0
    sex = _smd(_row(matched, "sex"), "dupilumab_vs_control_1")
    assert (sex.value, sex.balanced) == (0.0, True)
    empty = table.panels[2]
    assert [(g.key, g.n) for g in empty.groups] == [("dupilumab", 0), ("control_2", 0)]
    age = _smd(_row(empty, "age"), "dupilumab_vs_control_2")
    assert (age.value, age.balanced, age.reason) == (None, None, "an empty group")


def test_missing_values() -> None:
    """A missing age is counted as missing and left out; a missing sex is the level 'unknown'."""
    people = [
        _subject("a", "dupilumab", age=None, sex=None),
        _subject("b", "dupilumab", age=60),
        _subject("c", "dupilumab", age=64),
        _subject("d", "control_1", age=62),
        _subject("e", "control_1", age=66),
    ]
    variables: list[Variable[CirAESubject]] = [
        Variable("age", "Age", "continuous", lambda s: s.age_years),
        Variable("sex", "Sex", "categorical", lambda s: s.sex),
    ]
    panel = balance_panel(
        "p",
        "P",
        [
            GroupData("dupilumab", "Dupilumab", [p for p in people if p.group == "dupilumab"]),
            GroupData("control_1", "Control", [p for p in people if p.group == "control_1"]),
        ],
        [Comparison("x", "X", "dupilumab", "control_1")],
        variables,
    )
    age = panel.rows[0]
    assert (age.continuous[0].n, age.continuous[0].missing, age.continuous[0].mean) == (2, 1, 62.0)
    # 60, 64 (mean 62, variance 8) vs 62, 66 (mean 64, variance 8)
    assert age.smds[0].value == pytest.approx(-2 / math.sqrt(8), abs=1e-12)
    sex = panel.rows[1]
    assert sex.levels == (("female", "female"), ("unknown", "Unknown"))
    assert [c.n for c in sex.categorical[0]] == [2, 1]
    assert sex.smds[0].value == pytest.approx(abs(_binary(2 / 3, 1.0)), abs=1e-12)
    with pytest.raises(ValueError, match="not in the panel"):
        balance_panel("p", "P", [], [Comparison("x", "X", "a", "b")], variables)


def test_a_diverged_hazard_ratio_has_an_open_interval_not_an_error() -> None:
    """No events in one group: the fit's log-HR runs off; exp(coef ± z·se) overflows a float."""
    from service.studies.cirae.comparisons import _hr

    hr = _hr(-25.0, 800.0, 1.96)  # exp(-25 + 1568) is past float range
    assert hr["ci_upper"] is None
    assert hr["ci_lower"] == 0.0
    assert hr["log_hr"] == -25.0
    assert hr["p"] == pytest.approx(math.erfc((25 / 800) / math.sqrt(2)))  # two-sided normal p


def test_levels_are_counted_per_distinct_value_without_merging_true_and_one() -> None:
    """Values are counted once per distinct (type, value) and then turned into levels: 1 and 1.0
    are the level "1", True stays "True", None and blank text are "unknown"."""
    values: list[Any] = [1, 1.0, True, None, " ", "a", 1]
    variable: Variable[Any] = Variable("v", "V", "categorical", lambda r: r)
    panel = balance_panel(
        "p",
        "P",
        [GroupData("x", "X", values), GroupData("y", "Y", ["a", "a"])],
        [Comparison("x_vs_y", "X vs Y", "x", "y")],
        [variable],
    )
    row = panel.rows[0]
    assert [level for level, _ in row.levels] == ["1", "True", "a", "unknown"]
    assert [c.n for c in row.categorical[0]] == [3, 1, 1, 2]
    assert [c.n for c in row.categorical[1]] == [0, 0, 2, 0]
