"""The CapabilityStatement is truthful: what it advertises works, and nothing else is accepted."""

from __future__ import annotations

import httpx
import pytest

from fhir_mapping.resource_types import SUPPORTED_TYPES


@pytest.fixture
def capability(fhir: httpx.Client) -> dict[str, object]:
    response = fhir.get("/metadata")
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


def test_types_and_interactions(capability: dict[str, object]) -> None:
    rest = capability["rest"][0]  # type: ignore[index]
    assert capability["fhirVersion"] == "4.0.1"
    assert {r["type"] for r in rest["resource"]} == {*SUPPORTED_TYPES, "AuditEvent"}
    audit = next(r for r in rest["resource"] if r["type"] == "AuditEvent")
    assert [i["code"] for i in audit["interaction"]] == ["read", "search-type"]  # never written
    assert [i["code"] for i in rest["interaction"]] == ["transaction", "batch"]
    assert [o["name"] for o in rest["operation"]] == ["import"]


def test_every_advertised_search_parameter_is_honoured(
    capability: dict[str, object], fhir: httpx.Client
) -> None:
    samples = {"token": "x", "reference": "Patient/x", "date": "ge2020-01-01"}
    for resource in capability["rest"][0]["resource"]:  # type: ignore[index]
        for param in resource["searchParam"]:
            value = "Patient/x" if param["name"] == "patient" else samples[param["type"]]
            response = fhir.get(f"/{resource['type']}", params={param["name"]: value})
            assert (resource["type"], param["name"], response.status_code) == (
                resource["type"],
                param["name"],
                200,
            )
        unadvertised = fhir.get(f"/{resource['type']}", params={"name": "x"})
        assert unadvertised.status_code == 400


def test_unadvertised_type_is_refused(fhir: httpx.Client) -> None:
    response = fhir.post("/Composition", json={"resourceType": "Composition"})
    assert (response.status_code, response.json()["issue"][0]["code"]) == (404, "not-supported")
