"""Study 2 analysis: known answers against independent lifelines/scipy fits, not-estimable cases,
and a synthetic FHIR cohort with a planted glucocorticoid hazard ratio of 2.0."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pandas as pd
import pytest
from lifelines import CoxPHFitter, CoxTimeVaryingFitter
from lifelines.statistics import proportional_hazard_test
from scipy.stats import binomtest

from fhir_mapping.events.model import TrialEvent
from fhir_mapping.validation import validate_resource
from service.protocol.terminology import build_terminology
from service.studies.cirae.analysis import cirae_outcomes, km_groups
from service.studies.cirae.cohort import CohortPatient, build_cohort
from service.studies.cirae.cox import (
    Interval,
    build_design,
    cox_model,
    reference_level,
    tv_intervals,
)
from service.studies.cirae.records import CirAESubject, Group, Resolution
from tests.kit.mapping import events_of
from tests.kit.protocols import cohort_protocol
from tests.synthetic_cirae import generate

TERMS = build_terminology()
ICB = dt.date(2020, 1, 1)


PROTOCOL = cohort_protocol(TERMS)
UNADJUSTED = PROTOCOL.model_copy(
    update={"cohort": PROTOCOL.cohort.model_copy(update={"adjustment": ()})}
)


def _subject(
    sid: str,
    group: Group,
    days: int,
    died: bool,
    *,
    gc_day: int | None = None,
    age: float | None = 62.0,
    stage: str = "IV",
    cancer: str = "C34",
    resolution: Resolution | None = None,
) -> CirAESubject:
    """A hand-built analysis record: ICB on 2020-01-01, follow-up `days`, death or censoring."""
    end = ICB + dt.timedelta(days=days)
    has_cirae = group != "control_2"
    return CirAESubject(
        patient_id=f"patient-{sid}",
        subject_id=sid,
        group=group,
        icb_start=ICB,
        icb_type="PD-1",
        sex="female",
        race="White",
        age_years=age,
        charlson=2,
        cancer_type=cancer,
        stage=stage,
        cirae_onset=ICB + dt.timedelta(days=5) if has_cirae else None,
        resolution=(resolution or "complete") if has_cirae else None,
        dupilumab_start=ICB + dt.timedelta(days=7) if group == "dupilumab" else None,
        glucocorticoid_start=ICB + dt.timedelta(days=gc_day) if gc_day is not None else None,
        death=end if died else None,
        last_seen=end,
    )


# (subject id, group, days, died): 4 cases, 8 controls, distinct times, 8 deaths. All share sex,
# race, ICB type, age, Charlson and year, so 1:2 matching uses every control (d1→c1,c2; d2→c3,c4 …).
FIXED: tuple[tuple[str, Group, int, bool], ...] = (
    ("d1", "dupilumab", 100, True), ("d2", "dupilumab", 250, True), ("d3", "dupilumab", 400, False),
    ("d4", "dupilumab", 180, True), ("c1", "control_1", 90, True), ("c2", "control_1", 150, True),
    ("c3", "control_1", 300, False), ("c4", "control_1", 60, True), ("c5", "control_1", 500, False),
    ("c6", "control_1", 220, True), ("c7", "control_1", 350, True), ("c8", "control_1", 130, False),
)  # fmt: skip
# Glucocorticoid days: exposed and unexposed subjects die while both are at risk (no separation).
GC_DAYS = {"d1": 40, "d2": 50, "d3": 0, "c2": 30, "c3": 100, "c5": 200}
# Independent fits run to the same convergence as the module (lifelines defaults stop ~1e-5 early).
TIGHT = {"precision": 1e-10, "r_precision": 1e-14}


def _fixed_cohort(gc: dict[str, int] | None = None) -> list[CirAESubject]:
    return [
        _subject(sid, group, days, died, gc_day=(gc or {}).get(sid))
        for sid, group, days, died in FIXED
    ]


def _json_safe(out: dict[str, Any]) -> None:
    json.dumps(out, allow_nan=False)


# -- time-varying split ---------------------------------------------------------------------------


def test_time_varying_split_is_exact() -> None:
    """GC on day 60, death on day 182: unexposed (0, 60], exposed (60, 182] with the death."""
    subject = _subject("x", "control_1", 182, True, gc_day=60)
    assert tv_intervals(subject) == (Interval(0.0, 60.0, 0, False), Interval(60.0, 182.0, 1, True))


@pytest.mark.parametrize(
    ("gc_day", "days", "died", "expected"),
    [
        (None, 182, True, (Interval(0.0, 182.0, 0, True),)),
        (0, 182, False, (Interval(0.0, 182.0, 1, False),)),
        (182, 182, True, (Interval(0.0, 182.0, 0, True),)),
        (181, 182, False, (Interval(0.0, 181.0, 0, False), Interval(181.0, 182.0, 1, False))),
        (None, 0, True, (Interval(0.0, 0.5, 0, True),)),
    ],
)
def test_time_varying_split_edges(
    gc_day: int | None, days: int, died: bool, expected: tuple[Interval, ...]
) -> None:
    """GC from day 0 is exposure throughout; GC on the death day is not; zero follow-up is ½ day."""
    assert tv_intervals(_subject("x", "control_1", days, died, gc_day=gc_day)) == expected


# -- known-answer Cox models ------------------------------------------------------------------------


def test_group_hr_matches_an_independent_time_fixed_fit() -> None:
    """No glucocorticoids: HR, CI and p equal a CoxPHFitter fit on the table written out by hand."""
    out = cirae_outcomes(UNADJUSTED, _fixed_cohort())
    model = out["cox"]["control_1"]["fixed_group"]  # revision 2: the sensitivity model
    by_hand = pd.DataFrame(
        {
            "days": [100, 250, 400, 180, 90, 150, 300, 60, 500, 220, 350, 130],
            "died": [1, 1, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0],
            "dupilumab": [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    )
    ref = CoxPHFitter(alpha=0.05).fit(
        by_hand, duration_col="days", event_col="died", fit_options=TIGHT
    )
    row = ref.summary.loc["dupilumab"]
    assert model["estimable"] is True
    assert (model["n_subjects"], model["n_events"], model["n_rows"]) == (12, 8, 12)
    assert model["dropped_terms"] == [
        {"term": "glucocorticoid", "reason": "constant in the data (always 0)"}
    ]
    assert model["glucocorticoid"] == {
        "estimable": False,
        "reason": "dropped: constant in the data (always 0)",
    }
    group = model["dupilumab"]
    assert group["hr"] == pytest.approx(row["exp(coef)"], abs=2e-6)
    assert group["ci_lower"] == pytest.approx(row["exp(coef) lower 95%"], abs=2e-6)
    assert group["ci_upper"] == pytest.approx(row["exp(coef) upper 95%"], abs=2e-6)
    assert group["p"] == pytest.approx(row["p"], rel=1e-5)
    # The PH check equals lifelines' own test on the same (tie-free) data.
    ph = proportional_hazard_test(ref, by_hand, time_transform="rank")
    assert model["ph_check"]["terms"]["dupilumab"]["statistic"] == pytest.approx(
        float(ph.summary.loc["dupilumab", "test_statistic"]), abs=2e-6
    )
    assert model["ph_check"]["terms"]["dupilumab"]["p"] == pytest.approx(
        float(ph.summary.loc["dupilumab", "p"]), rel=1e-5
    )
    _json_safe(out)


def test_time_varying_fit_matches_a_hand_written_long_table() -> None:
    """With glucocorticoids the model is the one lifelines fits on the split written out by hand."""
    out = cirae_outcomes(UNADJUSTED, _fixed_cohort(GC_DAYS), min_events_per_parameter=1)
    model = out["cox"]["control_1"]["fixed_group"]  # revision 2: the sensitivity model
    rows = [  # id, start, stop, died, dupilumab, glucocorticoid
        ("d1", 0, 40, 0, 1, 0),
        ("d1", 40, 100, 1, 1, 1),
        ("d2", 0, 50, 0, 1, 0),
        ("d2", 50, 250, 1, 1, 1),
        ("d3", 0, 400, 0, 1, 1),
        ("d4", 0, 180, 1, 1, 0),
        ("c1", 0, 90, 1, 0, 0),
        ("c2", 0, 30, 0, 0, 0),
        ("c2", 30, 150, 1, 0, 1),
        ("c3", 0, 100, 0, 0, 0),
        ("c3", 100, 300, 0, 0, 1),
        ("c4", 0, 60, 1, 0, 0),
        ("c5", 0, 200, 0, 0, 0),
        ("c5", 200, 500, 0, 0, 1),
        ("c6", 0, 220, 1, 0, 0),
        ("c7", 0, 350, 1, 0, 0),
        ("c8", 0, 130, 0, 0, 0),
    ]
    by_hand = pd.DataFrame(
        rows, columns=["id", "start", "stop", "died", "dupilumab", "glucocorticoid"]
    )
    ref = CoxTimeVaryingFitter(alpha=0.05).fit(
        by_hand,
        event_col="died",
        start_col="start",
        stop_col="stop",
        id_col="id",
        fit_options=TIGHT,
    )
    assert model["estimable"] is True
    assert model["caveats"] == []
    assert (model["n_subjects"], model["n_events"], model["n_rows"]) == (12, 8, 17)
    for term in ("dupilumab", "glucocorticoid"):
        row = ref.summary.loc[term]
        assert model[term]["hr"] == pytest.approx(row["exp(coef)"], abs=2e-6)
        assert model[term]["ci_lower"] == pytest.approx(row["exp(coef) lower 95%"], abs=2e-6)
        assert model[term]["ci_upper"] == pytest.approx(row["exp(coef) upper 95%"], abs=2e-6)
        assert model[term]["p"] == pytest.approx(row["p"], rel=1e-5)
    _json_safe(out)


def test_design_reference_levels_and_collinear_terms() -> None:
    """The most frequent level is the reference; a term that repeats another is dropped, named."""
    cohort = [
        _subject("a", "dupilumab", 100, True, stage="III", cancer="C43"),
        _subject("b", "control_1", 120, True, stage="III", cancer="C43"),
        _subject("c", "control_1", 140, False),
        _subject("d", "dupilumab", 160, True),
        _subject("e", "control_1", 90, True),
    ]
    design = build_design(cohort, ("cancer_type", "stage"))
    assert design.references == {"cancer_type": "C34", "stage": "IV"}
    assert design.terms == ("dupilumab", "cancer_type=C43")
    assert design.dropped == (
        {"term": "glucocorticoid", "reason": "constant in the data (always 0)"},
        {"term": "stage=III", "reason": "linearly dependent on the terms before it"},
    )
    assert reference_level(["b", "a", "b", "a"]) == "a"


# -- resolution and KM input ------------------------------------------------------------------------


def test_resolution_rate_ci_is_the_exact_binomial_interval() -> None:
    """Complete or partial among cirAE patients, with scipy's Clopper–Pearson interval."""
    statuses: list[Resolution] = ["complete"] * 5
    statuses += ["partial"] * 2
    statuses += ["none"] * 2
    cohort = [
        _subject(f"s{i}", "dupilumab" if i < 4 else "control_1", 100 + i, False, resolution=r)
        for i, r in enumerate(statuses)
    ] + [_subject("n1", "control_2", 300, False)]
    out = cirae_outcomes(PROTOCOL, cohort)["resolution"]
    ci = binomtest(7, 9).proportion_ci(confidence_level=0.95, method="exact")
    assert out["categories"] == {"complete": 5, "partial": 2, "none": 2}
    assert (out["overall"]["successes"], out["overall"]["n"]) == (7, 9)
    assert out["overall"]["ci_lower"] == round(ci.low, 4)
    assert out["overall"]["ci_upper"] == round(ci.high, 4)
    assert out["overall"]["method"] == "clopper-pearson"
    assert (out["by_group"]["dupilumab"]["successes"], out["by_group"]["dupilumab"]["n"]) == (4, 4)
    assert (out["by_group"]["control_1"]["successes"], out["by_group"]["control_1"]["n"]) == (3, 5)


