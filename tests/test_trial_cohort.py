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
from service.protocol import TrialProtocol, load_protocols
from service.survival import DAYS_PER_MONTH
from service.terminology_files import build_terminology
from service.trial_cohort import (
    CohortInput,
    SwimmerRow,
    cohort_outcomes,
    cohort_plot_data,
)

TERMS = build_terminology()
PROTOCOL = load_protocols(TERMS)["NCT06088771"]
assert isinstance(PROTOCOL, TrialProtocol)
NCT: TrialProtocol = PROTOCOL
DAY1 = dt.date(2025, 3, 10)
UCUM = "http://unitsofmeasure.org"
GRADE = "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade"


def _on(days: int) -> str:
    """The calendar date `days` after Day 1 (Day 1 itself is 0 days)."""
    return (DAY1 + dt.timedelta(days=days)).isoformat()


class Subject:
    """Builds one patient's FHIR resources, each id prefixed by the patient id."""

    def __init__(self, pid: str, deceased_after: int | None = None) -> None:
        self.pid = pid
        patient: dict[str, Any] = {"resourceType": "Patient", "id": pid, "gender": "male"}
        if deceased_after is not None:
            patient["deceasedDateTime"] = _on(deceased_after)
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
    assert {g: r["subjects_worst_grade"] for g, r in table.items()} == {
        "1": 0,
        "2": 2,
        "3": 1,
        "4": 1,
        "5": 0,
        "unknown": 0,
    }
    assert {g: r["events"] for g, r in table.items()} == {
        "1": 1,
        "2": 3,
        "3": 1,
        "4": 1,
        "5": 0,
        "unknown": 1,
    }
    assert {g: r["events_within_window"] for g, r in table.items()} == {
        "1": 0,
        "2": 2,
        "3": 1,
        "4": 1,
        "5": 0,
        "unknown": 0,
    }
    assert (safety["events"], safety["events_within_window"], safety["high_grade_min"]) == (7, 4, 3)
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
