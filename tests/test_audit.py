"""The audit trail over real HTTP on both backends: one AuditEvent per request, Provenance per write.

Expectations come from FHIR R4 (AuditEvent.action C/R/U/D/E, outcome 0 success, 4 minor failure,
8 serious failure) and from the issue: every request touching patient data is recorded, refused
ones included, and a write's record is stored with the write.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text

from service.access.clients import add_client
from service.audit.trail import _Segment
from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON
from tests.kit import fhir as kit
from tests.kit.auth import access_token, assertion, bearer, ec_key, jwks, token_request
from tests.kit.cohort import settle
from tests.kit.live import served

NCT = "NCT06088771"
BIN = Path(sys.executable).parent
KEYS = {name: ec_key(f"{name}-1") for name in ("ehr", "monitor", "auditor")}
SCOPES = {
    "ehr": ["system/*.cruds"],
    "monitor": [f"study/{NCT}.read"],
    "auditor": ["audit"],
}


@dataclass
class Audited:
    """A running app with authentication on, an engine on its database, and a token per client."""

    url: str
    engine: Engine
    tokens: dict[str, str]
    app: FastAPI

    def call(
        self, client: str | None, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[str, httpx.Response]:
        """One request with its own X-Request-Id: (that id, the answer)."""
        rid = uuid.uuid4().hex
        sent = {"x-request-id": rid, **headers}
        if client is not None:
            sent.update(bearer(self.tokens[client]))
        if body is not None:
            sent.update(FHIR_JSON)
        answer = httpx.request(
            method,
            f"{self.url}{path}",
            headers=sent,
            content=None if body is None else json.dumps(body).encode(),
            timeout=30,
        )
        assert answer.headers["x-request-id"] == rid
        return rid, answer

    def events(self, kind: str = "AuditEvent") -> list[dict[str, Any]]:
        """Every record of this kind in the database, oldest first (the journal stored first)."""
        self.app.state.audit.flush()
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT content FROM audit_record WHERE kind = :k ORDER BY seq"), {"k": kind}
            ).scalars()
            return [json.loads(r) for r in rows]


@pytest.fixture(scope="module")
def audited(backend: str, new_database: Any) -> Iterator[Audited]:
    settings = Settings(
        database_url=str(new_database(backend)), auth_disabled=False, webhook_interval_seconds=0
    )
    with served(settings) as running:
        for name, key in KEYS.items():
            add_client(running.engine, name, SCOPES[name], jwks=jwks(key))
        tokens = {
            name: access_token(running.url, key, name, " ".join(SCOPES[name]))
            for name, key in KEYS.items()
        }
        yield Audited(running.url, running.engine, tokens, running.app)


def _request_id(event: dict[str, Any]) -> str:
    for entity in event["entity"]:
        identifier = entity.get("what", {}).get("identifier", {})
        if identifier.get("system") == "urn:trialbridge:request-id":
            return str(identifier["value"])
    raise AssertionError(f"no request id in {event['id']}")


def _summary(event: dict[str, Any]) -> tuple[str, str, str, str]:
    agent = event["agent"][0]
    return (
        agent["who"]["identifier"]["value"],
        event["action"],
        event["outcome"],
        event["subtype"][0]["code"],
    )


def _references(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event["entity"] if "reference" in e.get("what", {})]


def test_thirty_requests_by_two_clients_leave_one_audit_event_each(audited: Audited) -> None:
    pid = f"p-{uuid.uuid4().hex[:8]}"
    patient = kit.patient(id=pid, mrn=f"MRN-{pid}")
    obs = kit.observation(id=f"o-{pid}", code="Hemoglobin", patient=pid)
    batch = kit.bundle(
        kit.put_entry(kit.patient(id=f"{pid}-b", mrn=f"MRN-{pid}-b")),
        kit.entry(method="GET", url="Patient/nobody-here"),
        type="batch",
    )
    transaction = kit.bundle(kit.put_entry(kit.patient(id=f"{pid}-t")))
    enrolled = f"/api/v1/studies/{NCT}/subjects"
    # (client, method, path, body, headers) -> expected (agent, action, outcome, subtype)
    script: list[tuple[str, str, str, Any, dict[str, str], tuple[str, str, str, str]]] = [
        ("ehr", "PUT", f"/fhir/Patient/{pid}", patient, {}, ("ehr", "U", "0", "update")),
        ("ehr", "PUT", f"/fhir/Patient/{pid}", patient, {}, ("ehr", "U", "0", "update")),
        ("ehr", "GET", f"/fhir/Patient/{pid}", None, {}, ("ehr", "R", "0", "read")),
        ("ehr", "GET", f"/fhir/Patient/{pid}/_history/1", None, {}, ("ehr", "R", "0", "vread")),
        ("ehr", "GET", f"/fhir/Patient/{pid}/_history/9", None, {}, ("ehr", "R", "4", "vread")),
        ("ehr", "GET", "/fhir/Patient/not-there", None, {}, ("ehr", "R", "4", "read")),
        (
            "ehr",
            "GET",
            f"/fhir/Patient?identifier=MRN-{pid}",
            None,
            {},
            ("ehr", "E", "0", "search-type"),
        ),
        ("ehr", "GET", "/fhir/Patient?name=x", None, {}, ("ehr", "E", "4", "search-type")),
        ("ehr", "POST", "/fhir/Observation", obs, {}, ("ehr", "C", "0", "create")),
        (
            "ehr",
            "POST",
            "/fhir/Observation",
            {"resourceType": "Observation"},
            {},
            ("ehr", "C", "4", "create"),
        ),
        ("ehr", "PUT", f"/fhir/Observation/o-{pid}", obs, {}, ("ehr", "U", "0", "update")),
        (
            "ehr",
            "PUT",
            f"/fhir/Patient/{pid}",
            patient,
            {"if-match": 'W/"7"'},
            ("ehr", "U", "4", "update"),
        ),
        ("ehr", "POST", "/fhir", batch, {}, ("ehr", "E", "0", "batch")),
        ("ehr", "POST", "/fhir", transaction, {}, ("ehr", "E", "0", "transaction")),
        ("ehr", "DELETE", f"/fhir/Observation/o-{pid}", None, {}, ("ehr", "D", "0", "delete")),
        ("ehr", "GET", f"/fhir/Observation/o-{pid}", None, {}, ("ehr", "R", "4", "read")),
        (
            "ehr",
            "GET",
            enrolled,
            None,
            {},
            ("ehr", "R", "4", f"GET {enrolled.replace(NCT, '{study_id}')}"),
        ),
        ("ehr", "GET", "/fhir/AuditEvent", None, {}, ("ehr", "E", "4", "search-type")),
        ("ehr", "GET", "/fhir/Composition/x", None, {}, ("ehr", "R", "4", "read")),
        ("ehr", "DELETE", f"/fhir/Patient/{pid}-b", None, {}, ("ehr", "D", "0", "delete")),
        (
            "monitor",
            "GET",
            enrolled,
            None,
            {},
            ("monitor", "R", "0", "GET /api/v1/studies/{study_id}/subjects"),
        ),
        (
            "monitor",
            "GET",
            f"{enrolled}/S-nobody/timeline",
            None,
            {},
            ("monitor", "R", "4", "GET /api/v1/studies/{study_id}/subjects/{subject_id}/timeline"),
        ),
        (
            "monitor",
            "GET",
            "/api/v1/studies/cirae-dupilumab/subjects",
            None,
            {},
            ("monitor", "R", "4", "GET /api/v1/studies/{study_id}/subjects"),
        ),
        ("monitor", "GET", f"/fhir/Patient/{pid}", None, {}, ("monitor", "R", "4", "read")),
        (
            "monitor",
            "GET",
            f"/fhir/Patient?identifier=MRN-{pid}",
            None,
            {},
            ("monitor", "E", "4", "search-type"),
        ),
        ("monitor", "PUT", f"/fhir/Patient/{pid}", patient, {}, ("monitor", "U", "4", "update")),
        ("monitor", "POST", "/fhir", transaction, {}, ("monitor", "E", "4", "transaction")),
        ("monitor", "DELETE", f"/fhir/Patient/{pid}", None, {}, ("monitor", "D", "4", "delete")),
        (
            "monitor",
            "GET",
            "/api/v1/studies",
            None,
            {},
            ("monitor", "R", "0", "GET /api/v1/studies"),
        ),
        (
            "monitor",
            "GET",
            f"/api/v1/studies/{NCT}/deviations",
            None,
            {},
            ("monitor", "R", "0", "GET /api/v1/studies/{study_id}/deviations"),
        ),
    ]
    assert len(script) == 30
    before = len(audited.events())
    expected: dict[str, tuple[str, str, str, str]] = {}
    for client, method, path, body, headers, want in script:
        rid, answer = audited.call(client, method, path, body, **headers)
        assert (answer.status_code < 400) == (want[2] == "0"), (method, path, answer.text)
        expected[rid] = want
    events = audited.events()[before:]
    assert len(events) == 30  # exactly one each: none lost, none doubled
    assert {_request_id(e): _summary(e) for e in events} == expected
    for event in events:
        client_agent = event["agent"][0]
        assert client_agent["requestor"] is True
        assert client_agent["network"] == {"address": "127.0.0.1", "type": "2"}
        assert event["type"]["code"] == "rest"


def test_the_reports_and_the_listing_are_audited_like_the_outcomes(audited: Audited) -> None:
    """One AuditEvent each (HTML and PDF report, listing), naming the route; another study's
    reports are refused and recorded."""
    settle(audited.app, NCT)  # in process: no request, so nothing audited
    script = (
        (f"/api/v1/studies/{NCT}/outcomes/report.html", 200, "0"),
        (f"/api/v1/studies/{NCT}/outcomes/report.pdf", 200, "0"),
        (f"/api/v1/studies/{NCT}/outcomes/subjects", 200, "0"),
        ("/api/v1/studies/cirae-dupilumab/outcomes/report.html", 404, "4"),
        ("/api/v1/studies/cirae-dupilumab/outcomes/report.pdf", 404, "4"),
    )
    before = len(audited.events())
    expected: dict[str, tuple[str, str, str, str]] = {}
    for path, status, outcome in script:
        rid, answer = audited.call("monitor", "GET", path)
        assert answer.status_code == status, answer.text[:500]
        route = re.sub(r"/studies/[^/]+/", "/studies/{study_id}/", path)
        expected[rid] = ("monitor", "R", outcome, f"GET {route}")
    events = audited.events()[before:]
    assert {_request_id(e): _summary(e) for e in events} == expected


def test_a_write_records_its_audit_event_and_provenance_with_the_versions(
    audited: Audited,
) -> None:
    pid = f"w-{uuid.uuid4().hex[:8]}"
    rid, created = audited.call("ehr", "PUT", f"/fhir/Patient/{pid}", kit.patient(id=pid))
    assert created.status_code == 201, created.text
    event = next(e for e in audited.events() if _request_id(e) == rid)
    assert "outcomeDesc" not in event  # recorded in the write's transaction, before any status
    provenance = [
        p
        for p in audited.events("Provenance")
        if p["entity"][0]["what"]["identifier"]["value"] == rid
    ]
    assert [p["target"] for p in provenance] == [[{"reference": f"Patient/{pid}/_history/1"}]]
    # the AuditEvent names the write's Provenance, which names the version
    assert _references(event) == [f"Provenance/{provenance[0]['id']}"]
    assert provenance[0]["agent"][0]["who"]["identifier"]["value"] == "ehr"
    assert provenance[0]["activity"]["coding"][0]["code"] == "CREATE"
    with audited.engine.connect() as conn:  # the version and its records: one request, one write
        stamped = conn.execute(
            text(
                "SELECT request_id FROM fhir_resource_version "
                "WHERE resource_type = 'Patient' AND resource_id = :id"
            ),
            {"id": pid},
        ).scalar_one()
    assert stamped == rid


def test_a_transactions_audit_event_leads_through_its_provenance_to_exactly_its_versions(
    audited: Audited,
) -> None:
    pid = f"t-{uuid.uuid4().hex[:8]}"
    audited.call("ehr", "PUT", f"/fhir/Patient/{pid}-u", kit.patient(id=f"{pid}-u"))
    transaction = kit.bundle(
        kit.put_entry(kit.patient(id=f"{pid}-a")),  # created: version 1
        kit.put_entry(kit.patient(id=f"{pid}-u", mrn=f"MRN-{pid}")),  # changed: version 2
        kit.put_entry(kit.observation(id=f"o-{pid}", code="Hemoglobin", patient=f"{pid}-a")),
        kit.entry(method="GET", url=f"Patient/{pid}-a"),  # a read writes no version
    )
    rid, answer = audited.call("ehr", "POST", "/fhir", transaction)
    assert answer.status_code == 200, answer.text
    written = {
        f"Patient/{pid}-a/_history/1",
        f"Patient/{pid}-u/_history/2",
        f"Observation/o-{pid}/_history/1",
    }
    event = next(e for e in audited.events() if _request_id(e) == rid)
    (named,) = _references(event)  # one entity for the whole write, whatever its size
    assert named.startswith("Provenance/")
    _, read = audited.call("auditor", "GET", f"/fhir/{named}")
    assert read.status_code == 200, read.text
    provenance = read.json()
    assert provenance["entity"][0]["what"]["identifier"]["value"] == rid
    targets = [t["reference"] for t in provenance["target"]]
    assert (len(targets), set(targets)) == (3, written)
    # each resource written finds the write's AuditEvent, through the Provenance
    for version in sorted(written):
        resource = version.split("/_history/")[0]
        _, found = audited.call("auditor", "GET", f"/fhir/AuditEvent?entity={resource}&agent=ehr")
        assert rid in {_request_id(e["resource"]) for e in found.json()["entry"]}, resource
    # and only that one: the auditor's read of the Provenance named it, but touched no patient
    _, found = audited.call("auditor", "GET", f"/fhir/AuditEvent?entity=Patient/{pid}-a")
    assert [_request_id(e["resource"]) for e in found.json()["entry"]] == [rid]
    _, direct = audited.call("auditor", "GET", f"/fhir/AuditEvent?entity={named}")
    assert len(direct.json()["entry"]) == 2  # the write's, and the auditor's read of it


def test_a_read_that_reuses_a_writes_request_id_is_not_taken_for_the_write(
    audited: Audited,
) -> None:
    """A client may send its own X-Request-Id. A read of a write's Provenance sent with the id the
    write had names the Provenance (`entity=Provenance/…` finds it), but the resources the write
    wrote find the write's AuditEvent only, not that read."""
    pid = f"r-{uuid.uuid4().hex[:8]}"
    rid, answer = audited.call(
        "ehr", "POST", "/fhir", kit.bundle(kit.put_entry(kit.patient(id=pid)))
    )
    assert answer.status_code == 200, answer.text
    write = next(e for e in audited.events() if _request_id(e) == rid)
    (named,) = _references(write)
    again = httpx.get(
        f"{audited.url}/fhir/{named}",
        headers={"x-request-id": rid, **bearer(audited.tokens["auditor"])},
        timeout=30,
    )
    assert (again.status_code, again.headers["x-request-id"]) == (200, rid)
    _, found = audited.call("auditor", "GET", f"/fhir/AuditEvent?entity=Patient/{pid}")
    entries = [e["resource"] for e in found.json()["entry"]]
    assert [(e["id"], e["action"]) for e in entries] == [(write["id"], "E")]
    _, direct = audited.call("auditor", "GET", f"/fhir/AuditEvent?entity={named}")
    actions = sorted(e["resource"]["action"] for e in direct.json()["entry"])
    assert actions == ["E", "R"]  # the write, and the read that named it


