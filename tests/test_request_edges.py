"""Request edges that used to answer 500 or the wrong status: version ids, ETags, Bundle.request.

Each test seeds the store, sends the request over real HTTP (SQLite and PostgreSQL, the `backend`
fixture) and checks the exact status, issue code and FHIRPath, and that a refused request wrote
nothing. The Content-Length test calls `read_body` directly: uvicorn refuses such a header itself.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, event
from starlette.requests import Request

from api.fhir_http import read_body
from service.errors import FhirError
from service.fhir.validation_workers import ModelChecks
from service.infra.settings import Settings
from tests.conftest import (
    FHIR_JSON,
    LiveServer,
    counts,
    refuse_server_errors,
    start_server,
    stop_server,
)

NCT = "NCT06088771"
# If-Match bytes as sent; HTTP headers are Latin-1: '²' and '¹' pass str.isdigit(), int() fails.
HEADER_TAGS = (b'W/"\xb2"', b'W/"\xb9"', b'"\xb9"')


@pytest.fixture(autouse=True)
def no_server_errors(fhir: httpx.Client) -> None:
    """No FHIR request in this file may be answered with a 5xx."""
    refuse_server_errors(fhir)


def put_patient(fhir: httpx.Client, rid: str = "p1", **extra: Any) -> httpx.Response:
    """PUT Patient/{rid} with one MRN (plus `extra` elements)."""
    body = {
        "resourceType": "Patient",
        "id": rid,
        "identifier": [{"system": "urn:mrn", "value": rid}],
    }
    return fhir.put(f"/Patient/{rid}", content=json.dumps({**body, **extra}).encode())


def seed(fhir: httpx.Client, engine: Engine) -> dict[str, int]:
    """Patient/p1 at version 1; the row counts afterwards."""
    created = put_patient(fhir)
    assert created.status_code == 201, created.text
    assert created.headers["etag"] == 'W/"1"'
    return counts(engine)


def assert_outcome(
    response: httpx.Response, status: int, code: str, expression: str | None
) -> dict[str, Any]:
    """Exact status, an OperationOutcome of one issue with that code and exactly that expression
    (None: the issue has no `expression`)."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    [issue] = body["issue"]
    assert issue["code"] == code, body
    assert issue.get("expression") == (None if expression is None else [expression]), body
    return body


def bundle(*entries: dict[str, Any], kind: str | None = "transaction") -> bytes:
    """A Bundle request body (no `type` when kind is None)."""
    out: dict[str, Any] = {"resourceType": "Bundle", "entry": list(entries)}
    if kind is not None:
        out["type"] = kind
    return json.dumps(out).encode()


def delete_entry(url: str, **request: Any) -> dict[str, Any]:
    """A DELETE entry with extra request elements."""
    return {"request": {"method": "DELETE", "url": url, **request}}


def put_entry(rid: str) -> dict[str, Any]:
    """A valid PUT entry for Patient/{rid}."""
    resource = {
        "resourceType": "Patient",
        "id": rid,
        "identifier": [{"system": "urn:mrn", "value": rid}],
    }
    return {"resource": resource, "request": {"method": "PUT", "url": f"Patient/{rid}"}}


def current_etag(fhir: httpx.Client, rid: str = "p1") -> str:
    """The ETag a read of Patient/{rid} answers."""
    read = fhir.get(f"/Patient/{rid}")
    assert read.status_code == 200, read.text
    return read.headers["etag"]


# -- 1. only ASCII digits are digits ------------------------------------------------------------


