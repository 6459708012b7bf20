"""FHIR input that breaks naive code: refused with the right OperationOutcome, nothing half-written.

Every test seeds the store, records the row counts, sends one bad request over real HTTP and checks
the exact status, the OperationOutcome issue code and the FHIRPath of the offending element, then
that the store is exactly as before. Runs on SQLite and PostgreSQL (the `backend` fixture).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpcore
import httpx
import pytest
from sqlalchemy import Engine

from service.infra.settings import Settings
from tests.conftest import LiveServer, counts, refuse_server_errors
from tests.kit.fhir import (
    medication_administration,
    observation,
    post_entry,
    reference,
    transaction,
)
from tests.kit.store import grown, store_counts

MIB = 1024 * 1024
SEEDED = store_counts(fhir_resource=1, fhir_resource_version=1, fhir_identifier=1, trial_event=1)
VALID_PATIENT = b'{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"new-1"}]}'


@pytest.fixture(autouse=True)
def no_server_errors(fhir: httpx.Client) -> None:
    """No request in this file may be answered with a 5xx."""
    refuse_server_errors(fhir)


def seed(fhir: httpx.Client, engine: Engine) -> dict[str, int]:
    """One valid Patient (identifier urn:mrn|seed); returns the counts afterwards."""
    created = fhir.post(
        "/Patient",
        content=b'{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"seed"}],"active":true}',
    )
    assert created.status_code == 201, created.text
    before = counts(engine)
    assert before == SEEDED
    return before


def put_patient(fhir: httpx.Client, rid: str, mrn: str) -> None:
    """Create Patient/{rid} with identifier urn:mrn|{mrn} at version 1."""
    body = {
        "resourceType": "Patient",
        "id": rid,
        "identifier": [{"system": "urn:mrn", "value": mrn}],
    }
    created = fhir.put(f"/Patient/{rid}", content=json.dumps(body).encode())
    assert created.status_code == 201, created.text
    assert created.headers["etag"] == 'W/"1"'


def seed_twins(fhir: httpx.Client, engine: Engine) -> dict[str, int]:
    """The seed plus Patient/a and Patient/b, both with identifier urn:mrn|twin."""
    seed(fhir, engine)
    put_patient(fhir, "a", "twin")
    put_patient(fhir, "b", "twin")
    before = counts(engine)
    assert before == store_counts(
        fhir_resource=3, fhir_resource_version=3, fhir_identifier=3, trial_event=3
    )
    return before


def assert_outcome(
    response: httpx.Response, status: int, code: str, expression: str | None = None
) -> dict[str, Any]:
    """Exact status, an OperationOutcome, issue[0].code, and (when given) the element named."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"][0]["code"] == code, body
    if expression is not None:
        named = [e for issue in body["issue"] for e in issue.get("expression", [])]
        assert expression in named, body
    return body


# A minimal valid Observation: status, a code, and the subject it is about.
weight = partial(observation, code="weight", patient=None)


# -- JSON that is not (FHIR) JSON ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/Patient", b'{"resourceType":', id="malformed"),
        pytest.param(
            "/Observation",
            b'{"resourceType":"Observation","status":"final","code":{"text":"w"},'
            b'"valueQuantity":{"value":1e400}}',
            id="decimal-beyond-range",
        ),
        pytest.param(
            "/Patient", b'{"resourceType":"Patient","active":true,"active":false}', id="dup-keys"
        ),
        pytest.param(
            "/Observation",
            b'{"resourceType":"Observation","status":"final","code":{"text":"w"},'
            b'"valueQuantity":{"value":NaN}}',
            id="nan",
        ),
        pytest.param(
            "/Observation",
            b'{"resourceType":"Observation","status":"final","code":{"text":"w"},'
            b'"valueQuantity":{"value":Infinity}}',
            id="infinity",
        ),
        pytest.param("/Patient", b"", id="empty-body"),
        pytest.param("/Patient", b'[{"resourceType":"Patient"}]', id="json-array"),
    ],
)
def test_unparseable_json_is_a_structure_error(
    fhir: httpx.Client, engine: Engine, path: str, body: bytes
) -> None:
    before = seed(fhir, engine)
    response = fhir.post(path, content=body)
    assert_outcome(response, 400, "structure")
    assert counts(engine) == before