def test_a_provenance_is_found_by_target_through_the_versions_that_name_it(
    audited: Audited,
) -> None:
    pid = f"v-{uuid.uuid4().hex[:8]}"
    first, _ = audited.call("ehr", "PUT", f"/fhir/Patient/{pid}", kit.patient(id=pid))
    second, changed = audited.call(
        "ehr", "PUT", f"/fhir/Patient/{pid}", kit.patient(id=pid, mrn=f"MRN-{pid}")
    )
    assert changed.status_code == 200, changed.text
    by_request = {
        p["entity"][0]["what"]["identifier"]["value"]: p["id"] for p in audited.events("Provenance")
    }
    with audited.engine.connect() as conn:
        named = conn.execute(
            text(
                "SELECT version_id, provenance_id FROM fhir_resource_version "
                "WHERE resource_type = 'Patient' AND resource_id = :id ORDER BY version_id"
            ),
            {"id": pid},
        ).all()
        entity_rows = conn.execute(
            text("SELECT count(*) FROM audit_entity WHERE record_id IN (:a, :b)"),
            {"a": by_request[first], "b": by_request[second]},
        ).scalar_one()
    # each version names the Provenance of the request that wrote it, which has no entity rows
    assert [tuple(r) for r in named] == [(1, by_request[first]), (2, by_request[second])]
    assert entity_rows == 0
    _, found = audited.call("auditor", "GET", f"/fhir/Provenance?target=Patient/{pid}")
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [
        by_request[second],
        by_request[first],
    ]
    _, both = audited.call(
        "auditor", "GET", f"/fhir/Provenance?target=Patient/{pid},Patient/{pid}-none"
    )
    assert both.json()["total"] == 2
    _, none = audited.call("auditor", "GET", f"/fhir/Provenance?target=Patient/{pid}-none")
    assert none.json()["total"] == 0
    _, events = audited.call("auditor", "GET", f"/fhir/AuditEvent?entity=Patient/{pid}&agent=ehr")
    assert {_request_id(e["resource"]) for e in events.json()["entry"]} == {first, second}


