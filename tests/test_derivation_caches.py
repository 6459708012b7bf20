"""What derivation remembers between units of work is only ever what was committed."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session

from fhir_mapping.bundles import resource_entry
from fhir_mapping.json_codec import loads
from fhir_mapping.partial_dates import forget_parsed_dates, in_zone, parse_partial_date
from fhir_mapping.resource_types import SUPPORTED_TYPES
from service.derivation import refresh as derivation_module
from service.derivation.catalog import load_catalog
from service.fhir.ingest import WriteContext, apply_entries
from service.infra import migrate
from service.infra.clock import utcnow
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.repositories import trial_events
from service.repositories.unit_of_work import UnitOfWork
from tests.conftest import TEST_DATA
from tests.kit import fhir as kit

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
            uow = UnitOfWork(session)
            discarded = derivation.pseudonym_key(uow)
            assert derivation.pseudonym_key(uow) == discarded  # one key per unit of work
            uow.rollback()
        assert _stored_keys(engine) == []
        with Session(engine) as session:
            uow = UnitOfWork(session)
            kept = derivation.pseudonym_key(uow)
            uow.commit()
        assert kept != discarded
        assert [k.encode() for k in _stored_keys(engine)] == [kept]
        with Session(engine) as session:
            assert derivation.pseudonym_key(UnitOfWork(session)) == kept
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
            uow = UnitOfWork(session)
            apply_entries(uow, [entry], ctx)
            _, changed = derivation.terminology(uow)
            assert changed  # the site code is new
            uow.rollback()
        with Session(engine) as session:
            uow = UnitOfWork(session)
            _, changed = derivation.terminology(uow)
            assert not changed  # compared with what is committed: nothing changed
            uow.commit()
        entry = resource_entry(SITE_VALUESET, method="PUT", path="", resource_id="site-dupilumab")
        with Session(engine) as session:
            uow = UnitOfWork(session)
            apply_entries(uow, [entry], ctx)
            _, changed = derivation.terminology(uow)
            assert changed
            uow.commit()
        with Session(engine) as session:
            _, changed = derivation.terminology(UnitOfWork(session))
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
            with (
                caplog.at_level(logging.ERROR, logger="service.derivation.refresh"),
                Session(engine) as s,
            ):
                uow = UnitOfWork(s)
                apply_entries(
                    uow, [resource_entry(patient, method="PUT", path="", resource_id="p1")], ctx
                )
                derivation.after_write(uow)
                assert caplog.records == []  # not yet: the transaction may still be refused
                getattr(uow, outcome)()
            reported = [r.getMessage() for r in caplog.records]
            if outcome == "rollback":
                assert reported == []
            else:
                assert reported == ["mapping a Patient (version 1) failed; it yields no events"]
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
            uow = UnitOfWork(session)
            apply_entries(uow, entries, ctx)
            derivation.after_write(uow)
            mapped = {id(e) for e in uow.stored_events.values()}
            in_session = trial_events.events_of(
                session, patients, stored=uow.stored_events, zone=dt.UTC
            )
            uow.commit()
        with Session(engine) as session:
            decoded = trial_events.events_of(session, patients, zone=dt.UTC)
            stored = session.execute(text("SELECT count(*) FROM trial_event")).scalar_one()
        served = [e for events in in_session.values() for e in events]
        assert len(served) == len(mapped) == stored  # every event came from memory, none decoded
        assert all(id(e) in mapped for e in served)
        assert in_session == decoded
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "value", ["2024-03-05", "2024-03-05T10:00:00+02:00", "2024-03-05T10:00:00Z"]
)
def test_a_date_already_in_the_site_calendar_is_the_same_object_after_the_caches_are_emptied(
    value: str,
) -> None:
    # After a large request the parsed-date cache is emptied (to return memory): dates parsed after
    # that are new objects equal to old ones. Converting one to the site's calendar must still give
    # back that very object, or events_of would see a different event and decode it again (the
    # order-dependent failure of the test above in the full suite).
    zone = dt.UTC
    first = parse_partial_date(value)
    assert first is not None
    assert in_zone(first, zone) is first
    forget_parsed_dates()
    again = parse_partial_date(value)
    assert again is not None
    assert again == first
    assert again is not first
    assert in_zone(again, zone) is again


def test_a_rolled_back_write_leaves_no_study_change(new_database: Any, backend: str) -> None:
    """A write marks the studies it changed in its own transaction (issue 19: the per-study change
    sequence): one that rolls back after its derivation marked NCT06088771 changed leaves no
    change row, so no snapshot goes stale for it; the same write committed leaves its rows."""
    engine, derivation = _fresh(new_database, backend)
    ctx = WriteContext(now=utcnow(), source="test", request_id="r")
    resources = [
        kit.research_study(),
        kit.patient(id="p1", gender="female", birth_date="1960-01-01"),
        kit.research_subject(id="p1-rs", patient="p1", start="2025-03-03"),
    ]

    def changes(session: Any) -> int:
        return int(session.execute(text("SELECT count(*) FROM study_change")).scalar_one())

    try:
        marked = []
        for outcome in ("rollback", "commit"):
            entries = [
                resource_entry(r, method="PUT", path="", resource_id=r["id"]) for r in resources
            ]
            with Session(engine) as session:
                uow = UnitOfWork(session)
                apply_entries(uow, entries, ctx)
                derivation.after_write(uow)
                marked.append((sorted(uow.changed_studies), changes(session)))
                if outcome == "rollback":
                    uow.rollback()
                else:
                    uow.commit()
            with Session(engine) as session:
                assert changes(session) == (0 if outcome == "rollback" else marked[-1][1])
        assert marked == [(["NCT06088771"], 1)] * 2  # one change row per study changed
    finally:
        engine.dispose()