def test_a_leading_byte_order_mark_is_dropped(fhir: httpx.Client, engine: Engine) -> None:
    """RFC 8259 lets a parser ignore it; files from the HL7 validator and SMART Health Cards
    carry one. A declared charset of UTF-8 is accepted too."""
    before = seed(fhir, engine)
    response = fhir.post(
        "/Patient",
        content=b"\xef\xbb\xbf" + VALID_PATIENT,
        headers={"content-type": "application/fhir+json; charset=UTF-8"},
    )
    assert response.status_code == 201, response.text
    assert counts(engine) == grown(
        before, fhir_resource=1, fhir_resource_version=1, fhir_identifier=1, trial_event=1
    )


def test_a_resource_contained_in_a_contained_resource_is_refused(
    fhir: httpx.Client, engine: Engine
) -> None:
    """FHIR invariant dom-2: a contained resource SHALL NOT contain additional resources."""
    before = seed(fhir, engine)
    inner = {"resourceType": "Organization", "id": "o2", "name": "inner"}
    body = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "id": "o1", "contained": [inner]}],
        "managingOrganization": {"reference": "#o1"},
    }
    response = fhir.post("/Patient", content=json.dumps(body).encode())
    assert_outcome(response, 400, "invariant", "Patient.contained[0].contained")
    assert counts(engine) == before


def test_unpaired_surrogate_escape_is_a_value_error(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    response = fhir.post(
        "/Patient", content=b'{"resourceType":"Patient","name":[{"text":"\\ud800"}]}'
    )
    assert_outcome(response, 400, "value")
    assert counts(engine) == before


# -- media types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("application/xml", id="xml"),
        pytest.param("text/plain", id="text-plain"),
        pytest.param(None, id="no-content-type"),
        pytest.param("application/fhir+json; fhirVersion=5.0", id="fhirVersion-5.0"),
        pytest.param("application/fhir+json; charset=latin-1", id="charset-latin-1"),
        pytest.param('application/json; charset="ISO-8859-1"', id="charset-iso-8859-1"),
    ],
)
def test_wrong_content_type_is_unsupported_media_type(
    fhir: httpx.Client, engine: Engine, content_type: str | None
) -> None:
    before = seed(fhir, engine)
    request = fhir.build_request("POST", "/Patient", content=VALID_PATIENT)
    if content_type is None:
        del request.headers["content-type"]
    else:
        request.headers["content-type"] = content_type
    response = fhir.send(request)
    assert_outcome(response, 415, "not-supported")
    assert counts(engine) == before


