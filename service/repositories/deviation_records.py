"""All SQL for protocol deviations and their history. Nothing here commits."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import insert, select, update
from sqlmodel import Session

from service.infra import driver
from service.infra.clock import iso_utc
from service.infra.tables import DeviationHistoryRow, DeviationRow
from service.repositories.sql import compact_json

_DEV = DeviationRow.__table__  # type: ignore[attr-defined]
_HIST = DeviationHistoryRow.__table__  # type: ignore[attr-defined]


def deviations_of(session: Session, study_id: str, patient_id: str) -> dict[str, Any]:
    """Every deviation ever raised for one subject, by id."""
    conn = session.connection()  # every write's derivation runs this: straight to the driver
    where = f"study_id = {driver.mark(conn)} AND patient_id = {driver.mark(conn)}"
    return {r.id: r for r in driver.table_rows(conn, _DEV, where, (study_id, patient_id))}


def insert_deviation(session: Session, values: dict[str, Any]) -> None:
    """A newly detected deviation."""
    driver.insert_row(session.connection(), _DEV, values)


def update_deviation(
    session: Session, deviation_id: str, values: dict[str, Any], expected_version: int | None = None
) -> bool:
    """Change a deviation and bump its version; False when the version did not match."""
    c = _DEV.c
    query = update(_DEV).where(c.id == deviation_id)
    if expected_version is not None:
        query = query.where(c.version == expected_version)
    result = session.execute(query.values({**values, "version": c.version + 1}))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def add_history(
    session: Session, deviation_id: str, at: dt.datetime, actor: str, action: str, detail: Any
) -> None:
    """Append one change to a deviation's history."""
    session.execute(
        insert(_HIST),
        [
            {
                "deviation_id": deviation_id,
                "at": at,
                "actor": actor,
                "action": action,
                "detail": compact_json(detail),
            }
        ],
    )


def history_of(session: Session, deviation_id: str) -> list[Any]:
    """A deviation's changes, oldest first."""
    c = _HIST.c
    return list(session.execute(select(_HIST).where(c.deviation_id == deviation_id).order_by(c.pk)))


def get_deviation(session: Session, study_id: str, deviation_id: str) -> Any | None:
    """One deviation of a study."""
    c = _DEV.c
    return session.execute(select(_DEV).where(c.study_id == study_id, c.id == deviation_id)).first()


def list_deviations(
    session: Session,
    study_id: str,
    *,
    after: str | None,
    limit: int,
    subject_id: str | None = None,
    rule: str | None = None,
    severity: str | None = None,
    status: str | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
) -> list[Any]:
    """A filtered page of deviations in id order (cursor = the last id seen)."""
    c = _DEV.c
    query = select(_DEV).where(c.study_id == study_id)
    for column, value in (
        (c.subject_id, subject_id),
        (c.rule, rule),
        (c.severity, severity),
        (c.status, status),
    ):
        if value is not None:
            query = query.where(column == value)
    if date_from is not None:
        query = query.where(c.occurred_on >= date_from)
    if date_to is not None:
        query = query.where(c.occurred_on <= date_to)
    if after is not None:
        query = query.where(c.id > after)
    return list(session.execute(query.order_by(c.id).limit(limit)))


def deviation_json(row: Any) -> dict[str, Any]:
    """The wire shape of one deviation."""

    def instant(value: dt.datetime | None) -> str | None:
        return iso_utc(value) if value else None

    return {
        "id": row.id,
        "study_id": row.study_id,
        "subject_id": row.subject_id,
        "rule": row.rule,
        "severity": row.severity,
        "status": row.status,
        "study_day": row.study_day,
        "date": row.occurred_on.isoformat() if row.occurred_on else None,
        "message": row.message,
        "evidence": json.loads(row.evidence),
        "detected_at": instant(row.detected_at),
        "updated_at": instant(row.updated_at),
        "acknowledged_by": row.acknowledged_by,
        "acknowledged_at": instant(row.acknowledged_at),
        "resolved_at": instant(row.resolved_at),
        "resolution": row.resolution,
        "version": row.version,
    }