def test_km_groups_lists_every_group_in_subject_order() -> None:
    """The plot input: per group, days from ICB initiation and death flags."""
    cohort = [*_fixed_cohort()[:2], _subject("n1", "control_2", 30, False)]
    assert km_groups(cohort) == [
        {"label": "dupilumab", "durations_days": [100, 250], "events": [True, True]},
        {"label": "control_1", "durations_days": [], "events": []},
        {"label": "control_2", "durations_days": [30], "events": [False]},
    ]


# -- not estimable --------------------------------------------------------------------------------


def test_no_deaths_is_not_estimable() -> None:
    """Without a death there is no partial likelihood to maximise."""
    cohort = [_subject(sid, g, days, False) for sid, g, days, _ in FIXED]
    out = cirae_outcomes(PROTOCOL, cohort)
    model = out["cox"]["control_1"]["primary"]
    assert (model["estimable"], model["reason"]) == (False, "no deaths in the model population")
    assert (model["n_subjects"], model["n_events"]) == (12, 0)
    _json_safe(out)


def test_an_empty_group_is_not_estimable() -> None:
    """No control_2 subjects: that comparison is not estimable; no cases: neither is."""
    out = cirae_outcomes(PROTOCOL, _fixed_cohort())
    assert out["groups"] == {"dupilumab": 4, "control_1": 8, "control_2": 0}
    assert out["cox"]["control_2"]["primary"]["estimable"] is False
    assert out["cox"]["control_2"]["primary"]["reason"] == "the control_2 group is empty"
    assert out["matching"]["control_2"] == {
        "control_group": "control_2",
        "estimable": False,
        "reason": "the control_2 group is empty",
    }
    no_cases = cirae_outcomes(PROTOCOL, [s for s in _fixed_cohort() if s.group != "dupilumab"])
    for control_group in ("control_1", "control_2"):
        assert no_cases["cox"][control_group]["primary"]["reason"] == "the dupilumab group is empty"
    _json_safe(out)
    _json_safe(no_cases)


