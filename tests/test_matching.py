"""Greedy 1:k matching: calipers and exact keys always hold, no reuse, determinism, known picks."""

from __future__ import annotations

import datetime as dt
import math
import random
from decimal import Decimal
from fractions import Fraction

import pytest

from service.protocol.terminology import build_terminology
from service.studies.cirae.matching import distance, match
from service.studies.cirae.protocol import Calipers, CohortProtocol, Matching
from service.studies.cirae.records import CirAESubject, Group, IcbType, MatchedSet, MatchResult
from service.studies.registry import load_protocols


def _settings() -> Matching:
    protocol = load_protocols(build_terminology())["cirae-dupilumab"]
    assert isinstance(protocol, CohortProtocol)
    return protocol.cohort.matching


SETTINGS = _settings()


def _subject(
    sid: str,
    group: Group = "control_1",
    *,
    sex: str | None = "female",
    race: str | None = "White",
    icb_type: IcbType = "PD-1",
    age: float | None = 60.0,
    charlson: int = 2,
    year: int = 2020,
) -> CirAESubject:
    return CirAESubject(
        patient_id=f"patient-{sid}",
        subject_id=sid,
        group=group,
        icb_start=dt.date(year, 6, 1),
        icb_type=icb_type,
        sex=sex,
        race=race,
        age_years=age,
        charlson=charlson,
        cancer_type="C34",
        stage="III",
        cirae_onset=None,
        resolution=None,
        dupilumab_start=None,
        glucocorticoid_start=None,
        death=None,
        last_seen=dt.date(year + 1, 6, 1),
    )


def _control_like(
    case: CirAESubject, sid: str, *, age: float, charlson: int, year: int
) -> CirAESubject:
    """A 1:2 control sharing the case's exact-match keys (sex, race, ICB type)."""
    return _subject(
        sid,
        "control_2",
        sex=case.sex,
        race=case.race,
        icb_type=case.icb_type,
        age=age,
        charlson=charlson,
        year=year,
    )


# -- hand-built known answers --------------------------------------------------------------------


def test_settings_are_the_protocol_choices() -> None:
    """1:2, exact on sex, race and ICB type; calipers age ±5 y, Charlson ±1, year ±1."""
    assert SETTINGS.ratio == 2
    assert SETTINGS.exact == ("sex", "race", "icb_type")
    assert SETTINGS.calipers == Calipers(age_years=Decimal(5), charlson=1, icb_year=1)


def test_distance_is_the_caliper_scaled_sum() -> None:
    """|Δage|/5 + |ΔCharlson|/1 + |Δyear|/1, exactly; None outside any caliper or with no age."""
    case = _subject("case", "dupilumab", age=60.0, charlson=2, year=2020)
    calipers = SETTINGS.calipers
    assert distance(calipers, case, _subject("c", age=62.5, charlson=3, year=2021)) == Fraction(
        5, 2
    )
    assert distance(calipers, case, _subject("c", age=65.0)) == Fraction(1)
    assert distance(calipers, case, _subject("c", age=65.25)) is None
    assert distance(calipers, case, _subject("c", charlson=4)) is None
    assert distance(calipers, case, _subject("c", year=2018)) is None
    assert distance(calipers, case, _subject("c", age=None)) is None
    assert distance(calipers, _subject("x", age=None), _subject("c")) is None


def test_greedy_nearest_in_a_tiny_cohort() -> None:
    """Cases in id order each take their two nearest unused controls; the rest are reported."""
    cases = [
        _subject("S-A", "dupilumab", age=60.0),
        _subject("S-B", "dupilumab", age=60.0),
        _subject("S-C", "dupilumab", icb_type="CTLA-4"),
        _subject("S-D", "dupilumab", age=None),
    ]
    controls = [
        _subject("c1", age=64.0),  # 0.8
        _subject("c2", age=61.0, charlson=3),  # 0.2 + 1 = 1.2
        _subject("c3", year=2021),  # 1.0
        _subject("c4", age=60.5),  # 0.1
        _subject("c5", age=66.0),  # outside the age caliper
        _subject("c6", sex="male"),  # other sex
        _subject("c7", age=None),  # unknown age
        _subject("c8", race=None),  # other race (unknown is its own category)
    ]
    result = match(SETTINGS, cases, controls, "control_1")
    assert result == MatchResult(
        control_group="control_1",
        ratio=2,
        sets=(
            _set("S-A", "c4", "c1"),
            _set("S-B", "c3", "c2"),
        ),
        unmatched_cases=("S-C", "S-D"),
    )
    assert result.partially_matched == ()


