"""The write path's statements straight on the driver (`service.infra.driver`), on both backends.

They skip SQLAlchemy's per-statement work, so what SQLAlchemy would have done is asserted here:
the same values back (dates, aware datetimes, booleans), its exception types with parameters
hidden, a lost connection invalidated and replaced, and every statement still shown to anything
listening to statements.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlmodel import Session

from service.infra import driver
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.infra.tables import DeviationRow, StudySubject
from service.repositories import deviation_records, fhir_versions, study_subjects
from tests.conftest import POSTGRES_ADMIN_URL

_SUBJECT = StudySubject.__table__  # type: ignore[attr-defined]
_DEV = DeviationRow.__table__  # type: ignore[attr-defined]


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A transaction that is rolled back at the end: nothing stays in the shared database."""
    with Session(engine) as s:
        yield s
        s.rollback()


def _subject(patient_id: str, study_id: str = "NCT06088771") -> dict[str, Any]:
    return {
        "study_id": study_id,
        "patient_id": patient_id,
        "subject_id": f"S-{uuid.uuid4().hex[:10]}",
        "subject_number": "101-004",
        "status": "enrolled",
        "enrolled_on": dt.date(2024, 3, 5),
        "day1": dt.date(2024, 3, 12),
        "updated_at": dt.datetime(2024, 3, 12, 9, 30, 15, 250000, tzinfo=dt.UTC),
    }


def test_rows_come_back_as_sqlalchemy_gives_them(session: Session) -> None:
    """Dates, aware datetimes and strings equal what a Core SELECT returns, by attribute name."""
    patients = [f"p-{uuid.uuid4().hex}" for _ in range(3)]
    for p in patients:
        study_subjects.upsert_subject(session, _subject(p), exists=False)
    session.execute(
        _SUBJECT.update().where(_SUBJECT.c.patient_id == patients[2]).values(enrolled_on=None)
    )
    fast = study_subjects.subjects_of(session, [*patients, "nobody"])
    core = {
        (r.study_id, r.patient_id): r
        for r in session.execute(select(_SUBJECT).where(_SUBJECT.c.patient_id.in_(patients)))
    }
    assert set(fast) == set(core) == {("NCT06088771", p) for p in patients}
    for key, row in core.items():
        assert fast[key]._asdict() == row._asdict()
    first = fast[("NCT06088771", patients[0])]
    assert first.enrolled_on == dt.date(2024, 3, 5)
    assert first.updated_at == dt.datetime(2024, 3, 12, 9, 30, 15, 250000, tzinfo=dt.UTC)
    assert first.updated_at.tzinfo is not None
    assert fast[("NCT06088771", patients[2])].enrolled_on is None


def test_deviation_rows_match_core(session: Session) -> None:
    """A row with integers, a date, datetimes and text: the same as SQLAlchemy's, field by field."""
    patient = f"p-{uuid.uuid4().hex}"
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    dev_id = f"dev-{uuid.uuid4().hex}"
    values: dict[str, Any] = {
        "id": dev_id,
        "study_id": "NCT06088771",
        "patient_id": patient,
        "subject_id": "S-1",
        "rule": "surgery-window",
        "cause": "Procedure/x",
        "status": "open",
        "severity": "major",
        "message": "surgery on day 50",
        "study_day": 50,
        "occurred_on": dt.date(2024, 4, 30),
        "evidence": "{}",
        "detected_at": now,
        "updated_at": now,
        "version": 1,
    }
    deviation_records.insert_deviation(session, values)
    fast = deviation_records.deviations_of(session, "NCT06088771", patient)
    core = session.execute(select(_DEV).where(_DEV.c.patient_id == patient)).one()
    assert list(fast) == [dev_id]
    assert fast[dev_id]._asdict() == core._asdict()
    assert fast[dev_id].study_day == 50
    assert fast[dev_id].occurred_on == dt.date(2024, 4, 30)


