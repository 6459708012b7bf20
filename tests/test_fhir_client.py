"""A real FHIR client library (fhirpy) works against the live server: CRUD, search, transactions."""

from __future__ import annotations

from typing import Any

import fhirpy
import httpx
import pytest
from fhirpy.base.exceptions import ResourceNotFound

from tests.conftest import LiveServer

MRN = {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "NSCLC-0042"}
PATIENT_URN = "urn:uuid:5f0a6c1e-3b7d-4f2a-9c11-2d8e4b6a7c90"


@pytest.fixture
def client(server: LiveServer, fhir: httpx.Client) -> fhirpy.SyncFHIRClient:
    """fhirpy's synchronous client on /fhir of an empty store (`fhir` empties it)."""
    return fhirpy.SyncFHIRClient(server.fhir)


def test_create_read_search_update_delete(client: fhirpy.SyncFHIRClient) -> None:
    patient = client.resource(
        "Patient", identifier=[MRN], name=[{"family": "Lindqvist", "given": ["Ana"]}]
    )
    patient.save()
    pid = patient.id
    assert isinstance(pid, str)
    assert pid
    assert patient["meta"]["versionId"] == "1"

    read = client.get("Patient", pid)
    assert read["id"] == pid
    assert read["identifier"] == [MRN]
    assert read["name"] == [{"family": "Lindqvist", "given": ["Ana"]}]
    assert read["meta"]["versionId"] == "1"

    found = client.resources("Patient").search(identifier=f"{MRN['system']}|{MRN['value']}").fetch()
    assert [r.id for r in found] == [pid]
    assert client.resources("Patient").search(identifier=f"{MRN['system']}|nobody").fetch() == []

    patient["birthDate"] = "1961-04-12"
    patient.save()
    assert patient.id == pid
    assert patient["meta"]["versionId"] == "2"
    reread = client.get("Patient", pid)
    assert reread["meta"]["versionId"] == "2"
    assert reread["birthDate"] == "1961-04-12"
    assert reread["identifier"] == [MRN]

    assert client.delete("Patient", pid) is None  # 204 No Content
    with pytest.raises(ResourceNotFound) as gone:
        client.get("Patient", pid)
    assert '"code":"deleted"' in str(gone.value)
    assert (
        client.resources("Patient").search(identifier=f"{MRN['system']}|{MRN['value']}").fetch()
        == []
    )


def test_transaction_rewrites_urn_uuid_references(client: fhirpy.SyncFHIRClient) -> None:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0c9a7d1e-1f42-4b8e-9a55-6f3e2d1c0b7a",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "percent viable tumour"},
                    "subject": {"reference": PATIENT_URN},
                    "valueQuantity": {"value": 10, "unit": "%"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "fullUrl": PATIENT_URN,
                "resource": {"resourceType": "Patient", "identifier": [MRN]},
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    response = client.execute("/", method="post", data=bundle)
    assert response["resourceType"] == "Bundle"
    assert response["type"] == "transaction-response"
    answers = [e["response"] for e in response["entry"]]
    assert [a["status"] for a in answers] == ["201 Created", "201 Created"]
    obs_type, obs_id, _, obs_version = answers[0]["location"].split("/")
    pat_type, pat_id, _, pat_version = answers[1]["location"].split("/")
    assert (obs_type, obs_version, pat_type, pat_version) == ("Observation", "1", "Patient", "1")

    observation = client.get("Observation", obs_id)
    assert observation["subject"] == {"reference": f"Patient/{pat_id}"}
    patient = client.get("Patient", pat_id)
    assert patient["identifier"] == [MRN]
    subject = client.reference(reference=observation["subject"]["reference"]).to_resource()
    assert subject.id == pat_id
    assert [r.id for r in client.resources("Observation").search(patient=pat_id).fetch()] == [
        obs_id
    ]