def test_a_refused_write_has_an_audit_event_and_no_provenance(audited: Audited) -> None:
    pid = f"r-{uuid.uuid4().hex[:8]}"
    before = len(audited.events("Provenance"))
    rid, refused = audited.call("monitor", "PUT", f"/fhir/Patient/{pid}", kit.patient(id=pid))
    assert refused.status_code == 403
    event = next(e for e in audited.events() if _request_id(e) == rid)
    assert (_summary(event), event["outcomeDesc"]) == (("monitor", "U", "4", "update"), "HTTP 403")
    assert _references(event) == [f"Patient/{pid}"]  # what was attempted
    assert len(audited.events("Provenance")) == before


def test_an_anonymous_request_is_recorded_without_an_agent_id(audited: Audited) -> None:
    rid, answer = audited.call(None, "GET", "/fhir/Patient?identifier=MRN-x")
    assert answer.status_code == 401
    event = next(e for e in audited.events() if _request_id(e) == rid)
    assert _summary(event) == ("anonymous", "E", "4", "search-type")
    query = next(e["query"] for e in event["entity"] if "query" in e)
    assert base64.b64decode(query).decode() == "identifier=MRN-x"


def test_token_requests_are_audited_as_logins(audited: Audited) -> None:
    url = f"{audited.url}/auth/token"
    granted = token_request(audited.url, assertion(KEYS["ehr"], "ehr", url), "system/*.rs")
    refused = token_request(audited.url, assertion(ec_key("ehr-1"), "ehr", url), "system/*.rs")
    assert (granted.status_code, refused.status_code) == (200, 401)
    found = {_request_id(e): e for e in audited.events()}
    ok, bad = found[granted.headers["x-request-id"]], found[refused.headers["x-request-id"]]
    assert _summary(ok) == ("ehr", "E", "0", "110122")  # DICOM Login
    assert _summary(bad) == ("anonymous", "E", "4", "110122")  # an unproven claim names no one
    assert ok["type"]["code"] == bad["type"]["code"] == "110114"  # User Authentication


