"""What derivation remembers between units of work is only ever what was committed."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session

from fhir_mapping.bundles import resource_entry
from fhir_mapping.json_codec import loads
from fhir_mapping.resource_types import SUPPORTED_TYPES
from service import derivation as derivation_module
from service import event_store, migrate
from service.catalog import load_catalog
from service.db import make_engine
from service.fhir_time import utcnow
from service.ingest import WriteContext, apply_entries
from service.settings import Settings
from tests.conftest import TEST_DATA

SITE_VALUESET = {
    "resourceType": "ValueSet",
    "id": "site-dupilumab",
    "url": "urn:trialbridge:valueset:dupilumab",
    "status": "active",
    "compose": {"include": [{"system": "urn:site:pharmacy", "concept": [{"code": "DUPI-300"}]}]},
}


def _fresh(new_database: Any, backend: str) -> tuple[Any, Any]:
    settings = Settings(database_url=new_database(backend))
    engine = make_engine(settings)
    migrate.upgrade(engine)
    return engine, load_catalog(settings).derivation


def _stored_keys(engine: Any) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT value FROM service_secret"))]


def test_a_pseudonym_key_made_in_a_rolled_back_transaction_is_forgotten(
    new_database: Any, backend: str
) -> None:
    engine, derivation = _fresh(new_database, backend)
    try:
        with Session(engine) as session:
            discarded = derivation.pseudonym_key(session)
            assert derivation.pseudonym_key(session) == discarded  # one key per unit of work
            session.rollback()
        assert _stored_keys(engine) == []
        with Session(engine) as session:
            kept = derivation.pseudonym_key(session)
            session.commit()
        assert kept != discarded
        assert [k.encode() for k in _stored_keys(engine)] == [kept]
        with Session(engine) as session:
            assert derivation.pseudonym_key(session) == kept
    finally:
        engine.dispose()


def test_a_rolled_back_valueset_does_not_become_the_terminology_baseline(
    new_database: Any, backend: str
) -> None:
    engine, derivation = _fresh(new_database, backend)
    ctx = WriteContext(now=utcnow(), source="test", request_id="r")
    entry = resource_entry(SITE_VALUESET, method="PUT", path="", resource_id="site-dupilumab")
    try:
        with Session(engine) as session:
            apply_entries(session, [entry], ctx)
            _, changed = derivation.terminology(session)
            assert changed  # the site code is new
            session.rollback()
        with Session(engine) as session:
            _, changed = derivation.terminology(session)
            assert not changed  # compared with what is committed: nothing changed
            session.commit()
        entry = resource_entry(SITE_VALUESET, method="PUT", path="", resource_id="site-dupilumab")
        with Session(engine) as session:
            apply_entries(session, [entry], ctx)
            _, changed = derivation.terminology(session)
            assert changed
            session.commit()
        with Session(engine) as session:
            _, changed = derivation.terminology(session)
            assert not changed  # committed: now the baseline
    finally:
        engine.dispose()


def test_a_mapping_failure_is_reported_only_for_content_that_is_kept(
    new_database: Any,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, derivation = _fresh(new_database, backend)

    def broken(*_args: Any) -> list[Any]:
        raise ValueError("mapper bug")

    monkeypatch.setattr(derivation_module, "map_resource", broken)
    ctx = WriteContext(now=utcnow(), source="test", request_id="r")
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female"}
    try:
        for outcome in ("rollback", "commit"):
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="service.derivation"), Session(engine) as s:
                apply_entries(
                    s, [resource_entry(patient, method="PUT", path="", resource_id="p1")], ctx
                )
                derivation.after_write(s)
                assert caplog.records == []  # not yet: the transaction may still be refused
                getattr(s, outcome)()
            reported = [r.getMessage() for r in caplog.records]
            if outcome == "rollback":
                assert reported == []
            else:
                assert reported == ["mapping Patient/p1 failed; it yields no events"]
                assert caplog.records[0].exc_info is not None
    finally:
        engine.dispose()


def test_events_read_back_in_the_writing_session_are_the_events_decoded_later(
    new_database: Any, backend: str
) -> None:
    # events_of hands back the events a session stored instead of decoding their payloads again:
    # that is only right if every payload decodes to the very event it was made from.
    engine, derivation = _fresh(new_database, backend)
    # as `trialbridge load` does: conditional references to practitioners are kept as sent
    ctx = WriteContext(
        now=utcnow(), source="test", request_id="r", resolve_conditional_references=False
    )
    resources = [
        loads(line)
        for path in sorted((TEST_DATA / "synthea-10").glob("*.ndjson"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]
    entries = [
        resource_entry(r, method="PUT", path="", resource_id=r["id"])
        for r in resources
        if r["resourceType"] in SUPPORTED_TYPES
    ]
    patients = sorted(r["id"] for r in resources if r["resourceType"] == "Patient")
    try:
        with Session(engine) as session:
            apply_entries(session, entries, ctx)
            derivation.after_write(session)
            mapped = {id(e) for e in session.info[event_store._STORED_EVENTS].values()}
            in_session = event_store.events_of(session, patients)
            session.commit()
        with Session(engine) as session:
            decoded = event_store.events_of(session, patients)
            stored = session.execute(text("SELECT count(*) FROM trial_event")).scalar_one()
        served = [e for events in in_session.values() for e in events]
        assert len(served) == len(mapped) == stored  # every event came from memory, none decoded
        assert all(id(e) in mapped for e in served)
        assert in_session == decoded
    finally:
        engine.dispose()