def test_plain_application_json_is_accepted(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    response = fhir.post(
        "/Patient", content=VALID_PATIENT, headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["resourceType"] == "Patient"
    assert counts(engine) == grown(
        before, fhir_resource=1, fhir_resource_version=1, fhir_identifier=1, trial_event=1
    )


def test_accept_xml_only_is_not_acceptable(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    response = fhir.post(
        "/Patient", content=VALID_PATIENT, headers={"accept": "application/fhir+xml"}
    )
    assert_outcome(response, 406, "not-supported")
    assert counts(engine) == before


# -- schema violations --------------------------------------------------------------------------

_OBS = '"resourceType":"Observation","code":{"text":"weight"}'


@pytest.mark.parametrize(
    ("path", "body", "code", "expression"),
    [
        pytest.param(
            "/Observation",
            "{" + _OBS + ',"status":"final","effectiveDateTime":"2025-01-01T10:00:00"}',
            "value",
            "Observation.effectiveDateTime",
            id="datetime-without-zone",
        ),
        pytest.param(
            "/Observation",
            "{" + _OBS + ',"status":"final","valueQuantity":{"value":"5","unit":"kg"}}',
            "value",
            "Observation.valueQuantity.value",
            id="string-for-number",
        ),
        pytest.param(
            "/Patient",
            '{"resourceType":"Patient","active":"true"}',
            "value",
            "Patient.active",
            id="string-for-boolean",
        ),
        pytest.param(
            "/Patient",
            '{"resourceType":"Patient","foo":1}',
            "structure",
            "Patient.foo",
            id="unknown-element",
        ),
        pytest.param(
            "/Observation",
            "{" + _OBS + ',"status":"bogus"}',
            "code-invalid",
            "Observation.status",
            id="unknown-status-code",
        ),
        pytest.param(
            "/Patient",
            '{"resourceType":"Patient","birthDate":"2025-02-30"}',
            "value",
            "Patient.birthDate",
            id="february-30",
        ),
        pytest.param(
            "/Observation",
            "{" + _OBS + "}",
            "required",
            "Observation.status",
            id="missing-status",
        ),
    ],
)
def test_schema_violation_is_refused(
    fhir: httpx.Client, engine: Engine, path: str, body: str, code: str, expression: str
) -> None:
    before = seed(fhir, engine)
    response = fhir.post(path, content=body.encode())
    assert_outcome(response, 400, code, expression)
    assert counts(engine) == before


# -- not R4, not ours ---------------------------------------------------------------------------


def test_r5_element_is_refused_with_a_hint(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    body = medication_administration(  # with R5's occurence[x] in place of R4's effective[x]
        medication="dupilumab 300 mg", patient="seed", occurenceDateTime="2025-01-01T10:00:00Z"
    )
    response = fhir.post("/MedicationAdministration", content=json.dumps(body).encode())
    outcome = assert_outcome(
        response, 400, "structure", "MedicationAdministration.occurenceDateTime"
    )
    assert "R5" in outcome["issue"][0]["diagnostics"]
    assert counts(engine) == before


def test_unaccepted_resource_type_is_not_found(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    body = {
        "resourceType": "Composition",
        "status": "final",
        "type": {"text": "summary"},
        "date": "2025-01-01",
        "author": [{"display": "x"}],
        "title": "t",
    }
    response = fhir.post("/Composition", content=json.dumps(body).encode())
    assert_outcome(response, 404, "not-supported")
    assert counts(engine) == before


def test_body_type_differing_from_url_type_is_invalid(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    body = "{" + _OBS + ',"status":"final"}'
    response = fhir.post("/Patient", content=body.encode())
    assert_outcome(response, 400, "invalid", "resourceType")
    assert counts(engine) == before


def test_unknown_modifier_extension_is_refused(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    body = {
        "resourceType": "Patient",
        "modifierExtension": [
            {
                "url": "http://example.org/fhir/StructureDefinition/not-a-patient",
                "valueBoolean": True,
            }
        ],
        "active": True,
    }
    response = fhir.post("/Patient", content=json.dumps(body).encode())
    assert_outcome(response, 422, "extension", "Patient.modifierExtension")
    assert counts(engine) == before


def _with_contained_medication(reference: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "contained": [{"resourceType": "Medication", "id": "med1", "code": {"text": "Dupixent"}}],
        "medicationReference": {"reference": reference},
    }


def test_contained_reference_resolves_and_a_dangling_one_is_refused(
    fhir: httpx.Client, engine: Engine
) -> None:
    before = seed(fhir, engine)
    dangling = json.dumps(_with_contained_medication("#med2")).encode()
    response = fhir.post("/MedicationRequest", content=dangling)
    assert_outcome(response, 400, "invariant", "MedicationRequest.medicationReference.reference")
    assert response.json()["issue"][0]["diagnostics"] == (
        "MedicationRequest.medicationReference.reference: '#med2' names no contained resource "
        "(ref-1)"
    )
    in_bundle = transaction(post_entry(_with_contained_medication("#nope")))
    response = fhir.post("", content=in_bundle)
    assert_outcome(
        response, 400, "invariant", "Bundle.entry[0].resource.medicationReference.reference"
    )
    assert counts(engine) == before
    resolved = fhir.post(
        "/MedicationRequest", content=json.dumps(_with_contained_medication("#med1"))
    )
    assert resolved.status_code == 201, resolved.text
    assert fhir.get(resolved.headers["location"]).json()["medicationReference"] == {
        "reference": "#med1"
    }


# -- transaction Bundles ------------------------------------------------------------------------


def _enveloped(**envelope: Any) -> bytes:
    body = json.loads(transaction(post_entry(weight(subject=reference("Patient/p1")))))
    return json.dumps({**body, **envelope}).encode()


@pytest.mark.parametrize(
    ("envelope", "code", "where"),
    [
        ({"timestamp": "2025-01-01T10:00:00"}, "value", "Bundle.timestamp"),
        ({"meta": {"lastUpdated": "yesterday"}}, "value", "Bundle.meta.lastUpdated"),
        ({"total": "3"}, "value", "Bundle.total"),
        ({"identifier": {"value": 1}}, "value", "Bundle.identifier.value"),
        ({"link": [{"relation": "self"}]}, "required", "Bundle.link[0].url"),
    ],
)
def test_the_bundle_envelope_is_validated_too(
    fhir: httpx.Client, engine: Engine, envelope: dict[str, Any], code: str, where: str
) -> None:
    before = seed(fhir, engine)
    assert_outcome(fhir.post("", content=_enveloped(**envelope)), 400, code, where)
    assert counts(engine) == before


def test_an_envelope_with_primitive_extensions_is_accepted(fhir: httpx.Client) -> None:
    note = {"extension": [{"url": "http://example.org/clock", "valueString": "site A"}]}
    body = _enveloped(id="b1", timestamp="2025-01-01T10:00:00Z", _timestamp=note)
    response = fhir.post("", content=body)
    assert response.status_code == 200, response.text
    assert [e["response"]["status"] for e in response.json()["entry"]] == ["201 Created"]


def test_dangling_urn_uuid_fails_the_transaction(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    body = transaction(
        post_entry(
            {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "tx-1"}]}
        ),
        post_entry(weight(subject=reference("urn:uuid:6f1c1a8e-27a4-4c55-9a3b-2f8d1d0c0001"))),
    )
    response = fhir.post("", content=body)
    assert_outcome(response, 400, "not-found", "Bundle.entry[1].resource.subject.reference")
    assert counts(engine) == before


@pytest.mark.parametrize(
    ("twins", "subject", "status", "code"),
    [
        pytest.param(False, "Patient?identifier=urn:mrn|nobody", 422, "not-found", id="no-match"),
        pytest.param(True, "Patient?identifier=urn:mrn|twin", 412, "multiple-matches", id="two"),
    ],
)
def test_conditional_reference_without_exactly_one_match_fails(
    fhir: httpx.Client, engine: Engine, twins: bool, subject: str, status: int, code: str
) -> None:
    before = seed_twins(fhir, engine) if twins else seed(fhir, engine)
    body = transaction(post_entry(weight(subject=reference(subject))))
    response = fhir.post("", content=body)
    assert_outcome(response, status, code, "Bundle.entry[0].resource.subject.reference")
    assert counts(engine) == before


def test_two_entries_with_one_identity_are_duplicates(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    body = transaction(
        {
            "resource": {"resourceType": "Patient", "id": "x", "active": True},
            "request": {"method": "PUT", "url": "Patient/x"},
        },
        {
            "resource": {"resourceType": "Patient", "id": "x", "active": False},
            "request": {"method": "PUT", "url": "Patient/x"},
        },
    )
    response = fhir.post("", content=body)
    outcome = assert_outcome(response, 400, "duplicate", "Bundle.entry[0].resource")
    assert outcome["issue"][0]["expression"] == [
        "Bundle.entry[0].resource",
        "Bundle.entry[1].resource",
    ]
    assert counts(engine) == before


def test_two_entries_with_one_full_url_are_duplicates(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    full_url = "urn:uuid:6f1c1a8e-27a4-4c55-9a3b-2f8d1d0c0002"
    first = post_entry(
        {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "tx-2"}]}
    )
    second = post_entry(
        {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "tx-3"}]}
    )
    body = transaction({"fullUrl": full_url, **first}, {"fullUrl": full_url, **second})
    response = fhir.post("", content=body)
    assert_outcome(response, 400, "duplicate", "Bundle.entry")
    assert counts(engine) == before


def test_one_invalid_entry_sinks_the_whole_transaction(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    body = transaction(
        post_entry(
            {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "tx-ok"}]}
        ),
        post_entry({"resourceType": "Patient", "active": "yes"}),
    )
    response = fhir.post("", content=body)
    assert_outcome(response, 400, "value", "Bundle.entry[1].resource.active")
    assert counts(engine) == before
    found = fhir.get("/Patient", params={"identifier": "urn:mrn|tx-ok"})
    assert found.status_code == 200
    assert found.json()["total"] == 0


def test_if_match_on_a_stale_version_is_a_conflict(fhir: httpx.Client, engine: Engine) -> None:
    seed(fhir, engine)
    put_patient(fhir, "x", "x-1")
    before = counts(engine)
    body = transaction(
        {
            "resource": {
                "resourceType": "Patient",
                "id": "x",
                "identifier": [{"system": "urn:mrn", "value": "x-2"}],
            },
            "request": {"method": "PUT", "url": "Patient/x", "ifMatch": 'W/"9"'},
        }
    )
    response = fhir.post("", content=body)
    assert_outcome(response, 412, "conflict", "Bundle.entry[0].resource")
    assert counts(engine) == before
    current = fhir.get("/Patient/x")
    assert current.headers["etag"] == 'W/"1"'


def test_if_none_exist_with_two_matches_fails(fhir: httpx.Client, engine: Engine) -> None:
    before = seed_twins(fhir, engine)
    body = transaction(
        post_entry(
            {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "twin"}]},
            ifNoneExist="identifier=urn:mrn|twin",
        )
    )
    response = fhir.post("", content=body)
    assert_outcome(response, 412, "multiple-matches", "Bundle.entry[0].resource")
    assert counts(engine) == before


@pytest.mark.parametrize("kind", ["document", "searchset"])
def test_unaccepted_bundle_type_is_refused(fhir: httpx.Client, engine: Engine, kind: str) -> None:
    before = seed(fhir, engine)
    body = transaction(
        {
            "fullUrl": "urn:uuid:6f1c1a8e-27a4-4c55-9a3b-2f8d1d0c0003",
            "resource": {"resourceType": "Patient", "active": True},
        },
        type=kind,
    )
    response = fhir.post("", content=body)
    assert_outcome(response, 422, "not-supported", "Bundle.type")
    assert counts(engine) == before


# -- batch Bundles ------------------------------------------------------------------------------


def test_batch_reports_each_entry_and_writes_only_the_good_one(
    fhir: httpx.Client, engine: Engine
) -> None:
    before = seed(fhir, engine)
    body = transaction(
        post_entry(
            {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "batch-ok"}]}
        ),
        post_entry({"resourceType": "Patient", "active": "yes"}),
        type="batch",
    )
    response = fhir.post("", content=body)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "batch-response"
    assert len(bundle["entry"]) == 2
    good, bad = (e["response"] for e in bundle["entry"])
    assert good["status"].startswith("201")
    assert "outcome" not in good
    assert bad["status"].startswith("400")
    assert bad["outcome"]["resourceType"] == "OperationOutcome"
    assert bad["outcome"]["issue"][0]["code"] == "value"
    assert "Bundle.entry[1].resource.active" in bad["outcome"]["issue"][0]["expression"]
    assert counts(engine) == grown(
        before, fhir_resource=1, fhir_resource_version=1, fhir_identifier=1, trial_event=1
    )


