"""CLINICAL.md revision 2 for the cirAE cohort, over HTTP: each defect of issue 18 (13–17) as a
known answer worked out by hand from CLINICAL.md, posted as FHIR and read from the outcomes API.

Every patient starts ICB on its own day, so `GET /subjects` (day1 = ICB initiation) names the
pseudonymous subject id of each hand-written patient without the API revealing who is who.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
import statistics
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest
from lifelines import CoxPHFitter, CoxTimeVaryingFitter

from fhir_mapping.events.model import TrialEvent
from service.protocol.terminology import build_terminology
from service.studies.cirae.analysis import analyse, matched_population
from service.studies.cirae.cohort import CohortPatient, build_cohort
from service.studies.cirae.cox import (
    FIXED_GROUP,
    PRIMARY,
    Interval,
    build_design,
    fit_cox,
    tv_intervals,
)
from service.studies.cirae.matching import match
from service.studies.cirae.records import CirAESubject, Group
from service.studies.cirae.results import CoxFit, DupilumabCoding, ModelSpec
from tests.conftest import LiveServer
from tests.kit import fhir as kit
from tests.kit.client import put_resources
from tests.kit.cohort import every_row, fresh_listing, fresh_outcomes
from tests.kit.mapping import events_of
from tests.kit.protocols import cohort_protocol
from tests.synthetic_cirae import PLANTED_DUPILUMAB_HR, SyntheticCohort, generate_time_varying

TERMS = build_terminology()
PROTOCOL = cohort_protocol(TERMS)
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
    """The outcomes from a snapshot reflecting every write so far."""
    return fresh_outcomes(api, STUDY)


def _listing(api: httpx.Client) -> dict[str, dict[str, Any]]:
    """The per-subject analysis listing (every page), by subject id."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = fresh_listing(api, STUDY, cursor=cursor)
        rows += page["subjects"]
        cursor = page["next_cursor"]
        if cursor is None:
            return {r["subject_id"]: r for r in rows}


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
    excluded = every_row(api, STUDY, "excluded")
    assert sorted((e["subject_id"], e["reason"]) for e in excluded) == sorted(
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
    reason = "cirAE without a date: group indeterminate"
    assert out["excluded"] == {"n": 1, "by_reason": {reason: 1}}
    assert every_row(api, STUDY, "excluded") == [
        {"subject_id": ids.pop("2021-02-15"), "reason": reason}
    ]
    rows = _listing(api)
    found = {
        day: (rows[sid]["group"], rows[sid]["days_to_cirae_onset"]) for day, sid in ids.items()
    }
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
    rows = _listing(api)
    found = {
        day: (rows[sid]["resolution"], rows[sid]["days_to_resolution"]) for day, sid in ids.items()
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
    # a 21-day prednisone course (boundsDuration) ordered 10 days before ICB start: it runs at
    # ICB start, so exposure from day 0.
    "duration": [
        *_patient("duration", "2021-04-20"),
        kit.medication_request(
            id="duration-pred",
            patient="duration",
            medication=PRED,
            authored="2021-04-10",
            dosageInstruction=[
                {
                    "route": {"text": "oral"},
                    "timing": {
                        "repeat": {
                            "boundsDuration": {
                                "value": 21,
                                "unit": "d",
                                "system": "http://unitsofmeasure.org",
                                "code": "d",
                            }
                        }
                    },
                }
            ],
        ),
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
    rows = _listing(api)
    found = {
        day: (rows[sid]["days_to_glucocorticoid"], rows[sid]["glucocorticoid_flag"])
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
        "2021-04-20": (0, None),  # a 21-day course running at ICB start
    }


# -- 17. dupilumab time-varying from its first dose; a model that respects the matched sets --------

# lifelines reference fits converge as tightly as the service (cox.FIT_PRECISION)
TIGHT = {"precision": 1e-10, "r_precision": 1e-14}
ICB_SETS = dt.date(2021, 6, 1)
# Eight matched sets, each (case, control, control): (OS days, died, dupilumab day, glucocorticoid
# course day). Every cirAE starts on day 10. Case k is 40 + 6k years old at ICB start, its
# controls 1 and 2 years older: each case's own controls are its nearest (the next set is 4+
# years away), so 1:2 matching (calipers age ±5, Charlson ±1, year ±1) makes exactly these sets.
SetRow = tuple[int, bool, int | None, int | None]
SETS: tuple[tuple[SetRow, SetRow, SetRow], ...] = (
    ((400, True, 160, None), (150, True, None, 50), (620, False, None, None)),
    ((820, True, 25, 100), (300, True, None, None), (510, True, None, 200)),
    ((95, True, 40, None), (700, False, None, 60), (240, True, None, None)),
    ((1000, False, 250, 300), (130, True, None, None), (460, True, None, 20)),
    ((330, True, 20, 150), (880, True, None, None), (205, True, None, 90)),
    ((560, True, 45, None), (75, True, None, None), (390, False, None, 120)),
    ((710, False, 300, 400), (270, True, None, 30), (640, True, None, None)),
    ((180, True, 60, 70), (930, True, None, None), (350, True, None, 250)),
)  # fmt: skip


def _set_member(k: int, j: int) -> tuple[str, dt.date, int]:
    """Patient id, ICB start and age in days at ICB start of member j (0 = case) of set k."""
    icb = ICB_SETS + dt.timedelta(days=3 * k + j)
    age_days = round((40 + 6 * k + j) * 365.25)
    return f"m{k}-{j}", icb, age_days


def _on(icb: dt.date, days: int) -> str:
    """The ISO day `days` after ICB start."""
    return (icb + dt.timedelta(days=days)).isoformat()


def _set_patients() -> dict[str, Resources]:
    """The 24 patients as FHIR: ICB, cirAE, dupilumab, a prednisone course, death or a last visit."""
    out: dict[str, Resources] = {}
    for k, members in enumerate(SETS):
        for j, (os_days, died, dupilumab, gc) in enumerate(members):
            pid, icb, age_days = _set_member(k, j)
            death = {"deceasedDateTime": _on(icb, os_days)} if died else {}
            resources = [
                kit.patient(
                    id=pid,
                    gender="female",
                    birth_date=(icb - dt.timedelta(days=age_days)).isoformat(),
                    extension=[kit.us_core_race(code="2106-3", display="White")],
                    **death,
                ),
                kit.medication_administration(
                    id=f"{pid}-icb", patient=pid, medication="pembrolizumab 200 MG", effective=icb
                ),
                _skin(pid, "rash", "Maculopapular rash", onset=_on(icb, 10)),
            ]
            if dupilumab is not None:
                resources.append(
                    _dose(pid, "dupi", "Dupixent 300 MG/2ML", _on(icb, dupilumab), "SC")
                )
            if gc is not None:
                resources.append(_pred_order(pid, "pred", _on(icb, gc), _on(icb, gc + 13)))
            if not died:
                resources.append(
                    kit.encounter(
                        id=f"{pid}-visit",
                        patient=pid,
                        start=_on(icb, os_days),
                        end=_on(icb, os_days),
                    )
                )
            out[pid] = resources
    return out


def _long_table(*, dupilumab_fixed: bool) -> pd.DataFrame:
    """The (start, stop] table written from SETS: split where dupilumab or glucocorticoids start."""
    rows = []
    for k, members in enumerate(SETS):
        for j, (os_days, died, dupilumab, gc) in enumerate(members):
            pid, _, age_days = _set_member(k, j)
            cuts = sorted({c for c in (dupilumab, gc) if c is not None and 0 < c < os_days})
            bounds = [0, *cuts, os_days]
            for start, stop in itertools.pairwise(bounds):
                if dupilumab_fixed:
                    dupi = int(j == 0)
                else:
                    dupi = int(dupilumab is not None and dupilumab <= start)
                rows.append(
                    {
                        "id": pid,
                        "set": k,
                        "start": start,
                        "stop": stop,
                        "died": int(died and stop == os_days),
                        "dupilumab": dupi,
                        "glucocorticoid": int(gc is not None and gc <= start),
                        "age": age_days / 365.25,
                    }
                )
    return pd.DataFrame(rows)


def _lifelines(table: pd.DataFrame, terms: list[str], *, strata: bool = False) -> pd.DataFrame:
    """lifelines' CoxTimeVaryingFitter on the hand-written table (its summary by term)."""
    columns = ["id", "start", "stop", "died", *terms, *(["set"] if strata else [])]
    fitted = CoxTimeVaryingFitter(alpha=0.05).fit(
        table[columns],
        event_col="died",
        start_col="start",
        stop_col="stop",
        id_col="id",
        strata=["set"] if strata else None,
        fit_options=TIGHT,
    )
    summary: pd.DataFrame = fitted.summary
    return summary


def _same_terms(model: dict[str, Any], reference: pd.DataFrame, terms: list[str]) -> None:
    """The service's HR, CI and p per term equal lifelines' on the hand-written table."""
    for term in terms:
        got = model[term] if term in ("dupilumab", "glucocorticoid") else model["covariates"][term]
        row = reference.loc[term]
        assert got["estimable"] is True, (term, got)
        assert got["hr"] == pytest.approx(row["exp(coef)"], abs=2e-6), term
        assert got["ci_lower"] == pytest.approx(row["exp(coef) lower 95%"], abs=2e-6), term
        assert got["ci_upper"] == pytest.approx(row["exp(coef) upper 95%"], abs=2e-6), term
        assert got["p"] == pytest.approx(row["p"], rel=1e-5), term


def test_17_time_varying_dupilumab_and_matched_sets_match_lifelines(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Primary (time-varying), matched-set (stratified), unadjusted and fixed-group models over
    HTTP equal lifelines fits on the (start, stop] table written from the same 24 patients."""
    _post(fhir, _set_patients())
    ids = _subject_ids(api)
    sid = {
        _set_member(k, j)[0]: ids[_set_member(k, j)[1].isoformat()]
        for k in range(len(SETS))
        for j in range(3)
    }
    out = _outcomes(api)["outcomes"]
    assert out["groups"] == {"dupilumab": 8, "control_1": 16, "control_2": 0}
    matching = out["matching"]["control_1"]
    # the body counts the sets; the listing says who is in which, and as what
    assert (matching["sets"], matching["matched_controls"], matching["unmatched"]) == (8, 16, 0)
    assert "matched_sets" not in matching
    rows = _listing(api)
    numbers = {rows[sid[f"m{k}-0"]]["matched_sets"]["control_1"]["set"] for k in range(len(SETS))}
    assert numbers == set(range(1, len(SETS) + 1))  # every set numbered once
    for k in range(len(SETS)):
        number = rows[sid[f"m{k}-0"]]["matched_sets"]["control_1"]["set"]
        for j in range(3):
            assert rows[sid[f"m{k}-{j}"]]["matched_sets"] == {
                "control_1": {"set": number, "role": "control" if j else "case"},
                "control_2": None,
            }
    models = out["cox"]["control_1"]
    assert [
        models[m]["role"] for m in ("primary", "matched_sets", "unadjusted", "fixed_group")
    ] == [
        "primary",
        "supplementary",
        "supplementary",
        "sensitivity",
    ]
    assert models["fixed_group"]["label"].startswith("Sensitivity analysis")
    time_varying = _long_table(dupilumab_fixed=False)
    fixed = _long_table(dupilumab_fixed=True)
    adjusted = ["dupilumab", "glucocorticoid", "age"]

    primary = models["primary"]
    assert (primary["estimable"], primary["n_subjects"], primary["n_events"]) == (True, 24, 19)
    assert primary["n_rows"] == len(time_varying)
    assert primary["method"]["time_varying"] == ["dupilumab", "glucocorticoid"]
    assert primary["dropped_terms"] == [
        {"term": "sex", "reason": "one level only ('female')"},
        {"term": "race", "reason": "one level only ('2106-3')"},
        {"term": "icb_type", "reason": "one level only ('PD-1')"},
        {"term": "cancer_type", "reason": "one level only ('unknown')"},
        {"term": "stage", "reason": "one level only ('unknown')"},
        {"term": "charlson", "reason": "constant in the data (always 0)"},
    ]
    _same_terms(primary, _lifelines(time_varying, adjusted), adjusted)

    stratified = models["matched_sets"]
    assert (stratified["estimable"], stratified["n_strata"]) == (True, 8)
    assert stratified["method"]["stratified_by"] == "matched set"
    _same_terms(stratified, _lifelines(time_varying, adjusted, strata=True), adjusted)

    unadjusted = models["unadjusted"]
    assert unadjusted["glucocorticoid"] is None
    assert unadjusted["covariates"] == {}
    _same_terms(unadjusted, _lifelines(time_varying, ["dupilumab"]), ["dupilumab"])

    sensitivity = models["fixed_group"]
    assert sensitivity["method"]["time_varying"] == ["glucocorticoid"]
    _same_terms(sensitivity, _lifelines(fixed, adjusted), adjusted)
    # deaths on days 75–150 fall before three cases' first dose (days 160–300): the fixed group
    # credits that time to dupilumab, and its HR is lower
    assert sensitivity["dupilumab"]["hr"] < primary["dupilumab"]["hr"]


def _record(
    sid: str,
    group: Group,
    days: int,
    died: bool,
    *,
    dupilumab: int | None = None,
    gc: int | None = None,
) -> CirAESubject:
    """A hand-built analysis record: ICB on 2021-06-01, follow-up `days`, death or censoring."""
    icb = ICB_SETS
    return CirAESubject(
        patient_id=sid,
        subject_id=sid,
        group=group,
        icb_start=icb,
        icb_type="PD-1",
        sex="female",
        race="2106-3",
        age_years=60.0,
        charlson=0,
        cancer_type="C34",
        stage="IV",
        cirae_onset=icb + dt.timedelta(days=5) if group != "control_2" else None,
        resolution="none" if group != "control_2" else None,
        dupilumab_start=icb + dt.timedelta(days=dupilumab) if dupilumab is not None else None,
        glucocorticoid_start=icb + dt.timedelta(days=gc) if gc is not None else None,
        death=icb + dt.timedelta(days=days) if died else None,
        last_seen=icb + dt.timedelta(days=days),
    )


@pytest.mark.parametrize(
    ("dupilumab", "gc", "days", "died", "coding", "expected"),
    [
        # dupilumab from day 40, glucocorticoids from day 90, death on day 200
        (
            40,
            90,
            200,
            True,
            "time_varying",
            [(0, 40, 0, 0, False), (40, 90, 0, 1, False), (90, 200, 1, 1, True)],
        ),
        # the fixed group: dupilumab over the whole follow-up
        (40, 90, 200, True, "fixed_group", [(0, 90, 0, 1, False), (90, 200, 1, 1, True)]),
        # both on one day: one switch
        (60, 60, 100, False, "time_varying", [(0, 60, 0, 0, False), (60, 100, 1, 1, False)]),
        # dupilumab on the death day: that death is unexposed
        (100, None, 100, True, "time_varying", [(0, 100, 0, 0, True)]),
    ],
)
def test_17_counting_process_intervals(
    dupilumab: int,
    gc: int | None,
    days: int,
    died: bool,
    coding: DupilumabCoding,
    expected: list[Any],
) -> None:
    """(start, stop] rows: a covariate switching on at day c is 0 on (·, c] and 1 after."""
    subject = _record("d", "dupilumab", days, died, dupilumab=dupilumab, gc=gc)
    assert tv_intervals(subject, dupilumab=coding) == tuple(
        Interval(float(a), float(b), g, e, d) for a, b, g, d, e in expected
    )


def test_17_stratified_time_fixed_model_equals_coxph_with_strata() -> None:
    """With nothing time-varying the matched-set model is CoxPHFitter(strata=) on the same rows."""
    rows = [  # set, id, group, days, died
        (1, "a1", "dupilumab", 120, True), (1, "a2", "control_1", 80, True), (1, "a3", "control_1", 300, False),
        (2, "b1", "dupilumab", 400, False), (2, "b2", "control_1", 150, True), (2, "b3", "control_1", 210, True),
        (3, "c1", "dupilumab", 90, True), (3, "c2", "control_1", 60, True), (3, "c3", "control_1", 500, True),
        (4, "d1", "dupilumab", 260, True), (4, "d2", "control_1", 330, True), (4, "d3", "control_1", 45, True),
        (5, "e1", "dupilumab", 600, True), (5, "e2", "control_1", 240, False), (5, "e3", "control_1", 100, True),
    ]  # fmt: skip
    subjects = [_record(sid, group, days, died) for _, sid, group, days, died in rows]  # type: ignore[arg-type]
    spec = ModelSpec(
        name="matched_sets",
        label="stratified, fixed group, nothing time-varying",
        role="supplementary",
        dupilumab="fixed_group",
        stratified_by_matched_set=True,
        glucocorticoid=False,
        adjusted=False,
        design="test",
    )
    fit = fit_cox(
        spec,
        subjects,
        (),
        0.95,
        min_events_per_parameter=1,
        strata={sid: f"s{k}" for k, sid, *_ in rows},
    )
    table = pd.DataFrame(
        [
            {"set": k, "days": days, "died": int(died), "dupilumab": int(g == "dupilumab")}
            for k, _, g, days, died in rows
        ]
    )
    reference = CoxPHFitter(alpha=0.05).fit(
        table, duration_col="days", event_col="died", strata=["set"], fit_options=TIGHT
    )
    row = reference.summary.loc["dupilumab"]
    assert fit.estimable is True
    assert (fit.n_subjects, fit.n_events, fit.n_strata, fit.n_rows) == (15, 12, 5, 15)
    assert fit.dupilumab is not None
    assert fit.dupilumab.hr == pytest.approx(row["exp(coef)"], abs=2e-6)
    assert fit.dupilumab.ci_lower == pytest.approx(row["exp(coef) lower 95%"], abs=2e-6)
    assert fit.dupilumab.ci_upper == pytest.approx(row["exp(coef) upper 95%"], abs=2e-6)
    assert fit.dupilumab.p == pytest.approx(row["p"], rel=1e-5)


def test_17_a_term_constant_within_every_matched_set_is_dropped() -> None:
    """Exact matching keys do not vary inside a set: a stratified model cannot estimate them."""
    rows = [("s1", "a1", "dupilumab", 120, True, "female"), ("s1", "a2", "control_1", 80, True, "female"),
            ("s2", "b1", "dupilumab", 90, True, "male"), ("s2", "b2", "control_1", 300, True, "male"),
            ("s3", "c1", "dupilumab", 200, True, "male"), ("s3", "c2", "control_1", 60, True, "male")]  # fmt: skip
    subjects = [
        dataclasses.replace(_record(sid, group, days, died, dupilumab=30), sex=sex)  # type: ignore[arg-type]
        for _, sid, group, days, died, sex in rows
    ]
    design = build_design(
        subjects, ("sex",), strata={sid: k for k, sid, *_ in rows}, glucocorticoid=False
    )
    assert design.terms == ("dupilumab",)
    assert design.dropped == (
        {"term": "sex=female", "reason": "constant within every matched set"},
    )


# -- 17. a planted dupilumab HR of 0.74, dupilumab only for patients alive on its day ----------------


def _cohort_of(synthetic: SyntheticCohort) -> list[CirAESubject]:
    """The synthetic FHIR through the real mappers and cohort builder."""
    by_patient: dict[str, list[TrialEvent]] = {}
    for event in events_of(TERMS, synthetic.resources):
        assert event.patient_id is not None
        by_patient.setdefault(event.patient_id, []).append(event)
    cohort = build_cohort(PROTOCOL, [CohortPatient(p, p, e) for p, e in sorted(by_patient.items())])
    truth = {t.patient_id: t for t in synthetic.truth}
    assert [(s.group, s.dupilumab_start, s.glucocorticoid_start, s.death) for s in cohort] == [
        (t.group, t.dupilumab_start, t.glucocorticoid_start, t.death)
        for t in (truth[s.patient_id] for s in cohort)
    ]
    return cohort


def _dupilumab_hr(fit: CoxFit) -> float:
    assert fit.estimable, fit.reason
    assert fit.dupilumab is not None
    assert fit.dupilumab.hr is not None
    return fit.dupilumab.hr


def test_17_planted_dupilumab_hr_a_few_seeds() -> None:
    """3 seeds of 2000 patients, the primary and fixed-group models vs both control groups.

    One fit's log-HR has a standard error near 0.1, so a few seeds pin the mean only loosely: the
    mean log-HR of the 6 primary fits is within 0.15 of log 0.74 (the slow test over 20 seeds
    holds the issue's 0.05 on the HR). What a few seeds do show: in every fit the fixed-group
    model, which credits a case's time before its first dose to dupilumab, gives the lower HR.
    (Seeds 0–2: primary 0.787, 0.822, 0.788, 0.796, 0.951, 0.838; fixed group 0.743, 0.724,
    0.751, 0.716, 0.902, 0.750.)
    """
    primary: list[float] = []
    for seed in (0, 1, 2):
        cohort = _cohort_of(generate_time_varying(2000, seed))
        cases = [s for s in cohort if s.group == "dupilumab"]
        for control_group in ("control_1", "control_2"):
            controls = [s for s in cohort if s.group == control_group]
            matched = match(PROTOCOL.cohort.matching, cases, controls, control_group)
            population = matched_population(matched, cohort)
            adjustment = PROTOCOL.cohort.adjustment
            hr = _dupilumab_hr(fit_cox(PRIMARY, population, adjustment, 0.95))
            fixed = _dupilumab_hr(fit_cox(FIXED_GROUP, population, adjustment, 0.95))
            assert fixed < hr, (seed, control_group, fixed, hr)
            primary.append(hr)
    mean_log = statistics.mean(math.log(hr) for hr in primary)
    assert abs(mean_log - math.log(PLANTED_DUPILUMAB_HR)) < 0.15, primary


@pytest.mark.slow
def test_17_planted_dupilumab_hr_over_20_seeds() -> None:
    """Issue 18: over 20 seeds of 2000 patients the mean primary-model dupilumab HR is within 0.05
    of 0.74 (the whole analysis, both comparisons), and the glucocorticoid HR within 0.15 of 2.0.

    Seeds 0–19 give 0.777 vs control 1 and 0.760 vs control 2 (fixed group: 0.741 and 0.671;
    glucocorticoids 2.03 and 1.98). The small excess vs control 1 is the time before cirAE onset,
    which every subject of that comparison survived: over 60 seeds of the whole cirAE population,
    unmatched, the HR was 0.760, and 0.752 with entry at cirAE onset.
    """
    primary: dict[str, list[float]] = {"control_1": [], "control_2": []}
    gc: dict[str, list[float]] = {"control_1": [], "control_2": []}
    for seed in range(20):
        analysis = analyse(PROTOCOL, _cohort_of(generate_time_varying(2000, seed)))
        for control_group in primary:
            fit = analysis.comparisons[control_group].models["primary"]  # type: ignore[index]
            primary[control_group].append(_dupilumab_hr(fit))
            assert fit.glucocorticoid is not None
            assert fit.glucocorticoid.hr is not None
            gc[control_group].append(fit.glucocorticoid.hr)
    for control_group in primary:
        mean = statistics.mean(primary[control_group])
        assert abs(mean - PLANTED_DUPILUMAB_HR) < 0.05, (
            control_group,
            mean,
            primary[control_group],
        )
        assert abs(statistics.mean(gc[control_group]) - 2.0) < 0.15, (
            control_group,
            gc[control_group],
        )
