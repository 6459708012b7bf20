"""Cohort figures of NCT06088771 from six hand-written subjects mapped by the real mapper."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from scipy.stats import binomtest

from fhir_mapping.events.context import MappingContext, MemoryLookup
from fhir_mapping.events.model import SourceRef, TrialEvent
from fhir_mapping.events.registry import map_resource
from service.infra.clock import shift_day
from service.protocol.terminology import build_terminology
from service.stats.plots import SwimmerRow
from service.stats.survival import DAYS_PER_MONTH
from service.studies.interventional.cohort_statistics import (
    CohortInput,
    cohort_outcomes,
    cohort_plot_data,
)
from tests.kit.protocols import trial_protocol

TERMS = build_terminology()
NCT = trial_protocol(TERMS)
DAY1 = dt.date(2025, 3, 10)
UCUM = "http://unitsofmeasure.org"
GRADE = "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade"


def _on(days: int) -> str:
    """The calendar date `days` after Day 1 (Day 1 itself is 0 days)."""
    return (DAY1 + dt.timedelta(days=days)).isoformat()


class Subject:
    """Builds one patient's FHIR resources, each id prefixed by the patient id."""

    def __init__(
        self, pid: str, deceased_after: int | None = None, *, deceased: str | bool | None = None
    ) -> None:
        self.pid = pid
        patient: dict[str, Any] = {"resourceType": "Patient", "id": pid, "gender": "male"}
        if deceased_after is not None:
            patient["deceasedDateTime"] = _on(deceased_after)
        if isinstance(deceased, str):
            patient["deceasedDateTime"] = deceased
        elif deceased is not None:
            patient["deceasedBoolean"] = deceased
        self.resources: list[dict[str, Any]] = [patient]

    def _add(self, rtype: str, **body: Any) -> Subject:
        rid = f"{self.pid}-{len(self.resources)}"
        self.resources.append(
            {
                "resourceType": rtype,
                "id": rid,
                "subject": {"reference": f"Patient/{self.pid}"},
                **body,
            }
        )
        return self

    def dosed(self) -> Subject:
        for drug, mg in (("Dupixent 300 MG", 300), ("Dupixent 300 MG", 300), ("cemiplimab", 350)):
            self._add(
                "MedicationAdministration",
                status="completed",
                medicationCodeableConcept={"text": drug},
                effectiveDateTime=f"{_on(0)}T09:00:00-04:00",
                dosage={"dose": {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"}},
            )
        return self

    def surgery(self, after: int) -> Subject:
        return self._add(
            "Procedure",
            status="completed",
            code={"text": "Lobectomy"},
            performedDateTime=_on(after),
        )

    def viable(self, site: str, pct: int, after: int) -> Subject:
        return self._add(
            "Observation",
            status="final",
            code={"text": f"Percent viable tumor, {site}"},
            effectiveDateTime=_on(after),
            valueQuantity={"value": pct, "unit": "%", "system": UCUM, "code": "%"},
        )

    def status(self, finding: str, after: int) -> Subject:
        return self._add(
            "Observation",
            status="final",
            code={"text": "Cancer disease status"},
            effectiveDateTime=_on(after),
            valueCodeableConcept={"text": finding},
        )

    def visit(self, after: int) -> Subject:
        return self._add(
            "Encounter",
            status="finished",
            **{"class": {"code": "AMB"}},
            period={"start": _on(after), "end": _on(after)},
        )

    def ae(self, term: str, grade: int | None, after: int) -> Subject:
        extra: dict[str, Any] = {}
        if grade is not None:
            extra["extension"] = [
                {"url": GRADE, "valueCodeableConcept": {"coding": [{"code": str(grade)}]}}
            ]
        return self._add(
            "AdverseEvent", actuality="actual", event={"text": term}, date=_on(after), **extra
        )

    def events(self) -> list[TrialEvent]:
        ctx = MappingContext(TERMS, MemoryLookup(self.resources))
        return [
            e
            for r in self.resources
            for e in map_resource(
                r["resourceType"], r, SourceRef(r["resourceType"], r["id"], 1), ctx
            )
        ]


def _cohort() -> list[CohortInput]:
    """Six subjects; days are counted from Day 1 (2025-03-10 = day 0); the window is Day 15–22.

    s1: surgery +17 (Day 18, on time); primary 0 %, nodes 0 % -> MPR + pCR; AEs G3 (in the
        30-day window) and G1 (after it); alive, last visit +375.
    s2: surgery +21 (Day 22, on time); primary 8 % -> MPR, no pCR; AE G2; recurrence +266,
        death +328.
    s3: surgery +28 (Day 29, late); primary 40 % -> neither; no AE; last visit +58.
    s4: surgery +14 (Day 15, on time); no pathology -> both not evaluable; two G2 AEs (+5 in,
        +83 out of the window); last visit +184.
    s5: progression +20 precluding surgery, death +92; AE G4 (+22, in) and one ungraded (+41).
    s6: screen failure, never dosed (Day 1 unknown).
    """
    s1 = (
        Subject("s1")
        .dosed()
        .surgery(17)
        .viable("primary", 0, 24)
        .viable("lymph nodes", 0, 24)
        .ae("Pneumonitis", 3, 10)
        .ae("Rash", 1, 52)
        .visit(375)
    )
    s2 = (
        Subject("s2", deceased_after=328)
        .dosed()
        .surgery(21)
        .viable("primary", 8, 28)
        .ae("Fatigue", 2, 15)
        .status("Recurrence of disease", 266)
    )
    s3 = Subject("s3").dosed().surgery(28).viable("primary", 40, 35).visit(58)
    s4 = Subject("s4").dosed().surgery(14).ae("Diarrhoea", 2, 5).ae("Fatigue", 2, 83).visit(184)
    s5 = (
        Subject("s5", deceased_after=92)
        .dosed()
        .status("Progressive disease", 20)
        .ae("Hepatitis", 4, 22)
        .ae("Cough", None, 41)
    )
    s6 = Subject("s6")
    dosed = [("s1", s1), ("s2", s2), ("s3", s3), ("s4", s4), ("s5", s5)]
    status = {"s1": "on-study", "s2": "off-study", "s3": "follow-up", "s4": "follow-up"}
    inputs = [CohortInput(sid, status.get(sid, "off-study"), DAY1, s.events()) for sid, s in dosed]
    # Deliberately out of order: the output must be sorted by subject_id.
    return [CohortInput("s6", "ineligible", None, s6.events()), *reversed(inputs)]


COHORT = _cohort()
OUT = cohort_outcomes(NCT, COHORT)


def _exact(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def _assert_rate(block: dict[str, Any], k: int, n: int) -> None:
    low, high = _exact(k, n)
    assert (block["successes"], block["n"], block["level"]) == (k, n, 0.95)
    assert block["rate"] == pytest.approx(k / n, abs=5e-5)
    assert block["ci_lower"] == pytest.approx(low, abs=5e-5)
    assert block["ci_upper"] == pytest.approx(high, abs=5e-5)


def test_counts_and_populations() -> None:
    """6 subjects, 5 dosed, 4 operated, 3 with an evaluable pathological response."""
    counts = {k: v for k, v in OUT["counts"].items() if k != "definitions"}
    assert counts == {
        "subjects": 6,
        "by_status": {"follow-up": 2, "ineligible": 1, "off-study": 2, "on-study": 1},
        "dosed": 5,
        "operated": 4,
        "with_response_assessment": 3,
    }
    assert [r["subject_id"] for r in OUT["subjects"]] == ["s1", "s2", "s3", "s4", "s5", "s6"]
    assert [r["dosed"] for r in OUT["subjects"]] == [True] * 5 + [False]


def test_mpr_and_pcr_rates_over_dosed_and_over_evaluable() -> None:
    """MPR 2/5 (2/3 evaluable), pCR 1/5 (1/3 evaluable); not evaluable counted apart."""
    mpr, pcr = OUT["mpr"], OUT["pcr"]
    assert (mpr["met"], mpr["not_met"], mpr["not_evaluable"]) == (2, 1, 2)
    assert (pcr["met"], pcr["not_met"], pcr["not_evaluable"]) == (1, 2, 2)
    _assert_rate(mpr["rate"], 2, 5)
    _assert_rate(mpr["evaluable_rate"], 2, 3)
    _assert_rate(pcr["rate"], 1, 5)
    _assert_rate(pcr["evaluable_rate"], 1, 3)
    assert [r["mpr"] for r in OUT["subjects"][:5]] == [
        "met",
        "met",
        "not_met",
        "not_evaluable",
        "not_evaluable",
    ]


def test_time_to_surgery_and_feasibility() -> None:
    """Surgery after 17, 21, 28, 14 days: median 19, range 14–28; 3 of 5 dosed on time."""
    assert OUT["time_to_surgery"] == {"n": 4, "median_days": 19.0, "min_days": 14, "max_days": 28}
    _assert_rate(OUT["feasibility"], 3, 5)
    assert [r["surgery_study_day"] for r in OUT["subjects"]] == [18, 22, 29, 15, None, None]


def test_adverse_event_table_by_worst_grade() -> None:
    """Worst grades s1 G3, s2 G2, s4 G2, s5 G4; events G1 1, G2 3, G3 1, G4 1, ungraded 1."""
    safety = OUT["safety"]
    table = {row["grade"]: row for row in safety["by_grade"]}
    columns = ("subjects_worst_grade", "events", "events_within_window")
    # grade: (subjects whose worst grade it is, events, events within the 30-day window)
    assert {g: tuple(r[c] for c in columns) for g, r in table.items()} == {
        "1": (0, 1, 0),
        "2": (2, 3, 2),
        "3": (1, 1, 1),
        "4": (1, 1, 1),
        "5": (0, 0, 0),
        "unknown": (0, 1, 0),
    }
    assert (safety["events"], safety["events_within_window"], safety["high_grade_min"]) == (7, 4, 3)
    assert (safety["pre_dose_events"], safety["subjects_with_pre_dose_ae"]) == (0, 0)
    _assert_rate(safety["subjects_with_any_ae"], 4, 5)
    _assert_rate(safety["subjects_high_grade"], 2, 5)
    assert [r["worst_ae_grade"] for r in OUT["subjects"]] == ["3", "2", None, "2", "4", None]


def test_event_free_survival_kaplan_meier() -> None:
    """EFS: 20 E, 58 C, 184 C, 266 E, 375 C -> S = 4/5 after 20, × 1/2 after 266 = 0.4.

    Median 266 days; at 12 months (365.25 days) S = 0.4 with 1 at risk; 24 and 60 months are
    beyond the longest follow-up (375 days).
    """
    efs = OUT["efs"]
    assert (DAYS_PER_MONTH, efs["days_per_month"]) == (30.4375, 30.4375)  # 365.25 / 12
    assert (efs["n"], efs["events"], efs["censored"]) == (5, 2, 3)
    assert (efs["median_days"], efs["median_months"]) == (266.0, 8.74)  # 266 / 30.4375
    assert [(p["months"], p["days"], p["survival"], p["at_risk"]) for p in efs["timepoints"]] == [
        (12, 365.25, 0.4, 1),
        (24, 730.5, None, 0),
        (60, 1826.25, None, 0),
    ]
    assert efs["timepoints"][1]["reason"] == "beyond follow-up"
    assert efs["excluded"] == []


def test_overall_survival_kaplan_meier() -> None:
    """OS: 58 C, 92 D, 184 C, 328 D, 375 C -> S = 3/4 after 92, × 1/2 after 328 = 0.375."""
    os_ = OUT["os"]
    assert (os_["n"], os_["events"], os_["median_days"]) == (5, 2, 328.0)
    assert [(p["survival"], p["at_risk"]) for p in os_["timepoints"]] == [
        (0.375, 1),
        (None, 0),
        (None, 0),
    ]
    assert os_["at_risk"][0] == {"days": 0.0, "at_risk": 5}


def test_swimmer_rows_and_plot_inputs() -> None:
    """One row per dosed subject in id order; KM inputs are the same durations as the summary."""
    data = cohort_plot_data(NCT, COHORT)
    assert [r.subject_id for r in data.swimmer] == ["s1", "s2", "s3", "s4", "s5"]
    assert data.swimmer[0] == SwimmerRow("s1", (0,), 17, 375, None, None, True, None, True, "met")
    assert data.swimmer[1] == SwimmerRow(
        "s2", (0,), 21, 328, 266, "progression_or_recurrence", False, 328, False, "met"
    )
    assert data.swimmer[4] == SwimmerRow(
        "s5", (0,), None, 92, 20, "progression_or_recurrence", False, 92, False, "not_evaluable"
    )
    assert data.swimmer[2].problem is None
    assert data.level == 0.95
    assert data.km["efs"].durations == (375.0, 266.0, 58.0, 184.0, 20.0)
    assert data.km["efs"].events == (False, True, False, False, True)
    assert data.km["os"].events == (False, True, False, False, True)
    assert OUT["swimmer"] == [r.to_json() for r in data.swimmer]


def test_output_is_json_and_independent_of_input_order() -> None:
    """No NaN/inf anywhere; shuffling the inputs changes nothing."""
    text = json.dumps(OUT, allow_nan=False, sort_keys=True)
    shuffled = cohort_outcomes(NCT, [COHORT[i] for i in (3, 0, 5, 1, 4, 2)])
    assert json.dumps(shuffled, allow_nan=False, sort_keys=True) == text


def test_empty_cohort_is_not_an_error() -> None:
    """No subjects: zero counts, rates with a reason, KM not estimable."""
    out = cohort_outcomes(NCT, [])
    assert out["counts"]["dosed"] == 0
    assert out["mpr"]["rate"]["reason"] == "no subjects"
    assert out["time_to_surgery"] == {
        "n": 0,
        "median_days": None,
        "min_days": None,
        "max_days": None,
    }
    assert (out["efs"]["estimable"], out["efs"]["median_months"]) == (False, None)
    json.dumps(out, allow_nan=False)


def test_duplicate_subject_ids_are_rejected() -> None:
    """Two inputs with one id would double-count a subject."""
    with pytest.raises(ValueError, match="duplicate subject_id"):
        cohort_outcomes(NCT, [COHORT[0], COHORT[0]])


def _edge_cohort() -> list[CohortInput]:
    """Deaths a KM curve cannot take, a partial death date, and pre-dose AEs (Day 1 = day 0).

    e1: alive, last visit +100; AEs G3 at -3 (pre-dose) and G1 at +10.
    e2: death recorded 5 days before Day 1; visit +30.
    e3: deceasedBoolean (death, no date); visit +60; AE G2 at -1 (pre-dose) only.
    e4: death recorded as "2025-09", last visit +100 (2025-06-18) -> imputed 2025-09-01 = 175 days.
    """
    e1 = Subject("e1").dosed().ae("Cough", 3, -3).ae("Rash", 1, 10).visit(100)
    e2 = Subject("e2", deceased_after=-5).dosed().visit(30)
    e3 = Subject("e3", deceased=True).dosed().ae("Dyspnoea", 2, -1).visit(60)
    e4 = Subject("e4", deceased="2025-09").dosed().visit(100)
    return [CohortInput(s.pid, "on-study", DAY1, s.events()) for s in (e1, e2, e3, e4)]


EDGE = _edge_cohort()


def test_unusable_deaths_are_listed_and_left_out_of_the_curves() -> None:
    """e2 (death before Day 1) and e3 (no date) are excluded with reasons; the rest are fitted.

    OS: 100 C (e1), 175 D (e4, imputed) -> S = 0 after 175 with no one left at risk, so the
    12-month survival is 0 (not "beyond follow-up"); median 175 days.
    """
    out = cohort_outcomes(NCT, EDGE)
    excluded = [
        {"subject_id": "e2", "reason": "death recorded before Day 1 (2025-03-05)"},
        {"subject_id": "e3", "reason": "death date unknown"},
    ]
    for key in ("os", "efs"):
        section = out[key]
        assert (section["n"], section["events"], section["censored"]) == (2, 1, 1)
        assert section["excluded"] == excluded
        assert section["median_days"] == 175.0
        twelve = section["timepoints"][0]
        assert (twelve["months"], twelve["survival"], twelve["at_risk"], twelve["reason"]) == (
            12,
            0.0,
            0,
            None,
        )
        assert (twelve["ci_lower"], twelve["ci_upper"]) == (0.0, 0.0)
    rows = {r["subject_id"]: r["os"] for r in out["subjects"]}
    assert rows["e4"] == {
        "days": 175,
        "event": True,
        "event_type": "death",
        "date": "2025-09-01",
        "reason": None,
        "imputed_from": "2025-09",
    }
    assert (rows["e3"]["days"], rows["e3"]["event"]) == (None, True)
    json.dumps(out, allow_nan=False)


def test_plot_inputs_leave_out_unusable_deaths_and_swimmer_says_why() -> None:
    """The KM inputs hold e1 and e4 only; e2 and e3 keep a swimmer row with the problem."""
    data = cohort_plot_data(NCT, EDGE)
    assert (data.km["os"].durations, data.km["os"].events) == ((100.0, 175.0), (False, True))
    assert data.swimmer[1] == SwimmerRow(
        "e2",
        (0,),
        None,
        30,
        None,
        "death",
        False,
        None,
        False,
        "not_evaluable",
        "death recorded before Day 1 (2025-03-05)",
    )
    assert data.swimmer[2].problem == "death date unknown"
    assert (data.swimmer[2].death_day, data.swimmer[2].os_censored) == (None, False)
    assert data.swimmer[3].death_day == 175


def test_safety_counts_treatment_emergent_aes_and_pre_dose_apart() -> None:
    """Only e1's G1 on +10 is treatment-emergent: 1/4 with any AE, 0/4 grade ≥ 3; 2 pre-dose."""
    safety = cohort_outcomes(NCT, EDGE)["safety"]
    table = {
        row["grade"]: (row["subjects_worst_grade"], row["events"]) for row in safety["by_grade"]
    }
    assert table == {
        "1": (1, 1),
        "2": (0, 0),
        "3": (0, 0),
        "4": (0, 0),
        "5": (0, 0),
        "unknown": (0, 0),
    }
    assert safety["events"] == 1
    _assert_rate(safety["subjects_with_any_ae"], 1, 4)
    _assert_rate(safety["subjects_high_grade"], 0, 4)
    assert (safety["pre_dose_events"], safety["subjects_with_pre_dose_ae"]) == (2, 2)
    rows = cohort_outcomes(NCT, EDGE)["subjects"]
    assert [
        (r["adverse_events"], r["pre_dose_adverse_events"], r["worst_ae_grade"]) for r in rows
    ] == [(1, 1, "1"), (0, 0, None), (0, 1, None), (0, 0, None)]


def test_shift_day_is_held_at_the_ends_of_the_calendar() -> None:
    """Windows are counted with it: one reaching past year 1 or 9999 is open on that side."""
    assert shift_day(dt.date(2025, 3, 10), 56) == dt.date(2025, 5, 5)
    assert shift_day(dt.date(2025, 3, 10), -56) == dt.date(2025, 1, 13)
    assert shift_day(dt.date(1, 1, 5), -56) == dt.date.min
    assert shift_day(dt.date(9999, 12, 30), 30) == dt.date.max
