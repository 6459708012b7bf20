"""Helpers the repositories share: bounded IN-lists, compact JSON columns, per-patient rows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from service.infra import driver

# Bound parameters per IN-list: under SQLite's limit, and plans stay cheap on PostgreSQL.
CHUNK = 400


def chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    """`items` in slices of at most CHUNK, so no statement carries an unbounded parameter list."""
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def compact_json(value: Any) -> str:
    """Stable, compact JSON for text columns (sorted keys; dates as their ISO text)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def insert_on_conflict(session: Session, table: Table) -> Any:
    """An INSERT of this session's dialect, which takes `on_conflict_do_nothing` (both backends)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def save_per_patient(session: Session, table: Table, values: dict[str, Any], exists: bool) -> None:
    """Insert or update one row of a (study_id, patient_id)-keyed table (straight to the driver:
    every write that re-screens a candidate or moves a subject runs this)."""
    conn = session.connection()
    if exists:
        key = {"study_id": values["study_id"], "patient_id": values["patient_id"]}
        driver.update_rows(conn, table, values, key)
    else:
        driver.insert_row(conn, table, values)


def delete_per_patient(session: Session, table: Table, study_id: str, patient_id: str) -> None:
    """Delete one row of a (study_id, patient_id)-keyed table."""
    c = table.c
    session.execute(delete(table).where(c.study_id == study_id, c.patient_id == patient_id))
