"""The live server answers and the store starts empty."""

from __future__ import annotations

import httpx
from sqlalchemy import Engine

from tests.conftest import counts
from tests.kit.store import store_counts


def test_metadata_names_fhir_r4(fhir: httpx.Client) -> None:
    response = fhir.get("/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.json()["fhirVersion"] == "4.0.1"


def test_create_then_read_round_trips_bytes(fhir: httpx.Client, engine: Engine) -> None:
    body = b'{"resourceType":"Observation","status":"final","code":{"text":"w"},"valueQuantity":{"value":0.10,"unit":"%"}}'
    created = fhir.post("/Observation", content=body)
    assert created.status_code == 201
    read = fhir.get(created.headers["location"].split("/fhir/", 1)[1].split("/_history")[0])
    assert b'"value":0.10' in read.content
    assert counts(engine) == store_counts(fhir_resource=1, fhir_resource_version=1)