def _set(case: str, *controls: str) -> MatchedSet:
    return MatchedSet(case=case, controls=controls)


def test_greedy_is_not_optimal_and_says_so() -> None:
    """The first case takes its nearest even when a later case then goes short (greedy, documented)."""
    cases = [
        _subject("S-1", "dupilumab", age=60.0),
        _subject("S-2", "dupilumab", age=56.0),
    ]
    controls = [_subject("a", age=59.0), _subject("b", age=61.5)]
    result = match(SETTINGS, cases, controls, "control_1")
    assert result.sets == (_set("S-1", "a", "b"),)
    assert result.unmatched_cases == ("S-2",)


def test_ties_go_to_the_smaller_subject_id_and_partial_sets_are_listed() -> None:
    """Equal distances: smaller id first; a case with one of two controls is partially matched."""
    cases = [_subject("S-1", "dupilumab", age=60.0)]
    controls = [_subject("z", age=61.0), _subject("m", age=59.0), _subject("y", age=63.0)]
    result = match(SETTINGS, cases, controls, "control_1")
    assert result.sets == (_set("S-1", "m", "z"),)
    partial = match(SETTINGS, cases, [_subject("z", age=61.0)], "control_1")
    assert partial.sets == (_set("S-1", "z"),)
    assert partial.partially_matched == ("S-1",)
    assert partial.unmatched_cases == ()


def test_unknown_sex_or_race_matches_only_unknown() -> None:
    """An unknown exact key is a category of its own."""
    cases = [_subject("S-1", "dupilumab", race=None)]
    controls = [_subject("known"), _subject("unknown", race=None)]
    assert match(SETTINGS, cases, controls, "control_1").sets == (_set("S-1", "unknown"),)


def test_zero_caliper_means_exact() -> None:
    """A zero Charlson caliper admits only equal indices (and adds nothing to the distance)."""
    strict = SETTINGS.model_copy(
        update={"calipers": Calipers(age_years=Decimal(5), charlson=0, icb_year=1)}
    )
    cases = [_subject("S-1", "dupilumab", charlson=2)]
    controls = [_subject("near", charlson=3, age=60.0), _subject("same", charlson=2, age=64.0)]
    assert match(strict, cases, controls, "control_1").sets == (_set("S-1", "same"),)


def test_controls_from_another_group_or_duplicate_ids_are_refused() -> None:
    """A control outside the named group, or two subjects with one id, is a caller's bug."""
    case = _subject("S-1", "dupilumab")
    with pytest.raises(ValueError, match=r"controls not in group 'control_2': \['c'\]"):
        match(SETTINGS, [case], [_subject("c")], "control_2")
    with pytest.raises(ValueError, match=r"duplicate control subject ids: \['c'\]"):
        match(SETTINGS, [case], [_subject("c"), _subject("c")], "control_1")


# -- property-style over a seeded random cohort ----------------------------------------------------