def test_a_duplicate_key_is_sqlalchemys_integrity_error_without_its_values(
    session: Session,
) -> None:
    """The write path retries and answers 409 on IntegrityError; the message lists no parameter
    (PostgreSQL's own DETAIL names the conflicting key, as it does through SQLAlchemy)."""
    conn = session.connection()
    secret = f"patient-{uuid.uuid4().hex}"
    row = ("NCT06088771", secret, f"S-{uuid.uuid4().hex[:8]}", "enrolled", "2024-01-01 00:00:00")
    sql = (
        "INSERT INTO study_subject (study_id, patient_id, subject_id, status, updated_at, "
        f"read_token) VALUES ({', '.join([driver.mark(conn)] * 6)})"
    )
    with pytest.raises(IntegrityError) as caught:
        driver.execute_many(conn, sql, [(*row, "t1"), (*row, "t2")])
    message = str(caught.value)
    assert "INSERT INTO study_subject" in message
    assert "parameters:" not in message
    assert secret not in message.split("[SQL:")[1]
    assert caught.value.connection_invalidated is False


def test_one_of_takes_any_length_in_one_parameter(session: Session) -> None:
    """One statement text for 1 or 900 values, and only the listed values match."""
    conn = session.connection()
    patients = [f"p-{uuid.uuid4().hex}" for _ in range(5)]
    for p in patients:
        study_subjects.upsert_subject(session, _subject(p), exists=False)
    where = driver.one_of(conn, "patient_id")
    for wanted in (patients[:1], patients[1:4] + [f"x{i}" for i in range(900)]):
        rows = driver.table_rows(conn, _SUBJECT, where, (driver.list_param(conn, wanted),))
        assert sorted(r.patient_id for r in rows) == sorted(set(wanted) & set(patients))


def test_listeners_see_every_statement(session: Session) -> None:
    """With a statement listener (as tests and instrumentation use), the statements go through
    SQLAlchemy, which shows them; the answers are the same."""
    conn = session.connection()
    patient = f"p-{uuid.uuid4().hex}"
    study_subjects.upsert_subject(session, _subject(patient), exists=False)
    quiet = study_subjects.subjects_of(session, [patient])
    seen: list[str] = []

    def note(*args: Any) -> None:
        seen.append(args[2])

    event.listen(Engine, "before_cursor_execute", note)
    try:
        assert driver.observed(conn)
        heard = study_subjects.subjects_of(session, [patient])
    finally:
        event.remove(Engine, "before_cursor_execute", note)
    assert not driver.observed(conn)
    assert len(seen) == 1
    assert seen[0].startswith("SELECT study_id, patient_id")
    assert {k: v._asdict() for k, v in heard.items()} == {k: v._asdict() for k, v in quiet.items()}


def test_a_lost_connection_is_invalidated_with_the_pools_older_ones() -> None:
    """PostgreSQL restarted under a pool of two: the statement that meets the dead connection says
    it was invalidated, and the other pooled connection (as dead, and returned less than a
    second ago, so not pinged) is replaced too, as SQLAlchemy does: the next session works.
    (SQLite has no server connection to lose.)"""
    engine = make_engine(Settings(database_url=POSTGRES_ADMIN_URL))
    try:
        with Session(engine) as first, Session(engine) as second:
            pids = [
                driver.fetch_all(s.connection(), "SELECT pg_backend_pid()")[0][0]
                for s in (first, second)
            ]
        assert len(set(pids)) == 2
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with Session(engine) as s:
            with pytest.raises(DBAPIError) as caught:
                driver.fetch_all(s.connection(), "SELECT 1")
            assert caught.value.connection_invalidated is True
        with Session(engine) as s:
            assert driver.fetch_all(s.connection(), "SELECT 1") == [(1,)]
    finally:
        engine.dispose()


def test_an_interrupt_mid_statement_invalidates_the_connection(session: Session) -> None:
    """An interrupt inside a statement leaves the connection in an unknown state: it is dropped,
    never handed out again, as SQLAlchemy does; the interrupt itself goes on up."""
    conn = session.connection()

    def interrupted() -> None:
        with driver.cursor(conn, "SELECT 1") as found:
            found.execute("SELECT 1")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert conn.invalidated