def test_non_ascii_digits_are_not_version_numbers(
    fhir: httpx.Client, engine: Engine, server: LiveServer
) -> None:
    """'²' passes str.isdigit() but int() refuses it; '١' (Arabic-Indic one) int() reads as 1."""
    before = seed(fhir, engine)
    abc = fhir.get("/Patient/p1/_history/abc")
    assert_outcome(abc, 404, "not-found", None)
    for vid in ("%C2%B2", "%D9%A1"):  # ², ١
        answer = fhir.get(f"/Patient/p1/_history/{vid}")
        assert_outcome(answer, 404, "not-found", None)
    body = json.dumps({"resourceType": "Patient", "id": "p1", "active": True}).encode()
    for tag in HEADER_TAGS:
        update = fhir.put("/Patient/p1", content=body, headers={b"If-Match": tag})
        assert_outcome(update, 400, "invalid", "If-Match")
        removal = fhir.delete("/Patient/p1", headers={b"If-Match": tag})
        assert_outcome(removal, 400, "invalid", "If-Match")
    for text in ('W/"\u00b2"', 'W/"\u0661"'):  # ², ١ (int() reads it as 1: p1 was deleted)
        tx = fhir.post("", content=bundle(delete_entry("Patient/p1", ifMatch=text)))
        assert_outcome(tx, 400, "invalid", "Bundle.entry[0].request.ifMatch")
    assert counts(engine) == before
    assert current_etag(fhir) == 'W/"1"'

    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=60) as api:
        patch = {"by": "j.doe@site.org", "status": "acknowledged"}
        url = f"/studies/{NCT}/deviations/DEV-0000000000"
        for tag in HEADER_TAGS:
            refused = api.patch(url, json=patch, headers={b"If-Match": tag})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "invalid_if_match"
    assert counts(engine) == before


@pytest.mark.parametrize(
    ("declared", "status", "code"),
    [
        pytest.param(b"\xb2", 400, "invalid", id="superscript-two"),
        pytest.param(b"1\xb9", 400, "invalid", id="superscript-one"),
        pytest.param(b"12a", 400, "invalid", id="not-a-number"),
        pytest.param(b"9" * 5000, 400, "invalid", id="5000-digits"),
        pytest.param(b"1001", 413, "too-long", id="over-limit"),
    ],
)
def test_content_length_counts_only_ascii_digits(declared: bytes, status: int, code: str) -> None:
    """A Content-Length that is not ASCII digits is refused, not a 500."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        assert not sent, "the body is read only once"
        sent = True
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/fhir/Patient",
        "headers": [(b"content-length", declared)],
    }
    with pytest.raises(FhirError) as refused:
        asyncio.run(read_body(Request(scope, receive), 1000))
    assert refused.value.status == status
    [issue] = refused.value.issues
    assert issue.code == code
    assert issue.expression == (("Content-Length",) if status == 400 else ())
    assert not sent  # refused from the header alone


# -- 2. version ids beyond the column ----------------------------------------------------------


class VersionQueries:
    """Statements on fhir_resource_version run by any engine while listening."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "fhir_resource_version" in statement:
            with self._lock:
                self.seen.append(statement)


@pytest.fixture
def version_queries() -> Iterator[VersionQueries]:
    """Every query on the version table while the test runs (the server runs in this process)."""
    from sqlalchemy.engine import Engine as EngineClass

    listener = VersionQueries()
    event.listen(EngineClass, "before_cursor_execute", listener)
    yield listener
    event.remove(EngineClass, "before_cursor_execute", listener)


