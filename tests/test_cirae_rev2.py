"""CLINICAL.md revision 2 for the cirAE cohort, over HTTP: each defect of issue 18 (13–17) as a
known answer worked out by hand from CLINICAL.md, posted as FHIR and read from the outcomes API.

Every patient starts ICB on its own day, so `GET /subjects` (day1 = ICB initiation) names the
pseudonymous subject id of each hand-written patient without the API revealing who is who.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.protocol.terminology import build_terminology
from tests.conftest import LiveServer
from tests.kit import fhir as kit
from tests.kit.client import put_resources
from tests.kit.mapping import events_of

TERMS = build_terminology()
STUDY = "cirae-dupilumab"
Resources = list[dict[str, Any]]


@pytest.fixture
def api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    """A client on /api/v1 of an empty store."""
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=300) as client:
        yield client


def _patient(pid: str, icb: str, *, drug: str = "pembrolizumab 200 MG", **extra: Any) -> Resources:
    """A Patient and a first ICB dose on `icb` (ICB initiation, the patient's key in the tests)."""
    return [
        kit.patient(id=pid, gender="female", birth_date="1960-01-01", **extra),
        kit.medication_administration(id=f"{pid}-icb", patient=pid, medication=drug, effective=icb),
    ]


def _dose(pid: str, rid: str, drug: str, when: str, route: str | None = None) -> dict[str, Any]:
    """A completed administration of `drug` on `when`."""
    return kit.medication_administration(
        id=f"{pid}-{rid}", patient=pid, medication=drug, effective=when, route=route
    )


def _skin(pid: str, rid: str, term: Any, **extra: Any) -> dict[str, Any]:
    """A skin Condition (no verification status, as many feeds send them)."""
    return kit.condition(id=f"{pid}-{rid}", patient=pid, code=term, verification=None, **extra)


def _post(fhir: httpx.Client, patients: dict[str, Resources]) -> None:
    """Every patient's resources in one transaction of PUTs."""
    put_resources(fhir, *(r for resources in patients.values() for r in resources))


def _outcomes(api: httpx.Client) -> dict[str, Any]:
    response = api.get(f"/studies/{STUDY}/outcomes")
    assert response.status_code == 200, response.text[:2000]
    body: dict[str, Any] = response.json()
    return body


def _subject_ids(api: httpx.Client) -> dict[str, str]:
    """ICB initiation day → subject id (each test patient starts ICB on its own day)."""
    response = api.get(f"/studies/{STUDY}/subjects", params={"limit": 1000})
    assert response.status_code == 200, response.text
    subjects = response.json()["subjects"]
    days = [s["day1"] for s in subjects]
    assert len(set(days)) == len(days), days
    return {s["day1"]: s["subject_id"] for s in subjects}


# -- 13. groups: controls never received dupilumab ---------------------------------------------------

GROUP_PATIENTS: dict[str, Resources] = {
    # ICB only: control 2.
    "none": _patient("none", "2021-01-04"),
    # a cirAE after ICB, no dupilumab ever: control 1.
    "c1": [
        *_patient("c1", "2021-01-05"),
        _skin("c1", "rash", "Maculopapular rash", onset="2021-02-01"),
    ],
    # a cirAE, then dupilumab 20 days later: the dupilumab group.
    "case": [
        *_patient("case", "2021-01-06"),
        _skin("case", "rash", "Eczematous dermatitis", onset="2021-02-01"),
        _dose("case", "dupi", "Dupixent 300 MG/2ML", "2021-02-21", "subcutaneous"),
    ],
    # dupilumab for asthma, no cirAE: no group (it used to be control 2).
    "asthma": [
        *_patient("asthma", "2021-01-07"),
        kit.condition(
            id="asthma-dx", patient="asthma", code="Severe eosinophilic asthma", onset="2018-01-01"
        ),
        _dose("asthma", "dupi", "dupilumab 300 MG", "2021-03-01", "subcutaneous"),
    ],
    # the NCT06088771 regimen (cemiplimab + dupilumab on one day), no cirAE: no group.
    "nct": [
        *_patient("nct", "2021-01-08", drug="Libtayo 350 MG"),
        _dose("nct", "dupi", "dupilumab 300 MG", "2021-01-08", "subcutaneous"),
        _dose("nct", "dupi2", "dupilumab 300 MG", "2021-01-08", "subcutaneous"),
    ],
    # the NCT06088771 regimen, then a cirAE: dupilumab came before the cirAE, no group.
    "nct-rash": [
        *_patient("nct-rash", "2021-01-11", drug="cemiplimab 350 MG"),
        _dose("nct-rash", "dupi", "dupilumab 600 MG", "2021-01-11", "subcutaneous"),
        _skin("nct-rash", "rash", "Pruritus", onset="2021-01-20"),
    ],
    # dupilumab for atopic dermatitis a year before ICB, a cirAE after ICB: no group (it used to
    # be control 1: "never any dupilumab" includes before ICB).
    "ad": [
        *_patient("ad", "2021-01-12"),
        _dose("ad", "dupi", "Dupixent 300 MG", "2020-01-15", "subcutaneous"),
        _skin("ad", "rash", "Lichenoid dermatitis", onset="2021-03-01"),
    ],
}


def test_13_controls_never_received_dupilumab(api: httpx.Client, fhir: httpx.Client) -> None:
    """Dupilumab for asthma, the NCT06088771 regimen, or before the cirAE: excluded, with the reason."""
    _post(fhir, GROUP_PATIENTS)
    ids = _subject_ids(api)
    out = _outcomes(api)["outcomes"]
    assert out["groups"] == {"dupilumab": 1, "control_1": 1, "control_2": 1}
    assert out["excluded"]["n"] == 4
    assert sorted((e["subject_id"], e["reason"]) for e in out["excluded"]["subjects"]) == sorted(
        [
            (ids["2021-01-07"], "dupilumab without a cirAE (another indication)"),
            (ids["2021-01-08"], "dupilumab without a cirAE (another indication)"),
            (ids["2021-01-11"], "dupilumab before cirAE onset"),
            (ids["2021-01-12"], "dupilumab before cirAE onset"),
        ]
    )


# -- 14. what a cirAE is: exclusions, and onset over the charted date -----------------------------

L58 = kit.coded(kit.ICD10CM, "L58.0", "Acute radiodermatitis", text="Radiation dermatitis, chest")

ONSET_PATIENTS: dict[str, Resources] = {
    # radiation dermatitis after ICB, by name and by ICD-10-CM L58 (text saying "dermatitis"), and
    # as an AdverseEvent: not cirAEs (control 2).
    "rt": [
        *_patient("rt", "2021-02-01"),
        _skin("rt", "rd", "Radiation dermatitis", onset="2021-03-01"),
    ],
    "rt-coded": [
        *_patient("rt-coded", "2021-02-02"),
        _skin("rt-coded", "rd", L58, onset="2021-03-01"),
    ],
    "rt-ae": [
        *_patient("rt-ae", "2021-02-03"),
        kit.adverse_event(
            id="rt-ae-rd", patient="rt-ae", event="Radiation dermatitis", date="2021-03-01"
        ),
    ],
    # an infected eczema (a skin infection) after ICB: not a cirAE (control 2).
    "infection": [
        *_patient("infection", "2021-02-04"),
        _skin("infection", "ecz", "Infected eczema", onset="2021-03-01"),
    ],
    # radiation dermatitis on day 10, then a maculopapular rash on day 40: the rash is the cirAE.
    "rt-rash": [
        *_patient("rt-rash", "2021-02-05"),
        _skin("rt-rash", "rd", "Radiation dermatitis", onset="2021-02-15"),
        _skin("rt-rash", "rash", "Maculopapular rash", onset="2021-03-17"),
    ],
    # atopic dermatitis "since childhood", charted after ICB start: pre-existing (control 2).
    "ad-childhood": [
        *_patient("ad-childhood", "2021-02-08"),
        _skin(
            "ad-childhood",
            "ad",
            "Atopic dermatitis",
            recorded="2021-04-01",
            onsetString="since childhood",
        ),
    ],
    # atopic dermatitis with onset at age 6, charted after ICB start: pre-existing (control 2).
    "ad-age": [
        *_patient("ad-age", "2021-02-09"),
        _skin(
            "ad-age",
            "ad",
            "Atopic dermatitis",
            recorded="2021-04-01",
            onsetAge={
                "value": 6,
                "unit": "years",
                "system": "http://unitsofmeasure.org",
                "code": "a",
            },
        ),
    ],
    # eczema since 1990, and the same eczema charted again after ICB with no onset: pre-existing.
    "ecz-again": [
        *_patient("ecz-again", "2021-02-10"),
        _skin("ecz-again", "ecz", "Eczema", onset="1990-05-01"),
        _skin("ecz-again", "ecz2", "eczema", recorded="2021-04-01"),
    ],
    # pruritus with no onset at all, charted 20 days after ICB: the charted date is the onset.
    "charted": [
        *_patient("charted", "2021-02-11"),
        _skin("charted", "itch", "Pruritus", recorded="2021-03-03"),
    ],
    # an onset in words that place it nowhere, charted after ICB: the onset exists, so the charted
    # date does not stand in for it; the group cannot be told (excluded).
    "vague": [
        *_patient("vague", "2021-02-15"),
        _skin(
            "vague", "rash", "Lichenoid dermatitis", recorded="2021-04-01", onsetString="gradual"
        ),
    ],
    # a rash with onset on day 15, charted on day 45: onset counts, not the charted date.
    "late-chart": [
        *_patient("late-chart", "2021-02-12"),
        _skin(
            "late-chart", "rash", "Maculopapular rash", onset="2021-02-27", recorded="2021-03-29"
        ),
    ],
}


def test_14_radiation_dermatitis_and_pre_existing_skin_disease_are_not_cirae(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Exclusion value set; onset[x] over recordedDate; a pre-existing condition charted later."""
    _post(fhir, ONSET_PATIENTS)
    ids = _subject_ids(api)
    out = _outcomes(api)["outcomes"]
    assert out["excluded"] == {
        "n": 1,
        "subjects": [
            {
                "subject_id": ids.pop("2021-02-15"),
                "reason": "cirAE without a date: group indeterminate",
            }
        ],
    }
    rows = {r["subject_id"]: r for r in out["subjects"]}
    found = {day: (rows[sid]["group"], rows[sid]["cirae_onset_day"]) for day, sid in ids.items()}
    assert found == {
        "2021-02-01": ("control_2", None),  # radiation dermatitis (name)
        "2021-02-02": ("control_2", None),  # L58.0
        "2021-02-03": ("control_2", None),  # radiation dermatitis AE
        "2021-02-04": ("control_2", None),  # infected eczema
        "2021-02-05": ("control_1", 40),  # the rash, not the radiation dermatitis (day 10)
        "2021-02-08": ("control_2", None),  # atopic dermatitis since childhood
        "2021-02-09": ("control_2", None),  # atopic dermatitis from age 6
        "2021-02-10": ("control_2", None),  # eczema since 1990 charted again
        "2021-02-11": ("control_1", 20),  # no onset: recordedDate
        "2021-02-12": ("control_1", 15),  # onset, not the charted day 45
    }
    assert out["groups"] == {"dupilumab": 0, "control_1": 3, "control_2": 7}


@pytest.mark.parametrize(
    ("onset", "expected"),
    [
        ({"onsetDateTime": "2021-03"}, {"type": "dateTime", "start": "2021-03"}),
        ({"onsetPeriod": {"end": "2010"}}, {"type": "Period", "start": None, "end": "2010"}),
        (
            {"onsetAge": {"value": 18, "code": "mo", "system": "http://unitsofmeasure.org"}},
            {"type": "Age", "age_years": [1.5, 19 / 12]},
        ),
        (
            {"onsetRange": {"low": {"value": 2, "unit": "years"}}},
            {"type": "Range", "age_years": [2.0, None]},
        ),
        (
            {"onsetString": "In infancy"},
            {"type": "String", "text": "In infancy", "start": None, "age_years": [0.0, 18.0]},
        ),
        (
            {"onsetString": "2015"},
            {"type": "String", "text": "2015", "start": "2015", "age_years": None},
        ),
        ({}, None),
    ],
)
def test_14_the_condition_event_keeps_its_onset(
    onset: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    """The mapper says which onset[x] was stated, so recordedDate never passes for an onset."""
    resource = _skin("x", "rash", "Pruritus", recorded="2021-04-01", **onset)
    [event] = events_of(TERMS, [resource])
    assert event.values["onset"] == expected
    assert event.values["recorded_date"] == "2021-04-01"


# -- 15. resolution: the latest status of the episode, AdverseEvent.outcome read ------------------


def _ae(
    pid: str, rid: str, term: str, date: str, outcome: str | None, **extra: Any
) -> dict[str, Any]:
    """An AdverseEvent of a skin term with an HL7 adverse-event-outcome code."""
    return kit.adverse_event(
        id=f"{pid}-{rid}", patient=pid, event=term, date=date, outcome=outcome, **extra
    )


RESOLUTION_PATIENTS: dict[str, Resources] = {
    # AdverseEvent outcomes alone: recovering / resolvedWithSequelae → partial; resolved →
    # complete; fatal → none.
    "recovering": [
        *_patient("recovering", "2021-03-01"),
        _ae("recovering", "ae", "Pruritus", "2021-03-20", "recovering"),
    ],
    "sequelae": [
        *_patient("sequelae", "2021-03-02"),
        _ae("sequelae", "ae", "Maculopapular rash", "2021-03-20", "resolvedWithSequelae"),
    ],
    "ae-resolved": [
        *_patient("ae-resolved", "2021-03-03"),
        _ae("ae-resolved", "ae", "Maculopapular rash", "2021-03-20", "resolved"),
    ],
    "fatal": [
        *_patient("fatal", "2021-03-04"),
        _ae("fatal", "ae", "Stevens-Johnson syndrome", "2021-03-20", "fatal"),
    ],
    # the first record active, a later record of the same rash resolved (abated on 5 May): complete,
    # resolved 65 days after ICB start.
    "later-resolved": [
        *_patient("later-resolved", "2021-03-05"),
        _skin(
            "later-resolved",
            "rash",
            "Maculopapular rash",
            onset="2021-03-20",
            recorded="2021-03-20",
        ),
        _skin(
            "later-resolved",
            "rash2",
            "Maculopapular rash",
            clinical="resolved",
            onset="2021-03-20",
            recorded="2021-05-10",
            abatementDateTime="2021-05-09",
        ),
    ],
    # resolved, then the skin flares again (a later AE, ongoing): none.
    "flare": [
        *_patient("flare", "2021-03-08"),
        _skin(
            "flare",
            "rash",
            "Lichenoid dermatitis",
            clinical="resolved",
            onset="2021-03-20",
            abatementDateTime="2021-04-10",
        ),
        _ae("flare", "ae", "Lichenoid dermatitis", "2021-06-01", "ongoing"),
    ],
    # an active Condition, then an AE of the same term recovering: partial.
    "cond-then-ae": [
        *_patient("cond-then-ae", "2021-03-09"),
        _skin("cond-then-ae", "ecz", "Eczematous dermatitis", onset="2021-03-20"),
        _ae("cond-then-ae", "ae", "Eczematous dermatitis", "2021-03-30", "recovering"),
    ],
    # remission → partial.
    "remission": [
        *_patient("remission", "2021-03-10"),
        _skin("remission", "bp", "Bullous pemphigoid", clinical="remission", onset="2021-03-20"),
    ],
    # an AE with no outcome at all → none.
    "no-status": [
        *_patient("no-status", "2021-03-11"),
        _ae("no-status", "ae", "Pruritus", "2021-03-20", None),
    ],
}


def test_15_resolution_is_the_latest_status_of_the_episode(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Resolution by hand from CLINICAL.md: 2 complete, 4 partial, 3 none; 6 of 9 resolved."""
    _post(fhir, RESOLUTION_PATIENTS)
    ids = _subject_ids(api)
    out = _outcomes(api)["outcomes"]
    rows = {r["subject_id"]: r for r in out["subjects"]}
    found = {
        day: (rows[sid]["resolution"], rows[sid]["resolution_day"]) for day, sid in ids.items()
    }
    assert found == {
        "2021-03-01": ("partial", None),  # recovering
        "2021-03-02": ("partial", None),  # resolvedWithSequelae
        "2021-03-03": ("complete", None),  # resolved (no resolution date given)
        "2021-03-04": ("none", None),  # fatal
        "2021-03-05": ("complete", 65),  # the later record: resolved, abated 2021-05-09
        "2021-03-08": ("none", None),  # resolved, then a later ongoing flare
        "2021-03-09": ("partial", None),  # the later AE: recovering
        "2021-03-10": ("partial", None),  # remission
        "2021-03-11": ("none", None),  # no outcome
    }
    resolution = out["resolution"]
    assert resolution["categories"] == {"complete": 2, "partial": 4, "none": 3}
    assert (resolution["overall"]["successes"], resolution["overall"]["n"]) == (6, 9)


# -- 16. glucocorticoid courses ----------------------------------------------------------------------

DEX = "dexamethasone 8 MG/2ML injection"
PRED = "prednisone 20 MG oral tablet"


def _pred_order(pid: str, rid: str, start: str, end: str, route: str = "oral") -> dict[str, Any]:
    """A prednisone order over [start, end] (dosageInstruction.timing.repeat.boundsPeriod)."""
    return kit.medication_request(
        id=f"{pid}-{rid}",
        patient=pid,
        medication=PRED,
        authored=start,
        dosageInstruction=[
            {
                "route": {"text": route},
                "timing": {"repeat": {"boundsPeriod": kit.period(start, end)}},
            }
        ],
    )


GC_PATIENTS: dict[str, Resources] = {
    # one antiemetic dexamethasone dose on the ICB day: not a course → unexposed.
    "antiemetic": [
        *_patient("antiemetic", "2021-04-05"),
        _dose("antiemetic", "dex", DEX, "2021-04-05", "IV"),
    ],
    # a single dose with every ICB cycle (days 0, 21, 42): single days → unexposed.
    "cycles": [
        *_patient("cycles", "2021-04-06"),
        *(
            _dose("cycles", f"dex{k}", DEX, d, "IV")
            for k, d in enumerate(["2021-04-06", "2021-04-27", "2021-05-18"])
        ),
    ],
    # the antiemetic dose on day 0, then a prednisone course ordered for days 50–63: day 50.
    "dex-then-course": [
        *_patient("dex-then-course", "2021-04-07"),
        _dose("dex-then-course", "dex", DEX, "2021-04-07", "IV"),
        _pred_order("dex-then-course", "pred", "2021-05-27", "2021-06-09"),
    ],
    # doses on two consecutive days (days 10 and 11) are a course (min_course_days = 2): day 10.
    "two-days": [
        *_patient("two-days", "2021-04-08"),
        _dose("two-days", "p1", PRED, "2021-04-18", "oral"),
        _dose("two-days", "p2", PRED, "2021-04-19", "oral"),
    ],
    # doses two days apart (days 10 and 12: course_gap_days = 1) are two single doses: unexposed.
    "gap": [
        *_patient("gap", "2021-04-09"),
        _dose("gap", "p1", PRED, "2021-04-19", "oral"),
        _dose("gap", "p2", PRED, "2021-04-21", "oral"),
    ],
    # a MedicationStatement known to the month (June 2021, ICB 12 April): placed on 1 June, day 50,
    # and flagged.
    "month": [
        *_patient("month", "2021-04-12"),
        kit.medication_statement(
            id="month-pred",
            patient="month",
            medication=PRED,
            route="oral",
            effectivePeriod=kit.period("2021-06"),
        ),
    ],
    # a MedicationStatement of the month ICB started in (April 2021, ICB 13 April): exposed from
    # ICB start (day 0), flagged.
    "month-of-icb": [
        *_patient("month-of-icb", "2021-04-13"),
        kit.medication_statement(
            id="month-of-icb-pred",
            patient="month-of-icb",
            medication=PRED,
            route="oral",
            effectivePeriod=kit.period("2021-04"),
        ),
    ],
    # an administration known to the year only: one dose on an unknown day, never a course.
    "year-dose": [
        *_patient("year-dose", "2021-04-14"),
        _dose("year-dose", "p", PRED, "2022", "oral"),
    ],
    # a course starting exactly 2 years after ICB start (the window's last day): day 730.
    "edge-in": [
        *_patient("edge-in", "2021-04-15"),
        _pred_order("edge-in", "pred", "2023-04-15", "2023-04-28"),
    ],
    # a course starting one day later: outside the window, unexposed.
    "edge-out": [
        *_patient("edge-out", "2021-04-16"),
        _pred_order("edge-out", "pred", "2023-04-17", "2023-04-30"),
    ],
    # a topical course: not systemic, unexposed.
    "topical": [
        *_patient("topical", "2021-04-19"),
        kit.medication_request(
            id="topical-hc",
            patient="topical",
            medication="hydrocortisone 1 % topical cream",
            authored="2021-05-01",
            dosageInstruction=[
                {"timing": {"repeat": {"boundsPeriod": kit.period("2021-05-01", "2021-05-14")}}}
            ],
        ),
    ],
}


def test_16_glucocorticoid_exposure_starts_with_a_course(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Single-day doses do not switch exposure on; a month-precision statement does, flagged."""
    _post(fhir, GC_PATIENTS)
    ids = _subject_ids(api)
    out = _outcomes(api)["outcomes"]
    rows = {r["subject_id"]: r for r in out["subjects"]}
    found = {
        day: (rows[sid]["glucocorticoid_start_day"], rows[sid]["glucocorticoid_flag"])
        for day, sid in ids.items()
    }
    month = "a month-precision record placed at the start of its period"
    assert found == {
        "2021-04-05": (None, None),  # one antiemetic dose on the ICB day
        "2021-04-06": (None, None),  # one dose per cycle
        "2021-04-07": (50, None),  # the prednisone course, not the day-0 dose
        "2021-04-08": (10, None),  # two consecutive days
        "2021-04-09": (None, None),  # two days apart
        "2021-04-12": (50, month),  # June 2021 → 1 June
        "2021-04-13": (0, month),  # April 2021, the month of ICB start
        "2021-04-14": (None, None),  # a year-dated dose
        "2021-04-15": (730, None),  # the window's last day
        "2021-04-16": (None, None),  # one day past the window
        "2021-04-19": (None, None),  # topical
    }