# -- bodies over the limit ----------------------------------------------------------------------


def test_default_body_limit_is_50_mib(server: LiveServer) -> None:
    assert Settings().max_body_bytes == 50 * MIB
    assert server.settings.max_body_bytes == 50 * MIB


def test_declared_oversize_body_is_refused_before_reading(
    fhir: httpx.Client, engine: Engine
) -> None:
    before = seed(fhir, engine)

    def first_chunk_only() -> Iterator[bytes]:
        # The client pushes the body on its own; after the first chunk it behaves as if the
        # connection broke. A server that read past the first chunk before deciding would wait
        # for bytes that never come, and this request would time out instead of getting a 413.
        yield b'{"resourceType":"Bundle","type":"transaction","entry":['
        raise httpcore.WriteError("the test sends only the first chunk")

    response = fhir.post(
        "",
        content=first_chunk_only(),
        headers={"content-length": str(60 * MIB)},
        timeout=20,
    )
    assert_outcome(response, 413, "too-long")
    assert counts(engine) == before


def test_chunked_oversize_body_is_refused_before_parsing(
    fhir: httpx.Client, engine: Engine
) -> None:
    before = seed(fhir, engine)

    def not_json() -> Iterator[bytes]:
        chunk = b"this is not JSON at all " * (MIB // 24) + b"\xff" * (MIB % 24)
        assert len(chunk) == MIB
        for _ in range(51):
            yield chunk

    response = fhir.post("", content=not_json())
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_outcome(response, 413, "too-long")
    assert counts(engine) == before


# -- $import --------------------------------------------------------------------------------------


def test_import_reports_each_line_and_writes_only_the_good_one(
    fhir: httpx.Client, engine: Engine
) -> None:
    before = seed(fhir, engine)
    body = (
        b'{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"import-1"}]}\n'
        b'{"resourceType":"Patient","active":"yes"}\n'
        b'{"resourceType":"Patient",\n'
    )
    response = fhir.post(
        "/$import", content=body, headers={"content-type": "application/fhir+ndjson"}
    )
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "batch-response"
    statuses = [e["response"]["status"].split(" ")[0] for e in bundle["entry"]]
    assert statuses == ["201", "400", "400"]
    assert "outcome" not in bundle["entry"][0]["response"]
    for number, entry in ((2, bundle["entry"][1]), (3, bundle["entry"][2])):
        outcome = entry["response"]["outcome"]
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["diagnostics"].startswith(f"line {number}:"), outcome
    assert bundle["entry"][1]["response"]["outcome"]["issue"][0]["code"] == "value"
    assert bundle["entry"][2]["response"]["outcome"]["issue"][0]["code"] == "structure"
    assert counts(engine) == grown(
        before, fhir_resource=1, fhir_resource_version=1, fhir_identifier=1, trial_event=1
    )


# -- odd but valid: accepted and kept exactly -----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "kept"),
    [
        pytest.param(
            "/Observation",
            "{" + _OBS + ',"status":"final","effectiveDateTime":"2016-12-31T23:59:60Z"}',
            '"effectiveDateTime":"2016-12-31T23:59:60Z"',
            id="leap-second",
        ),
        pytest.param(
            "/Observation",
            "{" + _OBS + ',"status":"final","effectiveDateTime":"2025-01-01T23:30:00+14:00"}',
            '"effectiveDateTime":"2025-01-01T23:30:00+14:00"',
            id="offset-plus-14",
        ),
        pytest.param(
            "/Observation",
            "{" + _OBS + ',"status":"final","effectiveDateTime":"2025-01-01T00:30:00-12:00"}',
            '"effectiveDateTime":"2025-01-01T00:30:00-12:00"',
            id="offset-minus-12",
        ),
        pytest.param(
            "/Patient",
            '{"resourceType":"Patient","birthDate":"2025"}',
            '"birthDate":"2025"',
            id="year-only",
        ),
        pytest.param(
            "/Patient",
            '{"resourceType":"Patient","birthDate":"2025-06"}',
            '"birthDate":"2025-06"',
            id="year-month",
        ),
        pytest.param(
            "/Observation",
            "{" + _OBS + ',"status":"final","valueQuantity":{"value":0.10,"unit":"%"}}',
            '"value":0.10,',
            id="decimal-0.10",
        ),
    ],
)
def test_odd_but_valid_values_are_kept_lexically(
    fhir: httpx.Client, engine: Engine, path: str, body: str, kept: str
) -> None:
    before = seed(fhir, engine)
    created = fhir.post(path, content=body.encode())
    assert created.status_code == 201, created.text
    location = created.headers["location"].split("/fhir/", 1)[1].split("/_history")[0]
    read = fhir.get(f"/{location}")
    assert read.status_code == 200, read.text
    assert kept.encode() in read.content, read.text
    # a Patient, and a dated final Observation (a data point for censoring, CLINICAL.md rev 2),
    # make one event; an undated Observation that no rule reads makes none
    events = path == "/Patient" or "effectiveDateTime" in body
    assert counts(engine) == grown(
        before, fhir_resource=1, fhir_resource_version=1, trial_event=int(events)
    )