def test_glucocorticoid_for_everyone_is_dropped_and_said() -> None:
    """Everyone exposed from day 0: the covariate is constant, dropped, and the output says so."""
    out = cirae_outcomes(UNADJUSTED, _fixed_cohort({sid: 0 for sid, *_ in FIXED}))
    model = out["cox"]["control_1"]["primary"]
    assert model["estimable"] is True
    assert model["dropped_terms"] == [
        {"term": "glucocorticoid", "reason": "constant in the data (always 1)"}
    ]
    assert model["glucocorticoid"] == {
        "estimable": False,
        "reason": "dropped: constant in the data (always 1)",
    }
    assert model["dupilumab"]["estimable"] is True
    _json_safe(out)


def test_perfect_separation_is_not_estimable() -> None:
    """Every case dies and no control does: the group HR runs off to infinity."""
    cohort = [_subject(f"d{i}", "dupilumab", 50 + 10 * i, True) for i in range(6)] + [
        _subject(f"c{i:02d}", "control_1", 400 + i, False) for i in range(12)
    ]
    out = cirae_outcomes(UNADJUSTED, cohort)
    model = out["cox"]["control_1"]["primary"]
    assert model["estimable"] is False
    assert model["reason"].startswith("dupilumab: log-HR ")
    assert model["reason"].endswith(
        "(separation: the term perfectly separates deaths from survivors)"
    )
    _json_safe(out)


