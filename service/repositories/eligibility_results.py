"""All SQL for stored screening results, one row per candidate and study. Nothing here commits."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, func, select
from sqlmodel import Session

from service.infra import driver
from service.infra.tables import (
    EligibilityRow,
    StudySubject,
)
from service.repositories.sql import chunks, delete_per_patient, save_per_patient

_SUBJECT = StudySubject.__table__  # type: ignore[attr-defined]
_ELIGIBILITY = EligibilityRow.__table__  # type: ignore[attr-defined]


def eligibility_of(session: Session, study_id: str, patient_ids: Sequence[str]) -> dict[str, Any]:
    """Stored eligibility rows of these patients, by patient id."""
    conn = session.connection()  # every write's derivation runs this: straight to the driver
    where = f"study_id = {driver.mark(conn)} AND {driver.one_of(conn, 'patient_id')}"
    out: dict[str, Any] = {}
    for chunk in chunks(list(patient_ids)):
        rows = driver.table_rows(
            conn, _ELIGIBILITY, where, (study_id, driver.list_param(conn, chunk))
        )
        out.update((r.patient_id, r) for r in rows)
    return out


def save_eligibility(session: Session, values: dict[str, Any], exists: bool) -> None:
    """Insert or replace one candidate's result, with a new read token: cached reads go stale."""
    fresh = {**values, "read_token": secrets.token_hex(16)}
    save_per_patient(session, _ELIGIBILITY, fresh, exists)


def delete_eligibility(session: Session, study_id: str, patient_id: str) -> None:
    """A patient who is no longer a candidate leaves the screening list."""
    delete_per_patient(session, _ELIGIBILITY, study_id, patient_id)


def list_eligibility(
    session: Session, study_id: str, *, after: str | None, limit: int, overall: str | None
) -> list[Any]:
    """A page of the screening list in subject_id order."""
    c = _ELIGIBILITY.c
    query = select(_ELIGIBILITY).where(c.study_id == study_id)
    if after is not None:
        query = query.where(c.subject_id > after)
    if overall is not None:
        query = query.where(c.overall == overall)
    return list(session.execute(query.order_by(c.subject_id).limit(limit)))


def find_eligibility(session: Session | Connection, study_id: str, subject_id: str) -> Any | None:
    """One candidate's stored result by subject id."""
    c = _ELIGIBILITY.c
    return session.execute(
        select(_ELIGIBILITY).where(c.study_id == study_id, c.subject_id == subject_id)
    ).first()


_READ_TOKEN = select(_ELIGIBILITY.c.read_token).where(
    _ELIGIBILITY.c.study_id == bindparam("study_id"),
    _ELIGIBILITY.c.subject_id == bindparam("subject_id"),
)


# The same lookup as plain SQL (`?` placeholders), for service.infra.loop_reads (on the event loop)
READ_TOKEN_SQL = "SELECT read_token FROM eligibility_result WHERE study_id = ? AND subject_id = ?"


def read_token(conn: Connection, study_id: str, subject_id: str) -> tuple[bool, str | None]:
    """(whether the candidate has a stored result, its read token): the check before a cached
    answer (one indexed row, one column)."""
    row = conn.execute(_READ_TOKEN, {"study_id": study_id, "subject_id": subject_id}).first()
    return (False, None) if row is None else (True, row[0])


def study_eligibility(session: Session, study_id: str) -> list[Any]:
    """Every stored screening result of the study (a cohort report's flow reads them all)."""
    c = _ELIGIBILITY.c
    query = select(_ELIGIBILITY).where(c.study_id == study_id).order_by(c.patient_id)
    return list(session.execute(query))


def fingerprint(session: Session, study_id: str) -> tuple[Any, ...]:
    """Moves whenever the study's screening list changes (count, latest computation)."""
    c = _ELIGIBILITY.c
    row = session.execute(
        select(func.count(), func.max(c.computed_at)).where(c.study_id == study_id)
    ).one()
    return tuple(row)
