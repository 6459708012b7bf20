"""All SQL for the FHIR store. Services call these; nothing here commits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, tuple_, update
from sqlmodel import Session, SQLModel

from service.models import ResourceHead, ResourceIdentifier, ResourceReference, ResourceVersion

Key = tuple[str, str]
_CHUNK = 400
# session.info key: the (type, id) of every resource written in this unit of work.
WRITTEN_KEYS = "trialbridge_written_keys"

_HEAD = ResourceHead.__table__  # type: ignore[attr-defined]
_VERSION = ResourceVersion.__table__  # type: ignore[attr-defined]
_IDENT = ResourceIdentifier.__table__  # type: ignore[attr-defined]
_REF = ResourceReference.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Head:
    """The current state of one resource, as the write path needs it."""

    version_id: int
    last_updated: dt.datetime
    content_hash: str
    deleted: bool


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One stored version, content as text (None for a deletion)."""

    resource_type: str
    resource_id: str
    version_id: int
    last_updated: dt.datetime
    deleted: bool
    content: str | None


@dataclass(slots=True)
class VersionRow:
    """A version to insert, with the index rows of the new current state."""

    resource_type: str
    resource_id: str
    version_id: int
    last_updated: dt.datetime
    content_hash: str
    content: str | None
    identifiers: list[tuple[str | None, str]]
    references: list[tuple[str, str, str]]

    @property
    def deleted(self) -> bool:
        """A version without content is a deletion."""
        return self.content is None


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def load_heads(session: Session, keys: Iterable[Key]) -> dict[Key, Head]:
    """Current heads of the given resources, in as few queries as possible."""
    wanted = sorted(set(keys))
    out: dict[Key, Head] = {}
    cols = (_HEAD.c.resource_type, _HEAD.c.resource_id)
    for chunk in _chunks(wanted):
        rows = session.execute(
            select(
                _HEAD.c.resource_type,
                _HEAD.c.resource_id,
                _HEAD.c.version_id,
                _HEAD.c.last_updated,
                _HEAD.c.content_hash,
                _HEAD.c.deleted,
            ).where(tuple_(*cols).in_(list(chunk)))
        )
        for r in rows:
            out[(r.resource_type, r.resource_id)] = Head(
                r.version_id, r.last_updated, r.content_hash, r.deleted
            )
    return out


def _stored_versions() -> Any:
    v = _VERSION.c
    return select(
        v.resource_type, v.resource_id, v.version_id, v.last_updated, v.deleted, v.content
    )


def _current_versions() -> Any:
    """Versions joined to their head: only the current one of each resource."""
    v = _VERSION.c
    return _stored_versions().join(
        _HEAD,
        (_HEAD.c.resource_type == v.resource_type)
        & (_HEAD.c.resource_id == v.resource_id)
        & (_HEAD.c.version_id == v.version_id),
    )


def read_version(
    session: Session, resource_type: str, resource_id: str, version_id: int | None = None
) -> StoredVersion | None:
    """A given version, or the current one when version_id is None."""
    v = _VERSION.c
    if version_id is None:
        query = _current_versions()
    else:
        query = _stored_versions().where(v.version_id == version_id)
    row = session.execute(
        query.where(v.resource_type == resource_type, v.resource_id == resource_id)
    ).first()
    return None if row is None else StoredVersion(*row)


def read_current_many(session: Session, keys: Sequence[Key]) -> list[StoredVersion]:
    """Current, non-deleted versions for keys, in the order given."""
    v = _VERSION.c
    found: dict[Key, StoredVersion] = {}
    for chunk in _chunks(list(keys)):
        rows = session.execute(
            _current_versions().where(
                tuple_(v.resource_type, v.resource_id).in_(list(chunk)), v.deleted.is_(False)
            )
        )
        for r in rows:
            found[(r.resource_type, r.resource_id)] = StoredVersion(*r)
    return [found[k] for k in keys if k in found]


def write_versions(
    session: Session,
    rows: Sequence[VersionRow],
    heads: dict[Key, Head],
    *,
    source: str,
    request_id: str,
) -> None:
    """Insert versions, move heads and replace index rows, in bulk.

    The primary key of fhir_resource_version (type, id, version) is what makes concurrent writers
    safe: the second writer of version n+1 fails with an integrity error and its unit of work is
    retried, never check-then-insert.
    """
    if not rows:
        return
    session.info.setdefault(WRITTEN_KEYS, set()).update(
        (r.resource_type, r.resource_id) for r in rows
    )
    session.execute(
        insert(_VERSION),
        [
            {
                **_head_values(r),
                "content": r.content,
                "source": source[:200],
                "request_id": request_id,
            }
            for r in rows
        ],
    )
    new_heads = [r for r in rows if (r.resource_type, r.resource_id) not in heads]
    moved = [r for r in rows if (r.resource_type, r.resource_id) in heads]
    if new_heads:
        session.execute(insert(_HEAD), [_head_values(r) for r in new_heads])
    for r in moved:
        session.execute(
            update(_HEAD)
            .where(
                _HEAD.c.resource_type == r.resource_type,
                _HEAD.c.resource_id == r.resource_id,
            )
            .values(_head_values(r))
        )
    _replace_indexes(session, moved, rows)


def _head_values(r: VersionRow) -> dict[str, Any]:
    """The columns a version shares with its head."""
    return {
        "resource_type": r.resource_type,
        "resource_id": r.resource_id,
        "version_id": r.version_id,
        "last_updated": r.last_updated,
        "content_hash": r.content_hash,
        "deleted": r.deleted,
    }


def _replace_indexes(
    session: Session, moved: Sequence[VersionRow], rows: Sequence[VersionRow]
) -> None:
    moved_keys = [(r.resource_type, r.resource_id) for r in moved]
    for table in (_IDENT, _REF):
        for chunk in _chunks(moved_keys):
            session.execute(
                delete(table).where(
                    tuple_(table.c.resource_type, table.c.resource_id).in_(list(chunk))
                )
            )
    idents = [
        {"resource_type": r.resource_type, "resource_id": r.resource_id, "system": s, "value": v}
        for r in rows
        if not r.deleted
        for s, v in r.identifiers
    ]
    refs = [
        {
            "resource_type": r.resource_type,
            "resource_id": r.resource_id,
            "param": p,
            "target_type": tt,
            "target_id": ti,
        }
        for r in rows
        if not r.deleted
        for p, tt, ti in r.references
    ]
    if idents:
        session.execute(insert(_IDENT), idents)
    if refs:
        session.execute(insert(_REF), refs)


def table_counts(session: Session) -> dict[str, int]:
    """Row count of every table the service writes (used by tests and operators)."""
    return {
        t.name: int(session.execute(select(func.count()).select_from(t)).scalar_one())
        for t in SQLModel.metadata.sorted_tables
        if t.name != "service_secret"  # created once, on first use, by design
    }
