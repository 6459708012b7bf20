"""Transaction semantics: atomic, order-independent, references rewritten, conditional logic."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import Engine

from service.fhir import ingest
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON, counts
from tests.kit import fhir as kit
from tests.kit.live import served

P_URN = "urn:uuid:6d1bd0a8-0a8e-4b8e-9f3a-1f6f0c1e2a01"
O_URN = "urn:uuid:6d1bd0a8-0a8e-4b8e-9f3a-1f6f0c1e2a02"


def _post(fhir: httpx.Client, body: bytes) -> httpx.Response:
    return fhir.post("", content=body)


def test_urn_references_are_rewritten_whatever_the_entry_order(fhir: httpx.Client) -> None:
    # The Observation comes first and points forward at the Patient.
    body = kit.transaction(
        kit.post_entry(kit.viable_tumour(subject=P_URN), full_url=O_URN),
        kit.post_entry(kit.patient(mrn="123"), full_url=P_URN),
    )
    response = _post(fhir, body)
    assert response.status_code == 200
    result = response.json()
    assert result["type"] == "transaction-response"
    assert kit.statuses(result) == ["201 Created", "201 Created"]
    obs_location, patient_location = (e["response"]["location"] for e in result["entry"])
    patient_id = patient_location.split("/")[1]
    assert patient_id == P_URN.removeprefix("urn:uuid:")
    stored = fhir.get(obs_location.split("/_history")[0]).json()
    assert stored["subject"] == {"reference": f"Patient/{patient_id}"}


def test_reference_cycles_between_entries_resolve(fhir: httpx.Client) -> None:
    a = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "partOf": {"reference": O_URN},
    }
    b = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "partOf": {"reference": P_URN},
    }
    response = _post(
        fhir,
        kit.transaction(
            kit.entry(method="POST", url="Encounter", resource=a, full_url=P_URN),
            kit.entry(method="POST", url="Encounter", resource=b, full_url=O_URN),
        ),
    )
    assert response.status_code == 200
    first = fhir.get(f"/Encounter/{P_URN[9:]}").json()
    second = fhir.get(f"/Encounter/{O_URN[9:]}").json()
    assert first["partOf"]["reference"] == f"Encounter/{O_URN[9:]}"
    assert second["partOf"]["reference"] == f"Encounter/{P_URN[9:]}"


def test_replaying_a_transaction_returns_the_same_ids_and_writes_nothing(
    fhir: httpx.Client, engine: Engine
) -> None:
    body = kit.transaction(
        kit.post_entry(kit.patient(mrn="123"), full_url=P_URN),
        kit.post_entry(kit.viable_tumour(subject=P_URN), full_url=O_URN),
    )
    first = _post(fhir, body).json()
    before = counts(engine)
    second = _post(fhir, body).json()
    assert kit.statuses(second) == ["200 OK", "200 OK"]
    assert [e["response"]["location"] for e in second["entry"]] == [
        e["response"]["location"] for e in first["entry"]
    ]
    assert counts(engine) == before


def test_if_none_exist_reuses_the_match_and_references_point_at_it(
    fhir: httpx.Client, engine: Engine
) -> None:
    existing = fhir.put("/Patient/known", json=kit.patient(mrn="777", id="known"))
    assert existing.status_code == 201
    body = kit.transaction(
        kit.post_entry(
            kit.patient(mrn="777", active=True),
            full_url=P_URN,
            ifNoneExist="identifier=urn:mrn|777",
        ),
        kit.post_entry(kit.viable_tumour(subject=P_URN), full_url=O_URN),
    )
    result = _post(fhir, body).json()
    assert kit.statuses(result) == ["200 OK", "201 Created"]
    assert result["entry"][0]["response"]["location"] == "Patient/known/_history/1"
    assert fhir.get(f"/Observation/{O_URN[9:]}").json()["subject"]["reference"] == "Patient/known"
    assert counts(engine)["fhir_resource"] == 2


def test_conditional_reference_resolves_to_the_single_match(fhir: httpx.Client) -> None:
    fhir.put("/Patient/p1", json=kit.patient(mrn="555", id="p1"))
    body = kit.transaction(
        kit.post_entry(kit.viable_tumour(subject="Patient?identifier=urn:mrn|555"), full_url=O_URN)
    )
    assert _post(fhir, body).status_code == 200
    assert fhir.get(f"/Observation/{O_URN[9:]}").json()["subject"]["reference"] == "Patient/p1"


def test_put_update_delete_and_get_are_processed_in_spec_order(
    fhir: httpx.Client, engine: Engine
) -> None:
    fhir.put("/Patient/gone", json=kit.patient(mrn="1", id="gone"))
    fhir.put("/Patient/kept", json=kit.patient(mrn="2", id="kept"))
    body = kit.transaction(
        {"request": {"method": "GET", "url": "Patient/kept"}},
        kit.put_entry(kit.patient(mrn="2", id="kept", active=True)),
        {"request": {"method": "DELETE", "url": "Patient/gone"}},
    )
    result = _post(fhir, body).json()
    assert kit.statuses(result) == ["200 OK", "200 OK", "204 No Content"]
    assert (
        result["entry"][0]["response"]["etag"] == 'W/"2"'
    )  # GET sees the PUT of the same transaction
    assert fhir.get("/Patient/gone").status_code == 410
    assert fhir.get("/Patient/kept").json()["active"] is True
    assert counts(engine)["fhir_resource_version"] == 4


def test_if_match_on_the_current_version_updates(fhir: httpx.Client) -> None:
    fhir.put("/Patient/v", json=kit.patient(mrn="9", id="v"))
    body = kit.transaction(
        kit.put_entry(kit.patient(mrn="9", id="v", active=False), ifMatch='W/"1"')
    )
    result = _post(fhir, body).json()
    assert result["entry"][0]["response"]["etag"] == 'W/"2"'


def test_conditional_update_and_delete_inside_a_transaction(fhir: httpx.Client) -> None:
    fhir.put("/Patient/c1", json=kit.patient(mrn="c1", id="c1"))
    body = kit.transaction(
        kit.entry(
            method="PUT",
            url="Patient?identifier=urn:mrn|c1",
            resource=kit.patient(mrn="c1", active=True),
        ),
        kit.entry(
            method="PUT",
            url="Patient?identifier=urn:mrn|new",
            resource=kit.patient(mrn="new"),
            full_url=P_URN,
        ),
    )
    result = _post(fhir, body).json()
    assert kit.statuses(result) == ["200 OK", "201 Created"]
    assert result["entry"][0]["response"]["location"] == "Patient/c1/_history/2"
    deleting = kit.transaction(
        {"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|c1"}}
    )
    assert kit.statuses(_post(fhir, deleting).json()) == ["204 No Content"]
    assert fhir.get("/Patient/c1").status_code == 410


def test_delete_then_recreate_continues_the_version_history(fhir: httpx.Client) -> None:
    assert fhir.put("/Patient/r", json=kit.patient(mrn="r", id="r")).status_code == 201
    assert fhir.delete("/Patient/r").status_code == 204
    recreated = fhir.put("/Patient/r", json=kit.patient(mrn="r", id="r"))
    assert recreated.status_code == 201
    assert recreated.headers["etag"] == 'W/"3"'
    assert fhir.get("/Patient/r/_history/2").status_code == 410
    assert fhir.get("/Patient/r/_history/1").json()["meta"]["versionId"] == "1"


def test_collection_is_an_atomic_upsert(fhir: httpx.Client, engine: Engine) -> None:
    body = kit.transaction(
        {"fullUrl": P_URN, "resource": kit.patient(mrn="col")},
        {
            "fullUrl": "http://hospital.example/fhir/Observation/o-1",
            "resource": kit.viable_tumour(subject=P_URN),
        },
        type="collection",
    )
    result = _post(fhir, body).json()
    assert kit.statuses(result) == ["201 Created", "201 Created"]
    assert fhir.get("/Observation/o-1").json()["subject"]["reference"] == f"Patient/{P_URN[9:]}"
    again = _post(fhir, body).json()
    assert kit.statuses(again) == ["200 OK", "200 OK"]
    assert counts(engine)["fhir_resource_version"] == 2


def test_a_collection_carrying_a_resource_again_stores_successive_versions(
    fhir: httpx.Client,
) -> None:
    """bdl-7 aside, feeds repeat a resource as it changes: each copy is a version, in order."""
    copies = [kit.patient(mrn="v", id="v", gender=g) for g in ("male", "female", "other")]
    body = kit.transaction(
        {"fullUrl": "http://hospital.example/fhir/Patient/v", "resource": copies[0]},
        {"fullUrl": "http://hospital.example/fhir/Patient/w", "resource": kit.patient(id="w")},
        {"fullUrl": "http://hospital.example/fhir/Patient/v", "resource": copies[1]},
        {"fullUrl": "http://hospital.example/fhir/Patient/v", "resource": copies[2]},
        type="collection",
    )
    result = _post(fhir, body).json()
    assert [e["response"]["location"] for e in result["entry"]] == [
        "Patient/v/_history/1",
        "Patient/w/_history/1",
        "Patient/v/_history/2",
        "Patient/v/_history/3",
    ]
    assert [fhir.get(f"/Patient/v/_history/{n}").json()["gender"] for n in (1, 2, 3)] == [
        "male",
        "female",
        "other",
    ]


def test_message_stores_everything_but_the_header(fhir: httpx.Client, engine: Engine) -> None:
    header = {
        "resourceType": "MessageHeader",
        "eventCoding": {"code": "admin-notify"},
        "source": {"endpoint": "urn:x"},
    }
    body = kit.transaction(
        {"resource": header}, {"fullUrl": P_URN, "resource": kit.patient(mrn="msg")}, type="message"
    )
    result = _post(fhir, body).json()
    assert kit.statuses(result) == ["201 Created"]
    assert counts(engine)["fhir_resource"] == 1


def test_empty_transaction_answers_an_empty_response(fhir: httpx.Client) -> None:
    result = _post(fhir, kit.transaction())
    assert result.status_code == 200
    assert result.json()["entry"] == []


def test_prefer_representation_returns_the_stored_resources(fhir: httpx.Client) -> None:
    body = kit.transaction(kit.post_entry(kit.patient(mrn="rep"), full_url=P_URN))
    result = fhir.post("", content=body, headers={"prefer": "return=representation"}).json()
    assert result["entry"][0]["resource"]["id"] == P_URN[9:]
    assert result["entry"][0]["resource"]["meta"]["versionId"] == "1"


def test_batch_reads_and_searches_answer_with_their_resources(fhir: httpx.Client) -> None:
    fhir.put("/Patient/s1", json=kit.patient(mrn="s1", id="s1"))
    fhir.put("/Observation/o1", json=kit.viable_tumour(subject="Patient/s1", id="o1"))
    body = kit.transaction(
        {"request": {"method": "GET", "url": "Observation?patient=s1"}},
        {"request": {"method": "GET", "url": "Patient/s1"}},
        {"request": {"method": "GET", "url": "Patient/none"}},
        {"request": {"method": "POST", "url": "ValueSet/$lookup"}},
        type="batch",
    )
    result = fhir.post("/", content=body).json()
    assert kit.statuses(result) == ["200 OK", "200 OK", "404 Not Found", "422 Unprocessable Entity"]
    searchset = result["entry"][0]["resource"]
    assert (searchset["type"], searchset["total"]) == ("searchset", 1)
    assert searchset["entry"][0]["resource"]["id"] == "o1"
    assert result["entry"][1]["resource"]["id"] == "s1"
    assert result["entry"][3]["response"]["outcome"]["issue"][0]["code"] == "not-supported"


def test_batch_gets_we_do_not_serve_are_not_supported_rather_than_malformed(
    fhir: httpx.Client,
) -> None:
    fhir.put("/Patient/s1", json=kit.patient(mrn="s1", id="s1"))
    urls = [
        ("Patient/s1/_history", "history"),
        ("Patient/s1/Observation", "compartment search"),
        ("Patient/s1?_summary=true", "parameters on a read"),
        ("Patient/s1/_history/1?_format=json", "parameters on a read"),
    ]
    body = kit.transaction(
        *({"request": {"method": "GET", "url": url}} for url, _ in urls), type="batch"
    )
    result = fhir.post("/", content=body).json()
    assert kit.statuses(result) == ["422 Unprocessable Entity"] * 4
    for i, (url, what) in enumerate(urls):
        [issue] = result["entry"][i]["response"]["outcome"]["issue"]
        assert (issue["code"], issue["diagnostics"]) == (
            "not-supported",
            f"Bundle.entry[{i}].request.url: {url!r} ({what}) is not supported inside a Bundle",
        )


def test_a_create_never_overwrites_the_resource_its_urn_uuid_names(
    fhir: httpx.Client, engine: Engine
) -> None:
    taken = P_URN.removeprefix("urn:uuid:")
    assert fhir.put(f"/Patient/{taken}", json=kit.patient(mrn="owner", id=taken)).status_code == 201
    body = kit.transaction(
        kit.post_entry(kit.patient(mrn="stranger"), full_url=P_URN),
        kit.post_entry(kit.viable_tumour(subject=P_URN), full_url=O_URN),
    )
    result = _post(fhir, body).json()
    assert kit.statuses(result) == ["201 Created", "201 Created"]
    new_id = result["entry"][0]["response"]["location"].split("/")[1]
    assert new_id != taken
    assert result["entry"][0]["response"]["location"] == f"Patient/{new_id}/_history/1"
    kept = fhir.get(f"/Patient/{taken}").json()
    assert (kept["meta"]["versionId"], kept["identifier"][0]["value"]) == ("1", "owner")
    assert fhir.get(f"/Observation/{O_URN[9:]}").json()["subject"] == {
        "reference": f"Patient/{new_id}"
    }
    assert counts(engine)["fhir_resource_version"] == 3


def test_a_create_does_not_continue_a_deleted_resource(fhir: httpx.Client) -> None:
    taken = P_URN.removeprefix("urn:uuid:")
    assert fhir.put(f"/Patient/{taken}", json=kit.patient(mrn="owner", id=taken)).status_code == 201
    assert fhir.delete(f"/Patient/{taken}").status_code == 204
    result = _post(fhir, kit.transaction(kit.post_entry(kit.patient(mrn="owner"), full_url=P_URN)))
    location = result.json()["entry"][0]["response"]["location"]
    assert location.endswith("/_history/1")
    assert location.split("/")[1] != taken
    assert fhir.get(f"/Patient/{taken}").status_code == 410


def test_an_if_none_exist_match_and_a_put_of_it_overlap(fhir: httpx.Client, engine: Engine) -> None:
    assert fhir.put("/Patient/ov1", json=kit.patient(mrn="ov1", id="ov1")).status_code == 201
    before = counts(engine)
    body = kit.transaction(
        kit.post_entry(
            kit.patient(mrn="ov1"), full_url=P_URN, ifNoneExist="identifier=urn:mrn|ov1"
        ),
        kit.put_entry(kit.patient(mrn="ov1", id="ov1", active=True)),
    )
    response = _post(fhir, body)
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["code"] == "duplicate"
    assert issue["expression"] == ["Bundle.entry[0].resource", "Bundle.entry[1].resource"]
    assert issue["diagnostics"] == (
        "Bundle.entry[0].resource and Bundle.entry[1].resource both name Patient/ov1; "
        "one identity per request"
    )
    assert counts(engine) == before


def test_absolute_references_are_kept_and_never_fetched(fhir: httpx.Client, engine: Engine) -> None:
    """A reference to another server is stored as sent; nothing leaves the service to resolve it."""
    remote = "https://other-hospital.example/fhir/Patient/remote-1"
    body = kit.transaction(kit.post_entry(kit.viable_tumour(subject=remote), full_url=O_URN))
    # Any other host would be refused by respx (assert_all_mocked), failing the request.
    with respx.mock(assert_all_called=False) as outside:
        outside.route(host="127.0.0.1").pass_through()
        other = outside.route(host="other-hospital.example").respond(200, json={})
        response = _post(fhir, body)
        stored = fhir.get(f"/Observation/{O_URN[9:]}")
    assert response.status_code == 200, response.text
    assert stored.json()["subject"] == {"reference": remote}
    assert other.call_count == 0
    assert counts(engine)["fhir_resource"] == 1


def test_a_refused_criterion_is_located_in_its_entry(fhir: httpx.Client, engine: Engine) -> None:
    before = counts(engine)
    cases = [
        (
            kit.post_entry(kit.patient(mrn="x"), full_url=P_URN, ifNoneExist="birthdate=2000"),
            "Bundle.entry[0].request.ifNoneExist",
        ),
        (
            kit.entry(method="PUT", url="Patient?birthdate=2000", resource=kit.patient(mrn="x")),
            "Bundle.entry[0].request.url",
        ),
        (
            kit.post_entry(kit.viable_tumour(subject="Patient?birthdate=2000"), full_url=O_URN),
            "Bundle.entry[0].resource.subject.reference",
        ),
    ]
    for sent, where in cases:
        response = _post(fhir, kit.transaction(sent))
        assert response.status_code == 400, response.text
        [issue] = response.json()["issue"]
        assert (issue["code"], issue["expression"]) == ("not-supported", [where])
        assert issue["diagnostics"].startswith(
            f"{where}: search parameter 'birthdate' is not supported for Patient"
        )
    assert counts(engine) == before


def test_a_ten_thousand_entry_transaction_is_stored_whole(
    fhir: httpx.Client, engine: Engine
) -> None:
    observations = [
        kit.post_entry(
            kit.viable_tumour(subject=P_URN, value=i), full_url=f"urn:uuid:{uuid.UUID(int=i)}"
        )
        for i in range(1, 10_000)
    ]
    body = kit.transaction(kit.post_entry(kit.patient(mrn="big"), full_url=P_URN), *observations)
    response = _post(fhir, body)
    assert response.status_code == 200, response.text[:2000]
    assert kit.statuses(response.json()) == ["201 Created"] * 10_000
    patient_id = P_URN.removeprefix("urn:uuid:")
    found = fhir.get("/Observation", params={"subject": f"Patient/{patient_id}", "_count": "0"})
    assert found.json()["total"] == 9_999
    assert counts(engine)["fhir_resource"] == 10_000


def test_versions_written_in_slices_move_heads_and_indexes_as_one_write(
    fhir: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slices of 2: updates, creates and a delete fall in different slices of one transaction.
    monkeypatch.setattr(ingest, "VERSIONS_PER_WRITE", 2)
    first = kit.transaction(
        *(kit.put_entry(kit.patient(id=f"s{i}", mrn=f"m{i}")) for i in range(3))
    )
    assert kit.statuses(_post(fhir, first).json()) == ["201 Created"] * 3
    second = kit.transaction(
        kit.put_entry(kit.patient(id="s0", mrn="n0")),
        kit.put_entry(kit.patient(id="s3", mrn="m3")),
        kit.entry(method="DELETE", url="Patient/s1"),
        kit.put_entry(kit.patient(id="s2", mrn="n2")),
        kit.put_entry(kit.patient(id="s4", mrn="m4")),
    )
    result = _post(fhir, second).json()
    assert kit.statuses(result) == [
        "200 OK",
        "201 Created",
        "204 No Content",
        "200 OK",
        "201 Created",
    ]
    assert fhir.get("Patient/s1").status_code == 410
    assert fhir.get("Patient/s2").json()["meta"]["versionId"] == "2"
    found = fhir.get("Patient", params={"identifier": f"{kit.MRN}|n0"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == ["s0"]
    stale = fhir.get("Patient", params={"identifier": f"{kit.MRN}|m2"}).json()
    assert stale.get("entry", []) == []
    assert fhir.get("Patient/s4").json()["identifier"][0]["value"] == "m4"


def test_a_bundle_carries_at_most_the_configured_reads(backend: str, new_database: Any) -> None:
    settings = Settings(
        database_url=new_database(backend), bundle_max_reads=3, webhook_interval_seconds=0
    )
    with (
        served(settings) as running,
        httpx.Client(base_url=f"{running.url}/fhir", headers=FHIR_JSON, timeout=60) as fhir,
    ):
        assert fhir.put("/Patient/r1", json=kit.patient(id="r1")).status_code == 201
        reads = [
            kit.entry(method="GET", url="Patient/r1"),
            kit.entry(method="GET", url="Patient?_id=r1"),
            kit.entry(method="GET", url="Patient?_id=none"),
        ]
        for kind in ("batch", "transaction"):
            at_most = fhir.post("", content=kit.transaction(*reads, type=kind))
            assert at_most.status_code == 200, at_most.text
            assert len(at_most.json()["entry"]) == 3
            one_more = kit.transaction(
                kit.put_entry(kit.patient(id=f"w-{kind}")),
                *reads,
                kit.entry(method="GET", url="Patient/r1"),
                type=kind,
            )
            refused = fhir.post("", content=one_more)
            assert refused.status_code == 400, refused.text
            (issue,) = refused.json()["issue"]
            assert (issue["code"], issue["expression"]) == ("too-costly", ["Bundle.entry"])
            assert "4 GET entries; at most 3" in issue["diagnostics"]
            # refused whole, before anything ran: the write in it was not made
            assert fhir.get(f"/Patient/w-{kind}").status_code == 404