def test_the_trail_is_read_with_the_audit_scope_only(audited: Audited) -> None:
    pid = f"s-{uuid.uuid4().hex[:8]}"
    audited.call("ehr", "PUT", f"/fhir/Patient/{pid}", kit.patient(id=pid))
    reads = [audited.call("monitor", "GET", f"/fhir/Patient/{pid}")[0] for _ in range(3)]
    for client in ("ehr", "monitor"):
        for path in ("/fhir/AuditEvent", "/fhir/Provenance", "/fhir/AuditEvent/x"):
            assert audited.call(client, "GET", path)[1].status_code == 403, (client, path)

    _, found = audited.call(
        "auditor", "GET", f"/fhir/AuditEvent?entity=Patient/{pid}&agent=monitor"
    )
    bundle = found.json()
    assert (found.status_code, bundle["type"], bundle["total"]) == (200, "searchset", 3)
    assert {_request_id(e["resource"]) for e in bundle["entry"]} == set(reads)

    _, page = audited.call("auditor", "GET", f"/fhir/AuditEvent?entity=Patient/{pid}&_count=2")
    first = page.json()
    assert (first["total"], len(first["entry"])) == (4, 2)  # the write and three reads
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    rest = httpx.get(following, headers=bearer(audited.tokens["auditor"]), timeout=30).json()
    assert len(rest["entry"]) == 2
    assert not [x for x in rest["link"] if x["relation"] == "next"]
    seen = [e["resource"]["id"] for e in first["entry"] + rest["entry"]]
    assert len(set(seen)) == 4

    one = first["entry"][0]["resource"]
    _, read = audited.call("auditor", "GET", f"/fhir/AuditEvent/{one['id']}")
    assert read.json() == one

    _, provenance = audited.call("auditor", "GET", f"/fhir/Provenance?target=Patient/{pid}")
    assert [e["resource"]["target"] for e in provenance.json()["entry"]] == [
        [{"reference": f"Patient/{pid}/_history/1"}]
    ]
    _, none_later = audited.call("auditor", "GET", "/fhir/AuditEvent?date=gt2999-01-01")
    assert none_later.json()["total"] == 0
    _, unknown = audited.call("auditor", "GET", "/fhir/AuditEvent?patient=x")
    assert (unknown.status_code, unknown.json()["issue"][0]["code"]) == (400, "not-supported")
    # What a client can send is answered, never a 500: a NUL id, a cursor past any seq.
    assert audited.call("auditor", "GET", "/fhir/AuditEvent/%00")[1].status_code == 404
    beyond = base64.urlsafe_b64encode(b"9" * 19).decode().rstrip("=")
    assert (
        audited.call("auditor", "GET", f"/fhir/AuditEvent?_cursor={beyond}")[1].status_code == 400
    )
    largest = base64.urlsafe_b64encode(b"9" * 18).decode().rstrip("=")
    assert (
        audited.call("auditor", "GET", f"/fhir/AuditEvent?_cursor={largest}")[1].status_code == 200
    )
    _, padded = audited.call("auditor", "GET", f"/fhir/AuditEvent?entity=Patient/{pid}&_count=0003")
    assert len(padded.json()["entry"]) == 3