def _random_cohort(seed: int) -> tuple[list[CirAESubject], list[CirAESubject]]:
    """200 subjects: 67 cases, 133 controls, few strata, so cases compete and some go without."""
    rng = random.Random(seed)
    subjects = []
    for i in range(200):
        subjects.append(
            _subject(
                f"S-{i:03d}",
                "dupilumab" if i % 3 == 0 else "control_2",
                sex=rng.choice(["female", "male"]),
                race=rng.choice(["White", "Black", None]),
                icb_type=rng.choice(["PD-1", "combination"]),
                age=None if rng.random() < 0.05 else round(rng.uniform(45, 80), 2),
                charlson=rng.randint(0, 4),
                year=rng.randint(2017, 2022),
            )
        )
    return (
        [s for s in subjects if s.group == "dupilumab"],
        [s for s in subjects if s.group == "control_2"],
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_pair_respects_every_rule(seed: int) -> None:
    """Calipers and exact keys hold for every pair; no control twice; every case accounted for."""
    cases, controls = _random_cohort(seed)
    result = match(SETTINGS, cases, controls, "control_2")
    by_id = {s.subject_id: s for s in cases + controls}
    used = [c for s in result.sets for c in s.controls]
    assert len(used) == len(set(used))
    assert {s.case for s in result.sets}.isdisjoint(result.unmatched_cases)
    assert sorted([s.case for s in result.sets] + list(result.unmatched_cases)) == sorted(
        c.subject_id for c in cases
    )
    assert result.unmatched_cases  # the cohort is built so some cases find nobody
    for matched in result.sets:
        case = by_id[matched.case]
        assert 1 <= len(matched.controls) <= 2
        for control_id in matched.controls:
            control = by_id[control_id]
            assert control.group == "control_2"
            assert _keys(control) == _keys(case)
            assert case.age_years is not None
            assert control.age_years is not None
            assert abs(Fraction(case.age_years) - Fraction(control.age_years)) <= 5
            assert abs(case.charlson - control.charlson) <= 1
            assert abs(case.icb_year - control.icb_year) <= 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_greedy_leaves_no_better_control_unused(seed: int) -> None:
    """A control nearer than a pick, or any eligible one when a set is short, went to an earlier case."""
    cases, controls = _random_cohort(seed)
    result = match(SETTINGS, cases, controls, "control_2")
    owner = {c: s.case for s in result.sets for c in s.controls}
    chosen = {s.case: s.controls for s in result.sets}
    by_id = {c.subject_id: c for c in controls}
    checked = 0
    for case in cases:
        picks = chosen.get(case.subject_id, ())
        ranked = [(distance(SETTINGS.calipers, case, by_id[c]), c) for c in picks]
        worst = max(((d, c) for d, c in ranked if d is not None), default=None)
        for control in controls:
            d = distance(SETTINGS.calipers, case, control)
            if d is None or _keys(case) != _keys(control) or control.subject_id in picks:
                continue
            if len(picks) < SETTINGS.ratio or (
                worst is not None and (d, control.subject_id) < worst
            ):
                checked += 1
                assert control.subject_id in owner, (case.subject_id, control.subject_id)
                assert owner[control.subject_id] < case.subject_id
    assert checked > 0  # the property was exercised, not vacuous


def _keys(subject: CirAESubject) -> tuple[str | None, ...]:
    return subject.sex, subject.race, subject.icb_type


def test_input_order_does_not_change_the_result() -> None:
    """Shuffled cases and controls give the identical result."""
    cases, controls = _random_cohort(5)
    expected = match(SETTINGS, cases, controls, "control_2")
    rng = random.Random(11)
    for _ in range(3):
        shuffled_cases, shuffled_controls = cases[:], controls[:]
        rng.shuffle(shuffled_cases)
        rng.shuffle(shuffled_controls)
        assert match(SETTINGS, shuffled_cases, shuffled_controls, "control_2") == expected


def _brute_force(
    cases: list[CirAESubject], controls: list[CirAESubject]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The method as CLINICAL.md states it, scanning every control for every case."""
    used: set[str] = set()
    sets = []
    for case in sorted(cases, key=lambda c: c.subject_id):
        ranked = sorted(
            (d, c.subject_id)
            for c in controls
            if c.subject_id not in used
            and _keys(c) == _keys(case)
            and (d := distance(SETTINGS.calipers, case, c)) is not None
        )
        chosen = tuple(sid for _, sid in ranked[: SETTINGS.ratio])
        used.update(chosen)
        if chosen:
            sets.append((case.subject_id, chosen))
    return tuple(sets)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_indexed_search_picks_what_a_scan_of_every_control_picks(seed: int) -> None:
    """The caliper-box index is a speed-up only: ages on and just past the caliper edges, equal
    distances and unknown ages give the same sets as a scan of the whole pool."""
    rng = random.Random(seed)
    cases, controls = _random_cohort(seed)
    edge = float(SETTINGS.calipers.age_years)
    for i, case in enumerate(cases[:20]):  # controls exactly on, and just beyond, the age caliper
        if case.age_years is None:
            continue
        for j, delta in enumerate((edge, -edge, edge + 0.01, -(edge + 0.01), 0.0)):
            controls.append(
                _control_like(
                    case,
                    f"E-{i:02d}-{j}",
                    age=case.age_years + delta,
                    charlson=case.charlson + rng.choice((-1, 0, 1)),
                    year=case.icb_year + rng.choice((-2, -1, 0, 1, 2)),
                )
            )
    result = match(SETTINGS, cases, controls, "control_2")
    assert tuple((s.case, s.controls) for s in result.sets) == _brute_force(cases, controls)


def test_near_ties_that_floats_cannot_tell_apart_are_ranked_exactly() -> None:
    """Two controls one float step apart in age, a year off the case: their float distances are
    equal, so a float ranking would fall back on the subject id and pick the farther one. The
    exact fallback picks the nearer one, as exact arithmetic does."""
    settings = SETTINGS.model_copy(update={"ratio": 1})
    case = _subject("CASE", "dupilumab", age=0.5, year=2020)
    nearer_age = 0.6
    farther_age = math.nextafter(nearer_age, math.inf)
    farther = _subject("C-1", "control_2", age=farther_age, year=2021)
    nearer = _subject("C-2", "control_2", age=nearer_age, year=2021)
    caliper = float(settings.calipers.age_years)
    # the premise: floats see a tie, exact arithmetic does not
    assert (farther_age - 0.5) / caliper + 1 == (nearer_age - 0.5) / caliper + 1
    exact_near, exact_far = (distance(settings.calipers, case, c) for c in (nearer, farther))
    assert exact_near is not None
    assert exact_far is not None
    assert exact_near < exact_far
    result = match(settings, [case], [farther, nearer], "control_2")
    assert result.sets == (MatchedSet("CASE", ("C-2",)),)


def test_exact_ties_still_go_to_the_smaller_subject_id_across_blocks() -> None:
    """A year off and a Charlson point off weigh the same: at the same age they are an exact tie
    (in floats too), settled by subject id; with ratio 2 both are taken, nearest first."""
    case = _subject("CASE", "dupilumab", age=61.3, charlson=2, year=2020)
    by_year = _subject("C-9", "control_2", age=62.1, charlson=2, year=2021)
    by_charlson = _subject("C-5", "control_2", age=62.1, charlson=3, year=2020)
    nearest = _subject("C-7", "control_2", age=61.3 + 0.25, charlson=2, year=2020)
    one = SETTINGS.model_copy(update={"ratio": 1})
    assert match(one, [case], [by_year, by_charlson], "control_2").sets == (
        MatchedSet("CASE", ("C-5",)),
    )
    two = SETTINGS.model_copy(update={"ratio": 2})
    assert match(two, [case], [by_year, by_charlson, nearest], "control_2").sets == (
        MatchedSet("CASE", ("C-7", "C-5")),
    )


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_near_ties_pick_what_a_scan_of_every_control_picks(seed: int) -> None:
    """Controls at float steps from each other, mirrored ages (a ± δ), a year off against a
    Charlson point off at the same age, and ages a float step either side of the age caliper:
    the sets equal those of an exact scan of every control."""
    rng = random.Random(seed)
    cases, controls = _random_cohort(seed)
    edge = float(SETTINGS.calipers.age_years)
    for i, case in enumerate(cases[:25]):
        if case.age_years is None:
            continue
        a = case.age_years
        delta = rng.choice((0.37, 1.1, 2.5))
        ages = [
            a + delta,
            a - delta,
            math.nextafter(a + delta, math.inf),
            math.nextafter(a - delta, -math.inf),
            a + edge,
            math.nextafter(a + edge, math.inf),
            math.nextafter(a - edge, math.inf),
        ]
        offsets = [(0, 0), (0, 0), (1, 0), (0, 1), (0, 0), (0, 0), (1, 1)]
        for j, (age, (dy, dc)) in enumerate(zip(ages, offsets, strict=True)):
            controls.append(
                _control_like(
                    case,
                    f"N-{i:02d}-{j}-{rng.randint(0, 9)}",
                    age=age,
                    charlson=case.charlson + dc * rng.choice((-1, 1)),
                    year=case.icb_year + dy * rng.choice((-1, 1)),
                )
            )
    result = match(SETTINGS, cases, controls, "control_2")
    assert tuple((s.case, s.controls) for s in result.sets) == _brute_force(cases, controls)
    assert sum(len(s.controls) for s in result.sets) > 40  # the near ties were competed for