def test_separated_adjustment_covariate_is_a_caveat_not_a_failure() -> None:
    """No stage III patient dies: that term is not estimable, the group and GC terms still are."""
    stages = {"d3": "III", "c3": "III", "c5": "III", "c8": "III"}
    cohort = [
        _subject(sid, g, days, died, gc_day=GC_DAYS.get(sid), stage=stages.get(sid, "IV"))
        for sid, g, days, died in FIXED
    ]
    staged = UNADJUSTED.model_copy(
        update={"cohort": UNADJUSTED.cohort.model_copy(update={"adjustment": ("stage", "sex")})}
    )
    model = cirae_outcomes(staged, cohort, min_events_per_parameter=1)["cox"]["control_1"][
        "primary"
    ]
    assert model["estimable"] is True
    assert model["dupilumab"]["estimable"] is True
    assert model["glucocorticoid"]["estimable"] is True
    assert model["covariates"]["stage=III"]["estimable"] is False
    assert "separation" in model["covariates"]["stage=III"]["reason"]
    assert model["dropped_terms"] == [{"term": "sex", "reason": "one level only ('female')"}]
    assert any(c.startswith("ConvergenceWarning: ") for c in model["caveats"])
    assert model["caveats"][-1].startswith("stage=III: log-HR ")
    assert model["ph_check"]["available"] is True
    json.dumps(model, allow_nan=False)


