"""All SQL for study subjects (who is in which study, pseudonymous id, Day 1). Nothing here commits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlmodel import Session

from service.infra import driver
from service.infra.tables import StudySubject
from service.repositories.sql import chunks, delete_per_patient, save_per_patient

_SUBJECT = StudySubject.__table__  # type: ignore[attr-defined]


def subjects_of(session: Session, patient_ids: Sequence[str]) -> dict[tuple[str, str], Any]:
    """Current subject rows for these patients, keyed by (study, patient)."""
    conn = session.connection()  # every write's derivation runs this: straight to the driver
    where = driver.one_of(conn, "patient_id")
    out: dict[tuple[str, str], Any] = {}
    for chunk in chunks(list(patient_ids)):
        for row in driver.table_rows(conn, _SUBJECT, where, (driver.list_param(conn, chunk),)):
            out[(row.study_id, row.patient_id)] = row
    return out


def upsert_subject(session: Session, values: dict[str, Any], exists: bool) -> None:
    """Insert or update one subject row."""
    save_per_patient(session, _SUBJECT, values, exists)


def renew_read_tokens(session: Session, patient_ids: Sequence[str], token: str) -> None:
    """Give these patients' subject rows (every study) a new read token: cached reads go stale."""
    conn = session.connection()  # every write that touches a subject runs this
    sql = (
        f"UPDATE study_subject SET read_token = {driver.mark(conn)} "
        f"WHERE {driver.one_of(conn, 'patient_id')}"
    )
    for chunk in chunks(sorted(patient_ids)):
        driver.execute(conn, sql, (token, driver.list_param(conn, chunk)))


def delete_subject(session: Session, study_id: str, patient_id: str) -> None:
    """A patient who no longer qualifies is no longer listed."""
    delete_per_patient(session, _SUBJECT, study_id, patient_id)


def list_subjects(
    session: Session,
    study_id: str,
    *,
    after: str | None,
    limit: int,
    status: str | None = None,
    subject_number: str | None = None,
) -> list[Any]:
    """A page of subjects in subject_id order (cursor = the last subject_id seen)."""
    c = _SUBJECT.c
    query = select(_SUBJECT).where(c.study_id == study_id)
    if after is not None:
        query = query.where(c.subject_id > after)
    if status is not None:
        query = query.where(c.status == status)
    if subject_number is not None:
        query = query.where(c.subject_number == subject_number)
    return list(session.execute(query.order_by(c.subject_id).limit(limit)))


def find_subject(session: Session, study_id: str, subject_id: str) -> Any | None:
    """One subject by its pseudonymous id."""
    c = _SUBJECT.c
    return session.execute(
        select(_SUBJECT).where(c.study_id == study_id, c.subject_id == subject_id)
    ).first()


_READ_TOKEN = select(_SUBJECT.c.read_token).where(
    _SUBJECT.c.study_id == bindparam("study_id"), _SUBJECT.c.subject_id == bindparam("subject_id")
)


# The same lookup as plain SQL (`?` placeholders), for service.infra.loop_reads (on the event loop)
READ_TOKEN_SQL = "SELECT read_token FROM study_subject WHERE study_id = ? AND subject_id = ?"


def read_token(conn: Connection, study_id: str, subject_id: str) -> tuple[bool, str | None]:
    """(whether the subject exists, its read token): the check before a cached answer."""
    row = conn.execute(_READ_TOKEN, {"study_id": study_id, "subject_id": subject_id}).first()
    return (False, None) if row is None else (True, row[0])


def study_subjects(session: Session, study_id: str) -> list[Any]:
    """Every subject row of a study, in subject_id order (cohort-level outcomes read them all)."""
    c = _SUBJECT.c
    return list(
        session.execute(select(_SUBJECT).where(c.study_id == study_id).order_by(c.subject_id))
    )
