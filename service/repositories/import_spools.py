"""All SQL for `$import` bodies spooled in the database (`import_spool`): pieces appended as a
body arrives, read back one at a time by the job, deleted when it ends. Nothing here commits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import delete, func, insert, select
from sqlmodel import Session

from service.infra.tables import ImportSpoolChunk

_SPOOL = ImportSpoolChunk.__table__  # type: ignore[attr-defined]


def append(session: Session, spool_id: str, seq: int, data: bytes, now: dt.datetime) -> None:
    """Piece `seq` (0, 1, 2, …) of a body."""
    session.execute(
        insert(_SPOOL), [{"spool_id": spool_id, "seq": seq, "created_at": now, "data": data}]
    )


def piece(session: Session, spool_id: str, seq: int) -> bytes | None:
    """Piece `seq` of a body, or None past its last (or when the body is gone)."""
    c = _SPOOL.c
    found = session.execute(
        select(c.data).where(c.spool_id == spool_id, c.seq == seq)
    ).scalar_one_or_none()
    return None if found is None else bytes(found)


def drop(session: Session, spool_ids: Collection[str]) -> int:
    """Delete these bodies; how many pieces went."""
    if not spool_ids:
        return 0
    deleted = session.execute(delete(_SPOOL).where(_SPOOL.c.spool_id.in_(list(spool_ids))))
    return int(deleted.rowcount or 0)  # type: ignore[attr-defined]


def started_before(session: Session, before: dt.datetime) -> list[str]:
    """Bodies whose first piece was stored before `before` (candidates for the orphan sweep)."""
    c = _SPOOL.c
    rows = session.execute(
        select(c.spool_id).group_by(c.spool_id).having(func.min(c.created_at) < before)
    )
    return sorted(str(r[0]) for r in rows)
