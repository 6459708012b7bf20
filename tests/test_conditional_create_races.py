"""Conditional creates are atomic: parallel clients on two server processes make one resource.

FHIR (http.html#ccreate): with one match a conditional create answers 200 and the match, with
none it creates. Sixteen clients that create the same identifier at once, through two separate
`trialbridge serve` processes on one database, must leave exactly one resource: one 201, fifteen
200s naming it, and never a 409, 412 or 500; conditional references to it still resolve.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON
from tests.kit import fhir as kit
from tests.kit.live import server_processes

SYSTEM = "urn:mrn:x"
CLIENTS = 16


def _criteria(value: str) -> str:
    return f"identifier={SYSTEM}|{value}"


def _patients(database_url: str, value: str) -> list[str]:
    engine = make_engine(Settings(database_url=database_url))
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    text(
                        "SELECT i.resource_id FROM fhir_identifier i JOIN fhir_resource r "
                        "ON r.resource_type = i.resource_type AND r.resource_id = i.resource_id "
                        "WHERE i.resource_type = 'Patient' AND i.value = :v AND NOT r.deleted"
                    ),
                    {"v": value},
                ).scalars()
            )
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def servers(backend: str, new_database: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two server processes on one new database (each test uses an identifier of its own)."""
    url = str(new_database(backend))
    engine = make_engine(Settings(database_url=url))
    migrate.upgrade(engine)  # once, before two processes start on it
    engine.dispose()
    with server_processes(url, 2, tmp_path_factory.mktemp("spool")) as bases:
        yield url, bases


def _patient(n: int, value: str) -> dict[str, Any]:
    """The same identifier, different content each time (no content-derived id can merge them)."""
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": value}],
        "name": [{"family": f"Client{n}"}],
        "gender": "female" if n % 2 else "male",
    }


def _in_parallel(bases: list[str], send: Any) -> list[httpx.Response]:
    def one(n: int) -> httpx.Response:
        with httpx.Client(base_url=bases[n % len(bases)], timeout=120) as client:
            response: httpx.Response = send(client, n)
            return response

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, range(CLIENTS)))


def test_sixteen_parallel_conditional_creates_make_one_patient(servers: Any) -> None:
    url, bases = servers
    value = "X-1"
    answers = _in_parallel(
        bases,
        lambda c, n: c.post(
            "/fhir/Patient",
            content=json.dumps(_patient(n, value)),
            headers={
                **FHIR_JSON,
                "If-None-Exist": _criteria(value),
                "Prefer": "return=representation",
            },
        ),
    )
    assert sorted(a.status_code for a in answers) == [200] * (CLIENTS - 1) + [201]
    (only,) = _patients(url, value)
    assert {a.json()["id"] for a in answers} == {only}
    referring = httpx.post(
        f"{bases[1]}/fhir/Observation",
        json=kit.observation(
            code="Hemoglobin", patient=None, subject={"reference": f"Patient?{_criteria(value)}"}
        ),
        headers=FHIR_JSON,
        timeout=60,
    )
    assert referring.status_code == 201, referring.text
    assert referring.json()["subject"]["reference"] == f"Patient/{only}"


def test_parallel_transactions_creating_the_same_patient_make_one(servers: Any) -> None:
    url, bases = servers
    value = "X-2"

    def bundle(n: int) -> bytes:
        urn = f"urn:uuid:00000000-0000-4000-8000-{n:012d}"
        return kit.transaction(
            kit.post_entry(_patient(n, value), full_url=urn, ifNoneExist=_criteria(value)),
            kit.post_entry(
                kit.observation(code=f"Test {n % 2}", patient=None, subject={"reference": urn})
            ),
        )

    answers = _in_parallel(
        bases, lambda c, n: c.post("/fhir", content=bundle(n), headers=FHIR_JSON)
    )
    assert [a.status_code for a in answers] == [200] * CLIENTS, [a.text for a in answers]
    (only,) = _patients(url, value)
    created = [a.json()["entry"][0]["response"]["status"].split()[0] for a in answers]
    assert sorted(created) == ["200"] * (CLIENTS - 1) + ["201"]
    assert {a.json()["entry"][0]["response"]["location"].split("/")[1] for a in answers} == {only}


def test_the_same_criteria_twice_in_one_transaction_is_refused(servers: Any) -> None:
    url, bases = servers
    value = "X-3"
    body = kit.transaction(
        kit.post_entry(
            _patient(1, value),
            full_url="urn:uuid:00000000-0000-4000-8000-000000000001",
            ifNoneExist=_criteria(value),
        ),
        kit.post_entry(
            _patient(2, value),
            full_url="urn:uuid:00000000-0000-4000-8000-000000000002",
            ifNoneExist=f"identifier={SYSTEM}|{value}",
        ),
    )
    refused = httpx.post(f"{bases[0]}/fhir", content=body, headers=FHIR_JSON, timeout=60)
    assert refused.status_code == 400
    (issue,) = refused.json()["issue"]
    assert (issue["code"], issue["expression"]) == (
        "duplicate",
        ["Bundle.entry[1].request.ifNoneExist"],
    )
    assert _patients(url, value) == []
