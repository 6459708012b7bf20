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

from tests.conftest import LiveServer
from tests.kit import fhir as kit
from tests.kit.client import put_resources

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
