"""Logs carry no patient data: one JSON access line per request, by route template, with its id.

A patient named "Zyxwvut Qwerty" with MRN "MRN-ZQ-777" is posted, searched by identifier, read,
and read through the study API, with authentication on. No line the service logs may contain the
name, the MRN or the patient's FHIR id, and no study API answer the name or the MRN.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.request_log import JsonFormatter
from service.access.clients import add_client
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON
from tests.kit.auth import access_token, bearer, ec_key, jwks
from tests.kit.cohort import settle
from tests.kit.live import served

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nct06088771-patient.json"
NCT = "NCT06088771"
MRN = "MRN-ZQ-777"
SECRETS = ("Zyxwvut", "Qwerty", MRN)
BIRTH_DATE = "1959-08-14"  # the example patient's
KEY, STATS_KEY = ec_key("ehr-1"), ec_key("stats-1")
SERVICE_LOGGERS = ("api", "service", "trialbridge", "uvicorn")


@dataclass
class App:
    """A running app with authentication on and one client's token."""

    url: str
    token: str
    statistician: str  # study/*.read only: no /fhir access
    served: FastAPI

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A request with the client's token."""
        headers = {**bearer(self.token), **kw.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kw)


@pytest.fixture(scope="module")
def app(backend: str, new_database: Any) -> Iterator[App]:
    """The app with authentication on and an EHR client allowed everything it needs."""
    settings = Settings(
        database_url=str(new_database(backend)), auth_disabled=False, webhook_interval_seconds=0
    )
    with served(settings) as running:
        scopes = ["system/*.cruds", "study/*.read"]
        add_client(running.engine, "ehr", scopes, jwks=jwks(KEY))
        add_client(running.engine, "stats", ["study/*.read"], jwks=jwks(STATS_KEY))
        yield App(
            running.url,
            access_token(running.url, KEY, "ehr", " ".join(scopes)),
            access_token(running.url, STATS_KEY, "stats", "study/*.read"),
            running.app,
        )


def _service_lines(records: list[logging.LogRecord]) -> list[str]:
    formatter = JsonFormatter()
    return [formatter.format(r) for r in records if r.name.startswith(SERVICE_LOGGERS)]


