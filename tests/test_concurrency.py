"""Concurrent identical writes leave one copy; a lost database leaves nothing half-written."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, event
from sqlmodel import Session

from service.errors import FhirError
from service.fhir.interactions import FhirService
from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.repositories.service_secrets import get_or_create_secret
from tests.conftest import POSTGRES_ADMIN_URL, counts
from tests.kit.fhir import entry, patient, post_entry, transaction, viable_tumour
from tests.kit.pg_activity import waiting_on_a_lock
from tests.kit.store import store_counts

P_URN = "urn:uuid:0b7c2a4e-5f6d-4e3c-8b2a-9d8e7f6a5b01"


def _transaction() -> bytes:
    return transaction(
        post_entry(patient(mrn="conc"), full_url=P_URN),
        post_entry(viable_tumour(subject=P_URN, value=12.5)),
        entry(
            method="PUT",
            url="Encounter/enc-1",
            resource={
                "resourceType": "Encounter",
                "id": "enc-1",
                "status": "finished",
                "class": {"code": "AMB"},
            },
        ),
    )


def test_same_transaction_posted_8_times_at_once_leaves_one_copy(
    server: Any, engine: Engine, fhir: httpx.Client
) -> None:
    body = _transaction()

    def post(_: int) -> httpx.Response:
        with httpx.Client(
            base_url=server.fhir, headers={"content-type": "application/fhir+json"}, timeout=60
        ) as client:
            return client.post("/", content=body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, range(8)))

    assert all(r.status_code in (200, 409, 412) for r in responses), [
        r.status_code for r in responses
    ]
    ok = [r.json() for r in responses if r.status_code == 200]
    assert ok, "at least one of the eight must succeed"
    locations = {
        tuple(e["response"]["location"].split("/_history")[0] for e in b["entry"]) for b in ok
    }
    assert len(locations) == 1  # every success reports the same three resources
    created = [
        s for b in ok for s in (e["response"]["status"] for e in b["entry"]) if s.startswith("201")
    ]
    assert len(created) == 3  # each resource was created by exactly one request
    assert counts(engine) == store_counts(
        fhir_resource=3,
        fhir_resource_version=3,
        fhir_identifier=1,
        fhir_reference=2,
        trial_event=3,  # demographics, viable tumour, encounter: derived once too
    )


def test_replay_after_a_lost_response_returns_the_same_ids(
    fhir: httpx.Client, engine: Engine
) -> None:
    first = fhir.post("/", content=_transaction()).json()
    replay = fhir.post("/", content=_transaction()).json()
    assert [e["response"]["location"] for e in replay["entry"]] == [
        e["response"]["location"] for e in first["entry"]
    ]
    assert counts(engine)["fhir_resource_version"] == 3


def test_identical_creates_in_parallel_give_one_resource(
    server: Any, engine: Engine, fhir: httpx.Client
) -> None:
    body = patient(mrn="same-content", active=True)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.fhir, timeout=60) as client:
            return client.post(
                "/Patient", json=body, headers={"content-type": "application/fhir+json"}
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.headers["location"] for r in responses}) == 1
    assert counts(engine)["fhir_resource"] == 1


def test_database_lost_mid_transaction_writes_nothing_and_says_transient(new_database: Any) -> None:
    url = new_database("postgres")
    settings = Settings(database_url=url, write_retries=1)
    engine = make_engine(settings)
    migrate.upgrade(engine)
    store = FhirService(engine, settings)

    def kill_connection(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # the resources are written (COPY) by now: derivation is the first to ask for events
        if "trial_event" in statement:
            pid = conn.connection.dbapi_connection.info.backend_pid
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    event.listen(engine, "before_cursor_execute", kill_connection)
    from fhir_mapping.json_codec import loads

    with pytest.raises(FhirError) as caught:
        store.bundle(loads(_transaction()), ctx=store.context("test"))
    event.remove(engine, "before_cursor_execute", kill_connection)
    assert caught.value.status == 503
    assert caught.value.issues[0].code == "transient"
    assert counts(engine) == store_counts()
    engine.dispose()


def test_unreachable_database_is_a_transient_error() -> None:
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:1/none", write_retries=1)
    store = FhirService(make_engine(settings), settings)
    with pytest.raises(FhirError) as caught:
        store.create("Patient", patient(mrn="x"), if_none_exist=None, ctx=store.context("test"))
    assert (caught.value.status, caught.value.issues[0].code) == (503, "transient")


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
    return int(pid)


def test_a_pooled_connection_is_pinged_after_idling_and_replaced_when_dead(
    new_database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that died while idle in the pool is replaced before a request gets it."""
    from service.infra import db

    url = new_database("postgres")
    engine = make_engine(Settings(database_url=url, db_pool_size=1))
    migrate.upgrade(engine)
    try:
        first = _backend_pid(engine)
        assert _backend_pid(engine) == first  # used again at once: the pool keeps it
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)  # it has idled long enough
        store = FhirService(engine, Settings(database_url=url))
        made = store.create(
            "Patient", patient(mrn="after-ping"), if_none_exist=None, ctx=store.context("test")
        )
        assert made.status == 201
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_two_first_askers_of_a_service_secret_both_get_the_one_stored(new_database: Any) -> None:
    # Two servers starting on a new database both make the evidence key at once. The second's
    # insert waits for the first's transaction; it must then read the first's key, not fail on
    # the unique key (which stopped that server's start-up: `serve` exited 3).
    engine = make_engine(Settings(database_url=new_database("postgres")))
    migrate.upgrade(engine)
    first = Session(engine)
    try:
        assert get_or_create_secret(first, "test-key", lambda: "first's") == "first's"
        with ThreadPoolExecutor(1) as pool:

            def second() -> str:
                with Session(engine) as session:
                    value = get_or_create_secret(session, "test-key", lambda: "second's")
                    session.commit()
                    return value

            answer = pool.submit(second)
            deadline = time.monotonic() + 60  # a guard against a hang, not a timed assertion
            while not answer.done() and not waiting_on_a_lock(engine):
                assert time.monotonic() < deadline, "the second asker neither ended nor waited"
                time.sleep(0.01)
            first.commit()
            assert answer.result(60) == "first's"
    finally:
        first.close()
        engine.dispose()
