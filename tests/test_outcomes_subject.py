"""Per-subject endpoints of NCT06088771: known answers from hand-written FHIR, and the API."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import pytest

from fhir_mapping.events.model import TrialEvent
from service.protocol.terminology import build_terminology
from service.studies.interventional.subject_outcomes import subject_outcomes
from tests.kit import fhir as kit
from tests.kit.client import put_resources
from tests.kit.cohort import every_row, fresh_outcomes
from tests.kit.mapping import events_of
from tests.kit.protocols import trial_protocol

TERMS = build_terminology()


NCT = trial_protocol(TERMS)
DAY1 = dt.date(2025, 3, 10)


# Recurrence seen on 2025-09-01: an EFS event 175 days after Day 1.
RECURRENCE = kit.observation(
    id="rec",
    code="Cancer disease status",
    effective="2025-09-01",
    valueCodeableConcept={"text": "Recurrence of disease"},
)


def _viable(rid: str, text: str, pct: int) -> dict[str, Any]:
    """The percent viable tumour found at surgery (pathology on 2025-04-02)."""
    return kit.observation(
        id=rid, code=text, effective="2025-04-02", valueQuantity=kit.quantity(pct, "%")
    )


def _base() -> list[dict[str, Any]]:
    return [
        kit.patient(id="p1", gender="female", birth_date="1958-02-01"),
        *(
            kit.medication_administration(
                id=rid, medication=drug, effective=when, dose=kit.quantity(mg, "mg")
            )
            for rid, drug, mg, when in (
                ("dupi-a", "Dupixent 300 MG", 300, "2025-03-10T09:00:00-04:00"),
                ("dupi-b", "Dupixent 300 MG", 300, "2025-03-10T09:10:00-04:00"),
                ("cemi", "cemiplimab 350 MG/7ML", 350, "2025-03-10T10:00:00-04:00"),
            )
        ),
        kit.procedure(id="lob", code="Left lower lobectomy", performed="2025-03-27"),
        kit.encounter(id="visit", start="2025-04-28", end="2025-04-28"),
    ]


def _events(resources: list[dict[str, Any]]) -> list[TrialEvent]:
    """The events the real mappers derive from the resources."""
    return events_of(TERMS, resources)


def _outcomes(*extra: dict[str, Any]) -> dict[str, Any]:
    return subject_outcomes(NCT, _events(_base() + list(extra)), DAY1)


def test_time_to_surgery_and_on_time_surgery() -> None:
    """Time to surgery is surgery date − Day 1 (17 days = Day 18, inside Day 15–22)."""
    out = _outcomes()
    assert out["time_to_surgery_days"] == 17
    assert out["surgery"]["study_day"] == 18
    assert out["on_time_surgery"] is True


@pytest.mark.parametrize(
    ("extra", "mpr", "pcr"),
    [
        ([], "not_evaluable", "not_evaluable"),
        ([_viable("v", "Percent viable tumor, primary", 10)], "met", "not_met"),
        ([_viable("v", "Percent viable tumor, primary", 11)], "not_met", "not_met"),
        ([_viable("v", "Percent viable tumor, primary", 0)], "met", "not_evaluable"),
        (
            [
                _viable("v", "Percent viable tumor, primary", 0),
                _viable("n", "Percent viable tumor in lymph nodes", 0),
            ],
            "met",
            "met",
        ),
        (
            [
                _viable("v", "Percent viable tumor, primary", 0),
                _viable("n", "Percent viable tumor in lymph nodes", 3),
            ],
            "met",
            "not_met",
        ),
        (
            [
                _viable("v", "Percent viable tumour, primary", 0),
                kit.observation(
                    id="ypn",
                    code=kit.coded(kit.LOINC, "21900-6"),
                    effective="2025-04-02",
                    valueCodeableConcept={"text": "ypN0"},
                ),
            ],
            "met",
            "met",
        ),
    ],
)
def test_mpr_and_pcr(extra: list[dict[str, Any]], mpr: str, pcr: str) -> None:
    """MPR at ≤ 10 % viable tumour; pCR needs 0 % in the primary and nodal proof (ypN0 or 0 %)."""
    out = _outcomes(*extra)
    assert (out["mpr"]["result"], out["pcr"]["result"]) == (mpr, pcr)


def test_efs_event_is_recurrence_and_os_is_censored_at_the_last_data_point() -> None:
    """Recurrence on 2025-09-01 is an EFS event at 175 days; OS is censored at the last fact."""
    out = _outcomes(RECURRENCE)
    assert out["efs"] == {
        "days": 175,
        "event": True,
        "censored": False,
        "event_type": "progression_or_recurrence",
        "date": "2025-09-01",
        "reason": None,
        "imputed_from": None,
        "evidence": {
            "resource_type": "Observation",
            "id": "rec",
            "version": "1",
            "reference": "Observation/rec/_history/1",
        },
    }
    assert (out["os"]["days"], out["os"]["event"], out["os"]["date"]) == (175, False, "2025-09-01")


def test_death_is_an_event_for_both_efs_and_os() -> None:
    """Death on 2026-01-10 (306 days after Day 1) ends both EFS and OS."""
    dead = dict(_base()[0], deceasedDateTime="2026-01-10T08:00:00-05:00")
    events = _events([dead, *_base()[1:]])
    out = subject_outcomes(NCT, events, DAY1)
    assert (out["os"]["days"], out["os"]["event"], out["os"]["event_type"]) == (306, True, "death")
    assert (out["efs"]["days"], out["efs"]["event"]) == (306, True)


def _with_patient(**elements: Any) -> dict[str, Any]:
    """The endpoints with extra Patient elements (e.g. a death) on the base subject."""
    events = _events([dict(_base()[0], **elements), *_base()[1:]])
    return subject_outcomes(NCT, events, DAY1)


def _tte(out: dict[str, Any]) -> tuple[Any, ...]:
    """The parts of a time-to-event result a KM curve depends on, and the reason."""
    return (out["days"], out["event"], out["censored"], out["event_type"], out["date"])


def test_death_before_day1_gives_no_time_and_says_why() -> None:
    """A death 9 days before Day 1 cannot be a negative survival time: no time, and the reason."""
    out = _with_patient(deceasedDateTime="2025-03-01")
    for key in ("os", "efs"):
        assert _tte(out[key]) == (None, True, None, "death", "2025-03-01")
        assert out[key]["reason"] == "death recorded before Day 1 (2025-03-01)"
        assert out[key]["imputed_from"] is None


@pytest.mark.parametrize(
    ("recorded", "date", "days"),
    [
        # last dated fact 2025-04-28 (the visit) lies in the interval: death not before it
        ("2025", "2025-04-28", 49),
        ("2025-04", "2025-04-28", 49),
        # the interval starts after the last fact: its first day
        ("2025-09", "2025-09-01", 175),
        # the last fact is after the interval: clamped to the interval's last day
        ("2025-03", "2025-03-31", 21),
    ],
)
def test_partial_death_date_is_imputed_not_before_the_last_data_point(
    recorded: str, date: str, days: int
) -> None:
    """Imputed day = max(first, min(last data point, last)); the recorded text is kept."""
    out = _with_patient(deceasedDateTime=recorded)
    for key in ("os", "efs"):
        assert _tte(out[key]) == (days, True, False, "death", date)
        assert (out[key]["reason"], out[key]["imputed_from"]) == (None, recorded)


def test_partial_death_date_wholly_before_day1_is_reported() -> None:
    """ "2024" ends on 2024-12-31, before Day 1 (2025-03-10): no time, and the recorded text."""
    out = _with_patient(deceasedDateTime="2024")
    assert _tte(out["os"]) == (None, True, None, "death", "2024-12-31")
    assert (out["os"]["reason"], out["os"]["imputed_from"]) == (
        "death recorded before Day 1 (2024)",
        "2024",
    )


def test_death_without_a_date_is_an_event_on_an_unknown_day() -> None:
    """deceasedBoolean: OS is an event with no day (not censored as if alive), and says why."""
    out = _with_patient(deceasedBoolean=True)
    for key in ("os", "efs"):
        assert _tte(out[key]) == (None, True, None, "death", None)
        assert out[key]["reason"] == "death date unknown"


def test_undated_death_after_a_dated_recurrence_keeps_the_efs_time() -> None:
    """The recurrence (175 days) was observed alive, so it is the EFS event; OS day unknown."""
    events = _events([dict(_base()[0], deceasedBoolean=True), *_base()[1:], RECURRENCE])
    out = subject_outcomes(NCT, events, DAY1)
    assert _tte(out["efs"]) == (175, True, False, "progression_or_recurrence", "2025-09-01")
    assert (out["os"]["days"], out["os"]["event"], out["os"]["reason"]) == (
        None,
        True,
        "death date unknown",
    )


def _ae(rid: str, term: str, grade: str, when: str | None) -> dict[str, Any]:
    """An AdverseEvent of the base patient with a CTCAE grade; `when` None leaves it undated."""
    return kit.adverse_event(id=rid, event=term, grade=grade, date=when)


def test_safety_counts_grades_and_the_30_day_window() -> None:
    """AEs by CTCAE grade; grade ≥ 3; within 30 days after the last study-drug dose."""
    ae = _ae
    out = _outcomes(
        ae("ae1", "Pneumonitis", "3", "2025-03-20"),
        ae("ae2", "Rash maculo-papular", "1", "2025-04-09"),
        ae("ae3", "Fatigue", "2", "2025-04-10"),
    )
    safety = out["safety"]
    assert safety["by_grade"] == {"1": 1, "2": 1, "3": 1}
    assert safety["grade_3_or_higher"] == 1
    assert safety["window_end"] == "2025-04-09"
    assert [(a["term"], a["study_day"], a["within_window"]) for a in safety["adverse_events"]] == [
        ("Pneumonitis", 11, True),
        ("Rash maculo-papular", 31, True),
        ("Fatigue", 32, False),
    ]
    assert (safety["treatment_emergent"], safety["pre_dose"]) == (3, 0)


def test_safety_counts_treatment_emergent_aes_and_lists_pre_dose_ones() -> None:
    """Pre-dose AEs (before Day 1, or a partial date wholly before it) are listed, not counted.

    G3 on 2025-03-01 and G4 in "2025-02" are pre-dose; G2 on Day 11, G1 in "2025-03" (may be on
    or after Day 1) and an undated G1 count as treatment-emergent (conservative choice).
    """
    out = _outcomes(
        _ae("pre", "Cough", "3", "2025-03-01"),
        _ae("te", "Pneumonitis", "2", "2025-03-20"),
        _ae("feb", "Hypertension", "4", "2025-02"),
        _ae("mar", "Fatigue", "1", "2025-03"),
        _ae("undated", "Nausea", "1", None),
    )
    safety = out["safety"]
    assert [(a["term"], a["date"], a["treatment_emergent"]) for a in safety["adverse_events"]] == [
        ("Cough", "2025-03-01", False),
        ("Pneumonitis", "2025-03-20", True),
        ("Hypertension", None, False),
        ("Fatigue", None, True),
        ("Nausea", None, True),
    ]
    assert safety["by_grade"] == {"1": 2, "2": 1}
    assert (safety["grade_3_or_higher"], safety["within_window"]) == (0, 1)
    assert (safety["treatment_emergent"], safety["pre_dose"]) == (3, 2)


def test_without_day1_only_time_free_endpoints_are_given() -> None:
    """No study drug given: no time origin, so no EFS/OS/time to surgery, and it says why."""
    out = subject_outcomes(NCT, _events(_base()[:1]), None)
    assert (out["efs"], out["os"], out["time_to_surgery_days"]) == (None, None, None)
    assert out["reason"] == "no study-drug administration: Day 1 is unknown"


# -- over HTTP -------------------------------------------------------------------------------------


def _enroll(fhir: httpx.Client, resources: list[dict[str, Any]]) -> None:
    """PUT NCT06088771's ResearchStudy, Patient/p1's on-study ResearchSubject and `resources`."""
    study = kit.research_study(id="rs", system=None)
    subject = kit.research_subject(id="sub", study_id="rs", start="2025-03-03")
    put_resources(fhir, study, subject, *resources)


def test_subject_outcomes_endpoint(api: httpx.Client, fhir: httpx.Client) -> None:
    """The endpoint answers the same endpoints for an enrolled subject, and 404s the cohort study."""
    _enroll(fhir, _base())
    subject_id = api.get("/studies/NCT06088771/subjects").json()["subjects"][0]["subject_id"]
    response = api.get(f"/studies/NCT06088771/subjects/{subject_id}/outcomes")
    assert response.status_code == 200, response.text
    out = response.json()
    assert (out["day1"], out["time_to_surgery_days"], out["on_time_surgery"]) == (
        "2025-03-10",
        17,
        True,
    )
    assert out["os"]["event"] is False
    assert out["os"]["date"] == "2025-04-28"  # the follow-up visit is the last data point
    assert json.dumps(out["mpr"]["result"]) == '"not_evaluable"'
    cohort = api.get(f"/studies/cirae-dupilumab/subjects/{subject_id}/outcomes")
    assert cohort.status_code == 404
    assert cohort.json()["error"]["code"] == "not_applicable"


def test_cohort_endpoint_answers_with_a_death_before_day1(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """A posted death dated before Day 1 once made the cohort 500; now it is listed, not fitted."""
    _enroll(fhir, [dict(_base()[0], deceasedDateTime="2025-03-01"), *_base()[1:]])
    out = fresh_outcomes(api, "NCT06088771")["outcomes"]
    (listed,) = every_row(api, "NCT06088771", "subjects")
    subject_id = listed["subject_id"]
    reason = "death recorded before Day 1 (2025-03-01)"
    for key in ("os", "efs"):
        assert (out[key]["n"], out[key]["estimable"]) == (0, False)
        assert out[key]["excluded"] == [{"subject_id": subject_id, "reason": reason}]
    for name in ("os.svg", "swimmer.png"):
        assert api.get(f"/studies/NCT06088771/outcomes/plots/{name}").status_code == 200
    single = api.get(f"/studies/NCT06088771/subjects/{subject_id}/outcomes")
    assert single.status_code == 200, single.text
    os_ = single.json()["os"]
    assert (os_["days"], os_["event"], os_["censored"], os_["date"]) == (
        None,
        True,
        None,
        "2025-03-01",
    )