def test_a_provenance_a_client_sent_needs_a_fhir_read_scope_too(audited: Audited) -> None:
    pid = f"v-{uuid.uuid4().hex[:8]}"
    audited.call("ehr", "PUT", f"/fhir/Patient/{pid}", kit.patient(id=pid))
    sent = {
        "resourceType": "Provenance",
        "id": f"prov-{pid}",
        "target": [{"reference": f"Patient/{pid}"}],
        "recorded": "2025-03-01T10:00:00Z",
        "agent": [{"who": {"display": "EHR feed"}}],
    }
    _, stored = audited.call("ehr", "PUT", f"/fhir/Provenance/prov-{pid}", sent)
    assert stored.status_code == 201, stored.text
    _, refused = audited.call("auditor", "GET", f"/fhir/Provenance/prov-{pid}")
    assert refused.status_code == 403  # `audit` reads the trail, not the clinical record


def test_the_export_writes_every_record_as_ndjson(audited: Audited, tmp_path: Path) -> None:
    pid = f"x-{uuid.uuid4().hex[:8]}"
    audited.call("ehr", "PUT", f"/fhir/Patient/{pid}", kit.patient(id=pid))  # a Provenance too
    audited.call("ehr", "GET", "/fhir/Patient?identifier=anything")
    audited.app.state.audit.flush()
    url = audited.engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "TRIALBRIDGE_DATABASE_URL": url}

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "trialbridge"), "audit", "export", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    everything = export("--since", "2000-01-01")
    assert everything.returncode == 0, everything.stderr
    lines = everything.stdout.splitlines()
    with audited.engine.connect() as conn:  # nothing is in flight: the count is exact
        stored = conn.execute(text("SELECT count(*) FROM audit_record")).scalar_one()
        last = conn.execute(text("SELECT max(seq) FROM audit_record")).scalar_one()
    assert len(lines) == stored
    assert everything.stderr.splitlines()[-1] == (
        f"exported {stored} audit record(s); next time: --after-seq {last}"
    )
    kinds = {json.loads(line)["resourceType"] for line in lines}
    assert kinds == {"AuditEvent", "Provenance"}

    # A SIEM exporting on a schedule resumes after the last seq: nothing twice, nothing missed.
    rid, _ = audited.call("ehr", "GET", "/fhir/Patient?identifier=later")
    audited.app.state.audit.flush()
    following = export("--after-seq", str(last))
    assert [_request_id(json.loads(line)) for line in following.stdout.splitlines()] == [rid]

    assert export("--since", "2999-01-01T00:00:00Z").stdout == ""
    naive = export("--since", "2026-01-01T00:00:00")
    assert naive.returncode == 2
    assert "needs an offset" in naive.stderr
    assert export().returncode == 2  # neither --since nor --after-seq