def test_no_matched_case_is_not_estimable() -> None:
    """Cases whose exact keys no control shares are reported unmatched; no model is fitted."""
    cohort = [replace(s, sex="male") if s.group == "dupilumab" else s for s in _fixed_cohort()]
    out = cirae_outcomes(PROTOCOL, cohort)
    assert out["matching"]["control_1"]["unmatched_cases"] == ["d1", "d2", "d3", "d4"]
    assert out["matching"]["control_1"]["sets"] == 0
    assert out["cox"]["control_1"]["primary"]["estimable"] is False
    assert (
        out["cox"]["control_1"]["primary"]["reason"]
        == "no dupilumab case matched a control_1 subject"
    )
    _json_safe(out)


def test_too_few_deaths_per_parameter_is_not_estimable() -> None:
    """3 deaths cannot support a model at 5 deaths per parameter."""
    cohort = [
        _subject(sid, g, days, sid in ("d1", "c1", "c2"), gc_day=None) for sid, g, days, _ in FIXED
    ]
    model = cirae_outcomes(UNADJUSTED, cohort)["cox"]["control_1"]["primary"]
    assert model["estimable"] is False
    assert model["reason"] == (
        "3 deaths for 1 estimated parameter(s): fewer than 5 deaths per parameter"
    )


def test_missing_age_excludes_the_subject_and_says_so() -> None:
    """Complete-case analysis for numeric covariates, with the excluded subject named.

    (Matching already needs an age, so this guards models fitted on other populations.)"""
    cohort = _fixed_cohort()
    cohort[0] = _subject("d1", "dupilumab", 100, True, age=None)
    model = cox_model(cohort, ("age",), 0.95, min_events_per_parameter=1)
    assert model["excluded_subjects"] == [{"subject_id": "d1", "reason": "missing age"}]
    assert (model["n_subjects"], model["n_events"]) == (11, 7)


# -- planted hazard ratio through the real mapper and cohort builder ------------------------------


def _events(resources: Sequence[dict[str, Any]]) -> dict[str, list[TrialEvent]]:
    by_patient: dict[str, list[TrialEvent]] = {}
    for e in events_of(TERMS, resources):
        assert e.patient_id is not None
        by_patient.setdefault(e.patient_id, []).append(e)
    return by_patient