def test_decimal_0_1_differs_from_0_10(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    template = (
        '{"resourceType":"Observation","id":"dec","status":"final","code":{"text":"weight"},'
        '"valueQuantity":{"value":VALUE,"unit":"%"}}'
    )
    first = fhir.put("/Observation/dec", content=template.replace("VALUE", "0.10").encode())
    assert first.status_code == 201, first.text
    assert first.headers["etag"] == 'W/"1"'
    second = fhir.put("/Observation/dec", content=template.replace("VALUE", "0.1").encode())
    assert second.status_code == 200, second.text
    assert second.headers["etag"] == 'W/"2"'
    current = fhir.get("/Observation/dec")
    assert b'"value":0.1,' in current.content
    assert fhir.get("/Observation/dec/_history/1").content.count(b'"value":0.10,') == 1
    assert counts(engine) == grown(before, fhir_resource=1, fhir_resource_version=2)


def test_control_character_escape_is_refused(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    response = fhir.post(
        "/Patient", content=b'{"resourceType":"Patient","name":[{"family":"a\\u0000b"}]}'
    )
    assert response.status_code == 400
    assert response.json()["issue"][0]["code"] == "value"
    assert "\\u0000" in response.json()["issue"][0]["diagnostics"]
    assert counts(engine) == before


def test_deeply_nested_json_is_refused(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    response = fhir.post("/Patient", content=b"[" * 50_000 + b"]" * 50_000)
    assert (response.status_code, response.json()["issue"][0]["code"]) == (400, "structure")
    depth = 3000  # valid FHIR shape (extensions within extensions), far deeper than any real feed
    body = (
        b'{"resourceType":"Patient","extension":['
        + b'{"url":"http://x","extension":[' * depth
        + b'{"url":"http://x","valueString":"leaf"}'
        + b"]}" * depth
        + b"]}"
    )
    response = fhir.post("/Patient", content=body)
    assert (response.status_code, response.json()["issue"][0]["code"]) == (400, "structure")
    assert counts(engine) == before


def test_oversized_identifier_is_stored_but_not_indexed(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    value = "v" * 5000
    response = fhir.put(
        "/Patient/long",
        json={"resourceType": "Patient", "id": "long", "identifier": [{"value": value}]},
    )
    assert response.status_code == 201
    assert fhir.get("/Patient/long").json()["identifier"][0]["value"] == value
    after = counts(engine)
    assert after["fhir_resource"] == before["fhir_resource"] + 1
    assert after["fhir_identifier"] == before["fhir_identifier"]


def test_overlong_type_name_in_a_reference_is_kept_not_indexed(
    fhir: httpx.Client, engine: Engine
) -> None:
    before = seed(fhir, engine)
    ref = "A" + "b" * 100 + "/x"
    body = {
        "resourceType": "Observation",
        "id": "o",
        "status": "final",
        "code": {"text": "c"},
        "subject": {"reference": ref},
    }
    assert fhir.put("/Observation/o", json=body).status_code == 201
    assert counts(engine)["fhir_reference"] == before["fhir_reference"]