def _serve(database: Path, spool: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "TRIALBRIDGE_DATABASE_URL": f"sqlite:///{database}",
        "TRIALBRIDGE_AUDIT_SPOOL_DIR": str(spool),
        "TRIALBRIDGE_AUTH_DISABLED": "true",
        "TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS": "0",
    }
    server = subprocess.Popen(
        [str(BIN / "trialbridge"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return server, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise AssertionError("the service did not start")


def _audited_request_ids(database: Path) -> list[str]:
    engine = make_engine(Settings(database_url=f"sqlite:///{database}"))
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(text("SELECT request_id FROM audit_record WHERE kind = 'AuditEvent'"))
                .scalars()
                .all()
            )
    finally:
        engine.dispose()


def test_no_answered_read_is_lost_when_the_process_is_killed(tmp_path: Path) -> None:
    database, spool = tmp_path / "crash.db", tmp_path / "spool"
    server, base = _serve(database, spool)
    try:
        answered = []
        for n in range(20):
            rid = f"crash-{n}"
            got = httpx.get(f"{base}/fhir/Patient/p{n}", headers={"x-request-id": rid}, timeout=10)
            assert got.status_code == 404
            answered.append(rid)
        server.send_signal(signal.SIGKILL)  # no shutdown, no flush: what is only in memory is gone
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    # The next start stores what the killed process journaled: every answered read, once.
    again, _ = _serve(database, spool)
    again.terminate()
    again.wait(timeout=30)
    recorded = _audited_request_ids(database)
    assert sorted(recorded) == sorted(answered)
    assert list(spool.glob("*.ndjson")) == []


def test_a_read_whose_audit_record_cannot_be_journaled_is_not_answered(
    backend: str, new_database: Any, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=str(new_database(backend)),
        webhook_interval_seconds=0,
        audit_spool_dir=tmp_path / "spool",
    )
    with served(settings) as running:
        written = httpx.put(
            f"{running.url}/fhir/Patient/zq",
            json=kit.patient(id="zq", name=[{"family": "Qwerty"}]),
            headers=FHIR_JSON,
            timeout=30,
        )
        assert written.status_code == 201
        trail = running.app.state.audit
        full = os.open("/dev/full", os.O_WRONLY)
        try:
            segment = _Segment(tmp_path / "spool")  # a journal whose disk is full
            os.dup2(full, segment.fd)
            with trail._lock:
                trail._segment = segment
            for path in ("/fhir/Patient/zq", f"/api/v1/studies/{NCT}/subjects"):
                answer = httpx.get(f"{running.url}{path}", timeout=60)
                assert answer.status_code == 503, (path, answer.text)
                assert "Qwerty" not in answer.text
        finally:
            os.close(full)
