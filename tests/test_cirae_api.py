"""The cirAE cohort over HTTP: synthetic FHIR posted as transactions, analysed by the service."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer
from tests.kit.client import put_resources
from tests.kit.cohort import fresh_outcomes
from tests.kit.fhir import medication_administration, patient
from tests.synthetic_cirae import SyntheticCohort, generate

SYNTHETIC = generate(600, seed=20250612)


def _post_all(fhir: httpx.Client, cohort: SyntheticCohort, per_bundle: int = 50) -> None:
    for body in cohort.bundles(per_bundle):
        response = fhir.post("", content=json.dumps(body))
        assert response.status_code == 200, response.text[:2000]


@pytest.fixture
def api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    """A client on /api/v1 of an empty store."""
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=300) as client:
        yield client


def test_planted_glucocorticoid_hazard_ratio_through_the_service(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """600 patients posted as FHIR: groups as generated; GC HR 2.0 recovered in both models."""
    _post_all(fhir, SYNTHETIC)
    body = fresh_outcomes(api, "cirae-dupilumab")
    assert body["study"]["kind"] == "cohort"
    out = body["outcomes"]
    assert out["groups"] == dict(Counter(t.group for t in SYNTHETIC.truth))
    for control_group in ("control_1", "control_2"):
        model = out["cox"][control_group]["primary"]
        assert model["estimable"] is True, model.get("reason")
        gc = model["glucocorticoid"]
        assert gc["ci_lower"] <= 2.0 <= gc["ci_upper"], gc
        assert gc["ci_lower"] > 1.0, gc
        matching = out["matching"][control_group]
        assert model["n_subjects"] == matching["sets"] + matching["matched_controls"]
    assert out["excluded"] == {"n": 0, "by_reason": {}}
    survival = out["survival"]
    assert {g: s["n"] for g, s in survival.items()} == out["groups"]
    png = api.get("/studies/cirae-dupilumab/outcomes/plots/os.png")
    assert png.status_code == 200
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png.content) > 20_000


def test_a_tiny_cohort_is_not_estimable_not_an_error(api: httpx.Client, fhir: httpx.Client) -> None:
    """Six patients without dupilumab and one excluded: models say why not estimable; plots render."""
    small = generate(6, seed=7)
    _post_all(fhir, small)
    undated_death = patient(
        id="undated-death", gender="male", birth_date="1950-01-01", deceasedBoolean=True
    )
    icb = medication_administration(
        id="undated-death-icb",
        patient="undated-death",
        medication="pembrolizumab",
        effective="2021-03-01",
    )
    put_resources(fhir, undated_death, icb)
    out = fresh_outcomes(api, "cirae-dupilumab")["outcomes"]
    assert out["groups"] == {"dupilumab": 0, "control_1": 3, "control_2": 3}
    assert out["excluded"] == {"n": 1, "by_reason": {"death recorded without a date": 1}}
    listed = api.get("/studies/cirae-dupilumab/outcomes/excluded").json()
    assert [r["reason"] for r in listed["excluded"]] == ["death recorded without a date"]
    assert listed["excluded"][0]["subject_id"].startswith("S-")  # pseudonymous, never the FHIR id
    for control_group in ("control_1", "control_2"):
        model = out["cox"][control_group]["primary"]
        assert model["estimable"] is False
        assert model["reason"] == "the dupilumab group is empty"
    svg = api.get("/studies/cirae-dupilumab/outcomes/plots/os.svg")
    assert svg.status_code == 200
    assert svg.content.lstrip().startswith(b"<?xml")