def test_no_patient_data_reaches_a_log_line_or_a_study_answer(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bundle = (
        EXAMPLE.read_text()
        .replace("EX-0042117", MRN)
        .replace('"Synthetic"', '"Qwerty"')
        .replace('"Example"', '"Zyxwvut"')
        .replace("Example Synthetic", "Zyxwvut Qwerty")
    )
    posted = app.call("POST", "/fhir", content=bundle, headers=FHIR_JSON)
    assert posted.status_code == 200, posted.text
    fhir_ids = [e["response"]["location"].split("/")[1] for e in posted.json()["entry"]]
    assert len(fhir_ids) == len(set(fhir_ids)) > 20
    found = app.call("GET", "/fhir/Patient", params={"identifier": MRN})
    (entry,) = found.json()["entry"]
    patient_id = entry["resource"]["id"]
    assert app.call("GET", f"/fhir/Patient/{patient_id}").status_code == 200
    subjects = app.call("GET", f"/api/v1/studies/{NCT}/subjects").json()["subjects"]
    sid = subjects[0]["subject_id"]
    deviation = app.call("GET", f"/api/v1/studies/{NCT}/deviations").json()["deviations"][0]["id"]
    # the cohort answers below hold the patient, not an empty snapshot
    settle(app.served, NCT, "cirae-dupilumab")
    answers = [
        app.call("GET", path)
        for path in (
            f"/api/v1/studies/{NCT}/deviations/{deviation}",
            f"/api/v1/studies/{NCT}/subjects",
            f"/api/v1/studies/{NCT}/subjects/{sid}/timeline",
            f"/api/v1/studies/{NCT}/subjects/{sid}/eligibility",
            f"/api/v1/studies/{NCT}/subjects/{sid}/outcomes",
            f"/api/v1/studies/{NCT}/eligibility",
            f"/api/v1/studies/{NCT}/deviations",
            f"/api/v1/studies/{NCT}/outcomes",
            f"/api/v1/studies/{NCT}/outcomes/subjects",
            f"/api/v1/studies/{NCT}/outcomes/swimmer",
            "/api/v1/studies/cirae-dupilumab/outcomes/excluded",
        )
    ]
    assert [a.status_code for a in answers] == [200] * 11
    for answer in answers:
        for secret in (*SECRETS, BIRTH_DATE, *fhir_ids):
            at = answer.text.find(secret)
            assert at < 0, (answer.url, secret, answer.text[max(0, at - 300) : at + 60])
    # the cohort's listing names the subject, by its pseudonym only; the outcomes count it
    assert [r["subject_id"] for r in answers[8].json()["subjects"]] == [sid]
    assert answers[7].json()["outcomes"]["counts"]["subjects"] == 1
    assert '"age_at_enrollment":65' in answers[2].text  # born 1959-08-14, enrolled 2025-02-24

    # Evidence ids name the resource only for a token that may read it under /fhir.
    evidence = answers[3].json()["criteria"][1]["evidence"][0]["evidence_id"]
    resolved = app.call("GET", f"/api/v1/studies/{NCT}/evidence/{evidence}")
    assert resolved.status_code == 200
    assert resolved.json()["reference"].split("/")[1] in fhir_ids
    statistician = httpx.get(
        f"{app.url}/api/v1/studies/{NCT}/evidence/{evidence}",
        headers=bearer(app.statistician),
        timeout=30,
    )
    assert (statistician.status_code, statistician.json()["error"]["code"]) == (
        403,
        "insufficient_scope",
    )
    assert not [i for i in fhir_ids if i in statistician.text]
    elsewhere = app.call("GET", f"/api/v1/studies/cirae-dupilumab/evidence/{evidence}")
    assert elsewhere.status_code == 404  # an id is bound to the study it was issued in

    lines = _service_lines(caplog.records)
    for secret in (*SECRETS, BIRTH_DATE, *fhir_ids):
        leaking = [line for line in lines if secret in line]
        assert leaking == [], secret
    assert patient_id in fhir_ids
    access = [json.loads(line) for line in lines if '"logger": "trialbridge.access"' in line]
    assert [(a["method"], a["route"], a["status"], a["client"]) for a in access] == [
        ("POST", "/fhir", 200, "ehr"),
        ("GET", "/fhir/{resource_type}", 200, "ehr"),
        ("GET", "/fhir/{resource_type}/{resource_id}", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/subjects", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/deviations", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/deviations/{deviation_id}", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/subjects", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/subjects/{subject_id}/timeline", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/subjects/{subject_id}/eligibility", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/subjects/{subject_id}/outcomes", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/eligibility", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/deviations", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/outcomes", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/outcomes/subjects", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/outcomes/swimmer", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/outcomes/excluded", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/evidence/{evidence_id}", 200, "ehr"),
        ("GET", "/api/v1/studies/{study_id}/evidence/{evidence_id}", 403, "stats"),
        ("GET", "/api/v1/studies/{study_id}/evidence/{evidence_id}", 404, "ehr"),
    ]
    assert len({a["request_id"] for a in access}) == len(access)  # one id per request


def test_the_request_id_is_echoed_kept_when_well_formed_and_on_refusals(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    kept = app.call("GET", "/api/v1/studies", headers={"x-request-id": "ctms.batch-42"})
    assert kept.headers["x-request-id"] == "ctms.batch-42"
    replaced = httpx.get(
        f"{app.url}/api/v1/studies", headers={"x-request-id": "a b\tc"}, timeout=30
    )  # no token either: refused, and still answered with an id
    assert replaced.status_code == 401
    made = replaced.headers["x-request-id"]
    assert len(made) == 32
    assert made != "a b\tc"
    access = [
        json.loads(line)
        for line in _service_lines(caplog.records)
        if '"logger": "trialbridge.access"' in line
    ]
    assert [(a["request_id"], a["status"], a["client"]) for a in access] == [
        ("ctms.batch-42", 200, "ehr"),
        (made, 401, None),
    ]


def test_a_client_that_disconnects_mid_body_leaves_one_info_line(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Not an unhandled error with tracebacks: the client went away, that is all."""
    caplog.set_level(logging.INFO)
    host, port = app.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(
            b"POST /fhir/Patient HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + app.token.encode() + b"\r\n"
            b"Content-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n"
            b'{"resourceType":'
        )
        time.sleep(0.3)  # the server is now waiting for the rest of the body
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        "disconnected" in r.getMessage() for r in caplog.records
    ):
        time.sleep(0.05)
    lines = [r for r in caplog.records if r.name.startswith(SERVICE_LOGGERS)]
    gone = [r for r in lines if "disconnected" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in gone] == [
        ("INFO", "client disconnected before its request body arrived (/fhir/{resource_type})")
    ]
    assert [r for r in lines if r.levelno >= logging.ERROR or r.exc_info] == []