def test_version_ids_beyond_the_column_are_unknown_versions(
    fhir: httpx.Client, engine: Engine, version_queries: VersionQueries
) -> None:
    """No such version: 404 on both databases, without asking the database; a stale ETag: 412."""
    before = seed(fhir, engine)
    version_queries.seen.clear()
    in_range = fhir.get("/Patient/p1/_history/2147483647")
    assert_outcome(in_range, 404, "not-found", None)
    assert version_queries.seen, "the listener sees the version lookups"
    for vid in ("2147483648", "99999999999999999999999", "9" * 5000, "0" * 5000 + "1"):
        version_queries.seen.clear()
        answer = fhir.get(f"/Patient/p1/_history/{vid}")
        if vid.endswith("01"):  # leading zeros: version 1
            assert answer.status_code == 200, answer.text
            assert answer.headers["etag"] == 'W/"1"'
            continue
        assert_outcome(answer, 404, "not-found", None)
        assert version_queries.seen == [], vid

    body = json.dumps({"resourceType": "Patient", "id": "p1", "active": True}).encode()
    stale = fhir.put("/Patient/p1", content=body, headers={"If-Match": 'W/"7"'})
    assert stale.status_code == 412, stale.text
    huge = fhir.put("/Patient/p1", content=body, headers={"If-Match": 'W/"99999999999999999999"'})
    assert_outcome(huge, 412, "conflict", None)
    stale_delete = fhir.delete("/Patient/p1", headers={"If-Match": 'W/"7"'})
    assert stale_delete.status_code == 412, stale_delete.text
    huge_delete = fhir.delete("/Patient/p1", headers={"If-Match": 'W/"99999999999999999999"'})
    assert_outcome(huge_delete, 412, "conflict", None)
    for kind in ("transaction", "batch"):
        sent = bundle(delete_entry("Patient/p1", ifMatch='W/"99999999999999999999"'), kind=kind)
        answer = fhir.post("", content=sent)
        if kind == "transaction":
            assert_outcome(answer, 412, "conflict", "Bundle.entry[0]")
        else:
            assert answer.status_code == 200, answer.text
            [result] = answer.json()["entry"]
            assert result["response"]["status"].startswith("412")
            assert result["response"]["outcome"]["issue"][0]["code"] == "conflict"
    assert counts(engine) == before
    assert current_etag(fhir) == 'W/"1"'


# -- 3. Bundle.entry.request elements of the wrong JSON type -----------------------------------


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (5, "value"),
        (True, "value"),
        ({"etag": 'W/"1"'}, "value"),
        (['W/"1"'], "value"),
        (None, "structure"),  # JSON null is no FHIR value (as in a resource), not "absent"
    ],
)
def test_if_match_that_is_not_a_string_is_a_value_error(
    fhir: httpx.Client, engine: Engine, value: Any, code: str
) -> None:
    before = seed(fhir, engine)
    answer = fhir.post("", content=bundle(delete_entry("Patient/p1", ifMatch=value)))
    assert_outcome(answer, 400, code, "Bundle.entry[0].request.ifMatch")
    assert counts(engine) == before
    assert current_etag(fhir) == 'W/"1"'


def test_request_strings_of_another_type_are_value_errors(
    fhir: httpx.Client, engine: Engine
) -> None:
    before = seed(fhir, engine)
    create = {
        "resource": {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": "5"}],
        },
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": 5},
    }
    answer = fhir.post("", content=bundle(create))
    assert_outcome(answer, 400, "value", "Bundle.entry[0].request.ifNoneExist")
    for key in ("ifNoneMatch", "ifModifiedSince"):
        read = {"request": {"method": "GET", "url": "Patient/p1", key: 1}}
        answer = fhir.post("", content=bundle(read))
        assert_outcome(answer, 400, "value", f"Bundle.entry[0].request.{key}")
    batch = fhir.post("", content=bundle(put_entry("b1"), create, kind="batch"))
    assert batch.status_code == 200, batch.text
    ok, failed = batch.json()["entry"]
    assert ok["response"]["status"].startswith("201")
    assert failed["response"]["status"].startswith("400")
    [issue] = failed["response"]["outcome"]["issue"]
    assert (issue["code"], issue["expression"]) == (
        "value",
        ["Bundle.entry[1].request.ifNoneExist"],
    )
    assert counts(engine)["fhir_resource"] == before["fhir_resource"] + 1  # b1 only


@pytest.fixture(scope="module")
def offloaded(database_url: str) -> Iterator[tuple[httpx.Client, ModelChecks]]:
    """A server whose large Bundles go to a (warm) model-check worker, as in production."""
    settings = Settings(database_url=database_url, model_check_processes=1)
    srv, thread, url = start_server(settings)
    app = srv.config.app
    assert isinstance(app, FastAPI)
    checks: ModelChecks = app.state.store.model_checks
    assert checks.wait_ready(120)
    with httpx.Client(base_url=f"{url}/fhir", headers=FHIR_JSON, timeout=60) as client:
        yield client, checks
    stop_server(srv, thread)