def test_current_versions_read_as_before(session: Session) -> None:
    """`read_current_many` (every search page, every re-derivation of dependents) on the driver:
    the current version of each live head, an aware UTC time, in the order asked; a deleted head
    and an unknown id are left out; a moved head gives its newer version."""
    ids = [f"drv-{uuid.uuid4().hex[:16]}" for _ in range(3)]
    t1 = dt.datetime(2024, 6, 1, 8, 0, 0, 125000, tzinfo=dt.UTC)
    t2 = t1 + dt.timedelta(hours=1)

    def row(rid: str, vid: int, at: dt.datetime, content: str | None) -> fhir_versions.VersionRow:
        return fhir_versions.VersionRow("Observation", rid, vid, at, f"h{vid}", content, [], [])

    def write(rows: list[fhir_versions.VersionRow]) -> None:
        heads = fhir_versions.load_heads(session, [r.key for r in rows])
        fhir_versions.write_versions(
            session, rows, heads, source="test", request_id="r", provenance_id=uuid.uuid4().hex
        )

    write([row(i, 1, t1, f'{{"id":"{i}","v":1}}') for i in ids])
    write([row(ids[0], 2, t2, f'{{"id":"{ids[0]}","v":2}}'), row(ids[2], 2, t2, None)])
    found = fhir_versions.read_current_many(
        session, [("Observation", i) for i in (ids[2], "nobody", ids[1], ids[0])]
    )
    assert [(v.resource_id, v.version_id) for v in found] == [(ids[1], 1), (ids[0], 2)]
    assert found[0].last_updated == t1
    assert found[1].last_updated == t2
    assert found[1].last_updated.tzinfo is not None
    assert [v.deleted for v in found] == [False, False]
    assert found[1].content == f'{{"id":"{ids[0]}","v":2}}'


def test_rows_written_are_stored_as_core_stores_them(session: Session) -> None:
    """`insert_row` and `update_rows` bind dates, aware datetimes and nulls as a Core INSERT and
    UPDATE do: the stored values (SQLite: their text) are identical, so every reader agrees."""
    conn = session.connection()
    core_id, fast_id = f"p-{uuid.uuid4().hex}", f"p-{uuid.uuid4().hex}"
    values = _subject("?") | {
        "updated_at": dt.datetime(
            2024, 3, 12, 10, 30, 15, 250000, tzinfo=dt.timezone(dt.timedelta(hours=1))
        )
    }
    session.execute(_SUBJECT.insert(), [values | {"patient_id": core_id, "subject_id": "S-core"}])
    driver.insert_row(conn, _SUBJECT, values | {"patient_id": fast_id, "subject_id": "S-fast"})
    stored = "SELECT enrolled_on, day1, updated_at, subject_number, read_token FROM study_subject "
    where = f"WHERE patient_id = {driver.mark(conn)}"
    core_raw = driver.fetch_all(conn, stored + where, (core_id,))
    fast_raw = driver.fetch_all(conn, stored + where, (fast_id,))
    assert fast_raw == core_raw
    assert len(fast_raw) == 1
    later = {"day1": dt.date(2024, 3, 19), "subject_number": None}
    session.execute(_SUBJECT.update().where(_SUBJECT.c.patient_id == core_id).values(later))
    changed = driver.update_rows(
        conn, _SUBJECT, later, {"study_id": "NCT06088771", "patient_id": fast_id}
    )
    assert changed == 1
    assert driver.fetch_all(conn, stored + where, (fast_id,)) == driver.fetch_all(
        conn, stored + where, (core_id,)
    )
    row = study_subjects.subjects_of(session, [fast_id])[("NCT06088771", fast_id)]
    assert row.day1 == dt.date(2024, 3, 19)
    assert row.updated_at == dt.datetime(2024, 3, 12, 9, 30, 15, 250000, tzinfo=dt.UTC)
    assert row.subject_number is None


def test_a_value_its_column_refuses_fails_as_in_core(session: Session) -> None:
    """A naive datetime is refused by the column type (timezone-aware datetimes only), as
    SQLAlchemy's StatementError, like a Core INSERT; nothing is written."""
    conn = session.connection()
    patient = f"p-{uuid.uuid4().hex}"
    naive = _subject(patient) | {"updated_at": dt.datetime(2024, 3, 12, 9, 30)}
    with pytest.raises(StatementError) as fast:
        driver.insert_row(conn, _SUBJECT, naive)
    with pytest.raises(StatementError) as core:
        session.execute(_SUBJECT.insert(), [naive])
    assert type(fast.value) is type(core.value)
    assert "naive datetime refused" in str(fast.value)
    assert study_subjects.subjects_of(session, [patient]) == {}
    with pytest.raises(ValueError, match="non-null"):
        driver.update_rows(conn, _SUBJECT, {"status": "x"}, {"patient_id": None})