def test_synthetic_bundles_hold_whole_patients() -> None:
    """50 patients per transaction Bundle, PUT by id, every reference resolved inside its Bundle."""
    cohort = generate(120, seed=7)
    bundles = cohort.bundles(50)
    assert [
        len({e["resource"]["id"] for e in b["entry"] if e["resource"]["resourceType"] == "Patient"})
        for b in bundles
    ] == [50, 50, 20]
    for b in bundles:
        assert b["type"] == "transaction"
        patients = {
            e["resource"]["id"] for e in b["entry"] if e["resource"]["resourceType"] == "Patient"
        }
        for e in b["entry"]:
            r = e["resource"]
            assert e["request"] == {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
            if r["resourceType"] != "Patient":
                assert r["subject"]["reference"].removeprefix("Patient/") in patients
    assert sum(len(b["entry"]) for b in bundles) == len(cohort.resources)
    assert generate(120, seed=7) == cohort


def test_synthetic_resources_are_valid_fhir_r4() -> None:
    """Every generated resource passes the service's own R4 validation (ready to post)."""
    for resource in generate(60, seed=3).resources:
        validate_resource(resource)


def test_planted_glucocorticoid_hazard_ratio_is_recovered() -> None:
    """600 synthetic patients, GC HR 2.0 planted: both models' 95 % CIs contain 2 and exclude 1.

    A 95 % CI misses the truth 5 % of the time, so the seed is fixed. Over seeds 0–99 the CI held
    2.0 in 94 (vs control 1) and 98 (vs control 2) runs, excluded 1.0 in 99 and 100, and the mean
    log-HR was 0.710 and 0.709 (truth 0.693): the estimator is unbiased, not tuned to this seed.
    """
    synthetic = generate(600, seed=20250612)
    events = _events(synthetic.resources)
    cohort = build_cohort(
        PROTOCOL, [CohortPatient(pid, pid, evs) for pid, evs in sorted(events.items())]
    )
    truth = {t.patient_id: t for t in synthetic.truth}
    assert len(cohort) == 600
    assert [(s.group, s.glucocorticoid_start, s.death) for s in cohort] == [
        (
            truth[s.patient_id].group,
            truth[s.patient_id].glucocorticoid_start,
            truth[s.patient_id].death,
        )
        for s in cohort
    ]
    out = cirae_outcomes(PROTOCOL, cohort)
    _json_safe(out)
    by_id = {s.subject_id: s for s in cohort}
    calipers = PROTOCOL.cohort.matching.calipers
    for control_group in ("control_1", "control_2"):
        model = out["cox"][control_group]["primary"]
        gc = model["glucocorticoid"]
        assert model["estimable"] is True, model.get("reason")
        assert model["dropped_terms"] == []
        assert model["caveats"] == []
        assert model["ph_check"]["available"] is True
        assert gc["ci_lower"] <= 2.0 <= gc["ci_upper"], gc
        assert gc["ci_lower"] > 1.0, gc
        matching = out["matching"][control_group]
        cases = sum(1 for t in synthetic.truth if t.group == "dupilumab")
        assert matching["cases"] == cases
        assert matching["sets"] + len(matching["unmatched_cases"]) == cases
        partial = len(matching["partially_matched_cases"])
        assert matching["matched_controls"] == 2 * matching["sets"] - partial
        for matched in matching["matched_sets"]:
            case = by_id[matched["case"]]
            for control_id in matched["controls"]:
                control = by_id[control_id]
                assert control.group == control_group
                assert (control.sex, control.race, control.icb_type) == (
                    case.sex,
                    case.race,
                    case.icb_type,
                )
                assert case.age_years is not None
                assert control.age_years is not None
                assert abs(case.age_years - control.age_years) <= float(calipers.age_years)
                assert abs(case.charlson - control.charlson) <= calipers.charlson
                assert abs(case.icb_year - control.icb_year) <= calipers.icb_year
    assert cirae_outcomes(PROTOCOL, cohort) == out