def test_large_transaction_with_a_numeric_if_match_is_a_value_error(
    fhir: httpx.Client, engine: Engine, offloaded: tuple[httpx.Client, ModelChecks]
) -> None:
    """25 entries: over TRIALBRIDGE_MODEL_CHECK_MIN_ENTRIES, the worker path answers the same."""
    client, checks = offloaded
    before = seed(fhir, engine)
    entries = [put_entry(f"bulk-{i}") for i in range(24)]
    entries.insert(17, delete_entry("Patient/p1", ifMatch=5))
    submitted = checks.submitted
    answer = client.post("", content=bundle(*entries))
    assert_outcome(answer, 400, "value", "Bundle.entry[17].request.ifMatch")
    assert checks.submitted == submitted + 1  # it went to the worker
    assert counts(engine) == before
    assert current_etag(fhir) == 'W/"1"'


# -- 4. Bundle.type is required ------------------------------------------------------------------


def test_bundle_without_type_is_a_required_error(fhir: httpx.Client, engine: Engine) -> None:
    before = seed(fhir, engine)
    answer = fhir.post("", content=bundle(put_entry("t1"), kind=None))
    assert_outcome(answer, 400, "required", "Bundle.type")
    typed = json.loads(bundle(put_entry("t1")))
    answer = fhir.post("", content=json.dumps({**typed, "type": 7}).encode())
    assert_outcome(answer, 400, "value", "Bundle.type")
    answer = fhir.post("", content=bundle(put_entry("t1"), kind="searchset"))
    assert_outcome(answer, 422, "not-supported", "Bundle.type")
    assert counts(engine) == before


# -- 5. a stale If-Match on a single resource names no empty element -----------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_stale_if_match_on_update_has_no_empty_expression(
    fhir: httpx.Client, engine: Engine
) -> None:
    seed(fhir, engine)
    assert put_patient(fhir, active=True).headers["etag"] == 'W/"2"'
    before = counts(engine)
    body = json.dumps({"resourceType": "Patient", "id": "p1", "active": False}).encode()
    stale = fhir.put("/Patient/p1", content=body, headers={"If-Match": 'W/"1"'})
    outcome = assert_outcome(stale, 412, "conflict", None)
    assert outcome["issue"][0]["diagnostics"] == 'If-Match W/"1" but Patient/p1 is at W/"2"'
    assert "" not in list(_strings(outcome))
    stale_delete = fhir.delete("/Patient/p1", headers={"If-Match": 'W/"1"'})
    outcome = assert_outcome(stale_delete, 412, "conflict", None)
    assert outcome["issue"][0]["diagnostics"] == 'If-Match W/"1" but Patient/p1 is at W/"2"'
    assert "" not in list(_strings(outcome))
    assert counts(engine) == before
    assert current_etag(fhir) == 'W/"2"'


# -- 6. If-None-Match compares weakly --------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "status"),
    [
        pytest.param('"1"', 304, id="strong-form"),
        pytest.param('W/"1"', 304, id="weak-form"),
        pytest.param("*", 304, id="star"),
        pytest.param('W/"3", W/"1"', 304, id="list"),
        pytest.param('"3","1"', 304, id="list-no-space"),
        pytest.param('W/"2"', 200, id="other-version"),
        pytest.param('"11"', 200, id="not-a-prefix"),
        pytest.param("1", 200, id="unquoted"),
        pytest.param('W/"3", "2"', 200, id="list-without-ours"),
    ],
)
def test_if_none_match_uses_weak_comparison(
    fhir: httpx.Client, engine: Engine, header: str, status: int
) -> None:
    seed(fhir, engine)
    for path in ("/Patient/p1", "/Patient/p1/_history/1"):
        answer = fhir.get(path, headers={"If-None-Match": header})
        assert answer.status_code == status, (path, answer.text)
        assert answer.headers["etag"] == 'W/"1"'
        if status == 304:
            assert answer.content == b""
        else:
            assert answer.json()["id"] == "p1"
