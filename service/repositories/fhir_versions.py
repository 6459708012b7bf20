"""All SQL for the FHIR store. Services call these; nothing here commits."""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, func, select
from sqlmodel import Session, SQLModel

from service.infra import driver
from service.infra.tables import (
    ResourceHead,
    ResourceIdentifier,
    ResourceReference,
    ResourceVersion,
)
from service.repositories.sql import CHUNK

Key = tuple[str, str]


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
    rid: int  # its row id: how its identifier and reference rows name it


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
    resource: dict[str, Any] | None = None  # the parsed content, handed on to event derivation

    @property
    def deleted(self) -> bool:
        """A version without content is a deletion."""
        return self.content is None

    @property
    def key(self) -> Key:
        """(type, id): the resource this is a version of."""
        return (self.resource_type, self.resource_id)


@dataclass(frozen=True, slots=True)
class WrittenVersion:
    """A version this unit of work stored: its number, content (None: deleted) and identifiers."""

    version_id: int
    resource: dict[str, Any] | None
    identifiers: list[tuple[str | None, str]]

    @property
    def created(self) -> bool:
        """The first version ever: nothing was derived from this resource before."""
        return self.version_id == 1


Written = dict[Key, WrittenVersion]


def by_type(keys: Iterable[Key]) -> Iterator[tuple[str, list[str]]]:
    """(type, up to CHUNK ids) groups of distinct keys.

    One type per query keeps `resource_id IN (...)` on the primary key: PostgreSQL plans a
    row-value `(type, id) IN (...)` list as a filter over every row of the type, so such a lookup
    grows with the table instead of with the request.
    """
    ids: dict[str, set[str]] = {}
    for rtype, rid in keys:
        ids.setdefault(rtype, set()).add(rid)
    for rtype in sorted(ids):
        wanted = sorted(ids[rtype])
        for i in range(0, len(wanted), CHUNK):
            yield rtype, wanted[i : i + CHUNK]


def load_heads(session: Session, keys: Iterable[Key]) -> dict[Key, Head]:
    """Current heads of the given resources, in as few queries as possible."""
    conn = session.connection()
    out: dict[Key, Head] = {}
    if conn.dialect.name == "postgresql":
        groups: Iterable[Iterable[Any]] = (_pg_heads(conn, t, ids) for t, ids in by_type(keys))
    else:
        groups = _sqlite_heads(conn, sorted(set(keys)))
    instant = instant_reader(conn)  # both backends' rows are the driver's
    for rows in groups:
        for rtype, rid, vid, last_updated, digest, deleted, row_id in rows:
            out[(rtype, rid)] = Head(vid, instant(last_updated), digest, bool(deleted), row_id)
    return out


def _sqlite_heads(conn: Connection, keys: list[Key]) -> Iterator[Iterable[Any]]:
    """Every type in one statement of one parameter (a JSON list of keys), CHUNK keys at a time:
    a small write's two or three look-ups were each a statement built with an IN list per call.
    SQLite searches the primary key once per key (`tests/test_write_plans.py`)."""
    for i in range(0, len(keys), CHUNK):
        yield driver.fetch_all(conn, _SQLITE_HEADS_OF, (json.dumps(keys[i : i + CHUNK]),))


def _pg_heads(conn: Connection, rtype: str, ids: list[str]) -> list[tuple[Any, ...]]:
    """One array parameter instead of an IN list: a single statement text, prepared once."""
    return driver.fetch_all(
        conn,
        f"SELECT {', '.join(_HEAD_STORED)} FROM fhir_resource "
        "WHERE resource_type = %s AND resource_id = ANY(%s)",
        (rtype, ids),
    )


def _stored_versions() -> Any:
    v = _VERSION.c
    return select(
        v.resource_type, v.resource_id, v.version_id, v.last_updated, v.deleted, v.content
    )


def _through_heads(current: bool) -> Any:
    """Versions joined to their head, found by type and id on the head (versions are keyed by its
    row id, 0021); `current`: only the head's own version."""
    v = _VERSION.c
    on = _HEAD.c.rid == v.rid
    if current:
        on = on & (_HEAD.c.version_id == v.version_id)
    return _stored_versions().select_from(_HEAD).join(_VERSION, on)


# The largest version_id the column holds (INTEGER: 32 bits on PostgreSQL).
MAX_VERSION_ID = 2**31 - 1


def read_version(
    session: Session, resource_type: str, resource_id: str, version_id: int | None = None
) -> StoredVersion | None:
    """A given version, or the current one when version_id is None.

    A version_id the column cannot hold is no stored version: None, without asking the database
    (which would refuse the parameter: out of range on PostgreSQL, too large for SQLite).
    """
    if version_id is not None and not 0 < version_id <= MAX_VERSION_ID:
        return None
    query = _through_heads(current=version_id is None)
    if version_id is not None:
        query = query.where(_VERSION.c.version_id == version_id)
    h = _HEAD.c
    row = session.execute(
        query.where(h.resource_type == resource_type, h.resource_id == resource_id)
    ).first()
    return None if row is None else StoredVersion(*row)


def read_current_many(session: Session, keys: Sequence[Key]) -> list[StoredVersion]:
    """Current, non-deleted versions for keys, in the order given (straight to the driver: a
    write that re-derives a resource's dependents runs this, and so does every search page)."""
    if not keys:
        return []
    conn = session.connection()
    instant = instant_reader(conn)
    sql = _CURRENT_OF.format(p=driver.mark(conn), ids=driver.one_of(conn, "h.resource_id"))
    found: dict[Key, StoredVersion] = {}
    for rtype, ids in by_type(keys):
        for t, i, vid, last_updated, deleted, content in driver.fetch_all(
            conn, sql, (rtype, driver.list_param(conn, ids), False)
        ):
            found[(t, i)] = StoredVersion(t, i, vid, instant(last_updated), bool(deleted), content)
    return [found[k] for k in keys if k in found]


# the head's own version of heads of one type (`_through_heads(current=True)` as driver SQL)
_CURRENT_OF = (
    "SELECT v.resource_type, v.resource_id, v.version_id, v.last_updated, v.deleted, v.content "
    "FROM fhir_resource h JOIN fhir_resource_version v "
    "ON v.rid = h.rid AND v.version_id = h.version_id "
    "WHERE h.resource_type = {p} AND {ids} AND h.deleted = {p}"
)


def write_versions(
    session: Session,
    rows: Sequence[VersionRow],
    heads: dict[Key, Head],
    *,
    source: str,
    request_id: str,
    provenance_id: str,
) -> None:
    """Insert versions, move heads and replace index rows, in bulk; each version names the
    Provenance that will record it (`provenance_id`), which is how a search by target finds it.
    A new head gets the next row ids (`_next_row_ids`), and its index rows name it by that.

    The primary keys are what make concurrent writers safe, never check-then-insert: the second
    writer of version n+1 of a resource fails on the version's (rid, version), the second creator
    of a resource on the head's (type, id); either fails with an integrity error and its unit of
    work is retried. Rows go straight to the driver (executemany, or COPY on
    PostgreSQL, where a duplicate key fails the COPY just the same): at thousands of rows per
    request the Core compiler would cost more than the SQL.
    """
    if not rows:
        return
    conn = session.connection()
    instant = _instant_binder(conn)
    source = source[:200]
    moved = [r for r in rows if r.key in heads]
    created = [r for r in rows if r.key not in heads]
    row_ids = {r.key: heads[r.key].rid for r in moved}
    row_ids.update(zip((r.key for r in created), _next_row_ids(conn, len(created)), strict=True))
    _bulk_insert(
        conn,
        _VERSION,
        _VERSION_COLUMNS,
        [
            (
                *_head_tuple(r, instant),
                r.content,
                source,
                request_id,
                provenance_id,
                row_ids[r.key],
            )
            for r in rows
        ],
    )
    _bulk_insert(
        conn,
        _HEAD,
        _HEAD_STORED,
        [(*_head_tuple(r, instant), row_ids[r.key]) for r in created],
    )
    if moved:
        driver.execute_many(
            conn,
            _MOVE_HEAD.format(p=driver.mark(conn)),
            [
                (
                    r.version_id,
                    instant(r.last_updated),
                    r.content_hash,
                    r.deleted,
                    r.resource_type,
                    r.resource_id,
                )
                for r in moved
            ],
        )
    _replace_indexes(conn, [row_ids[r.key] for r in moved], rows, row_ids)


_HEAD_COLUMNS = (
    "resource_type",
    "resource_id",
    "version_id",
    "last_updated",
    "content_hash",
    "deleted",
)
_HEAD_STORED = (*_HEAD_COLUMNS, "rid")
_VERSION_COLUMNS = (*_HEAD_COLUMNS, "content", "source", "request_id", "provenance_id", "rid")
_SQLITE_HEADS_OF = (
    f"SELECT {', '.join(_HEAD_STORED)} FROM fhir_resource WHERE (resource_type, resource_id) IN "
    "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))"
)
# PostgreSQL hands out row ids from this sequence (migration 0020)
ROW_ID_SEQUENCE = "fhir_resource_rid_seq"
_VALUESET_GENERATION = (
    "SELECT count(*), max(last_updated) FROM fhir_resource WHERE resource_type = 'ValueSet'"
)
_IDENT_COLUMNS = ("resource_type", "resource_id", "owner_rid", "system", "value")
_REF_COLUMNS = ("resource_type", "resource_id", "owner_rid", "param", "target_type", "target_id")
_MOVE_HEAD = (
    "UPDATE fhir_resource SET version_id = {p}, last_updated = {p}, content_hash = {p}, "
    "deleted = {p} WHERE resource_type = {p} AND resource_id = {p}"
)


def instant_binder(session: Session) -> Callable[[dt.datetime], Any]:
    """What `bulk_insert` is given for a timestamp column on this session's database."""
    return _instant_binder(session.connection())


def _instant_binder(conn: Connection) -> Callable[[dt.datetime], Any]:
    """What the driver is given for a timestamp (SQLite stores text in SQLAlchemy's format)."""
    column_type = _HEAD.c.last_updated.type
    process = column_type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    if process is None:
        return lambda value: value
    cache: dict[dt.datetime, Any] = {}

    def bind(value: dt.datetime) -> Any:
        if value not in cache:
            cache[value] = process(value)
        return cache[value]

    return bind


def instant_reader(conn: Connection) -> Callable[[Any], dt.datetime]:
    """A timestamp as the driver returns it (SQLite: SQLAlchemy's text) made what the column
    type makes it: an aware datetime in UTC."""
    return _instant_reader(conn.dialect)


@functools.lru_cache(maxsize=8)
def _instant_reader(dialect: Dialect) -> Callable[[Any], dt.datetime]:
    """`instant_reader` for one dialect, made once (each write reads instants several times)."""
    column_type = _HEAD.c.last_updated.type
    process: Callable[[Any], dt.datetime] | None = column_type.dialect_impl(
        dialect
    ).result_processor(dialect, None)
    if process is None:
        return lambda value: value
    return process


def _head_tuple(r: VersionRow, instant: Callable[[dt.datetime], Any]) -> tuple[Any, ...]:
    """The columns a version shares with its head, in _HEAD_COLUMNS order."""
    return (
        r.resource_type,
        r.resource_id,
        r.version_id,
        instant(r.last_updated),
        r.content_hash,
        r.deleted,
    )


def _execute_many(
    conn: Connection, table: Any, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """A plain multi-row INSERT through the driver's executemany (psycopg pipelines it)."""
    marks = ", ".join([driver.mark(conn)] * len(columns))
    driver.execute_many(
        conn, f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})", rows
    )


def bulk_insert(
    session: Session, table: Any, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Many rows into one table, straight to the driver (COPY on PostgreSQL)."""
    _bulk_insert(session.connection(), table, columns, rows)


def _bulk_insert(
    conn: Connection, table: Any, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Many rows into one table: COPY on PostgreSQL (one stream), executemany elsewhere."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        _execute_many(conn, table, columns, rows)
        return
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    # failures as every other statement's, so the retry and 503 logic hold (`driver.raised`)
    with driver.cursor(conn, statement) as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _next_row_ids(conn: Connection, count: int) -> list[int]:
    """`count` row ids no head has: from the sequence on PostgreSQL; on SQLite the largest plus
    one onwards, which no other writer can take meanwhile (writers hold the database's lock from
    BEGIN IMMEDIATE, see `service.infra.db`)."""
    if not count:
        return []
    if conn.dialect.name == "postgresql":
        found = driver.fetch_all(
            conn, f"SELECT nextval('{ROW_ID_SEQUENCE}') FROM generate_series(1, %s)", (count,)
        )
        return [int(r[0]) for r in found]
    first = int(driver.fetch_all(conn, "SELECT max(rid) FROM fhir_resource")[0][0] or 0) + 1
    return list(range(first, first + count))


def _replace_indexes(
    conn: Connection,
    moved: Sequence[int],
    rows: Sequence[VersionRow],
    row_ids: dict[Key, int],
) -> None:
    """Drop the identifier and reference rows of the heads that moved (by their row ids), then
    add those of every live version written."""
    for table in (_IDENT, _REF):
        for i in range(0, len(moved), CHUNK):
            driver.execute(
                conn,
                f"DELETE FROM {table.name} WHERE {driver.one_of(conn, 'owner_rid')}",
                (driver.list_param(conn, moved[i : i + CHUNK]),),
            )
    live = [(r, row_ids[r.key]) for r in rows if not r.deleted]
    _bulk_insert(
        conn,
        _IDENT,
        _IDENT_COLUMNS,
        [(r.resource_type, r.resource_id, rid, s, v) for r, rid in live for s, v in r.identifiers],
    )
    _bulk_insert(
        conn,
        _REF,
        _REF_COLUMNS,
        [(r.resource_type, r.resource_id, rid, *ref) for r, rid in live for ref in r.references],
    )


def table_counts(session: Session) -> dict[str, int]:
    """Row count of every table the service writes (used by tests and operators)."""
    return {
        t.name: int(session.execute(select(func.count()).select_from(t)).scalar_one())
        for t in SQLModel.metadata.sorted_tables
        if t.name != "service_secret"  # created once, on first use, by design
    }


def valueset_generation(session: Session) -> tuple[int, dt.datetime | None]:
    """(count, newest lastUpdated) of ValueSet heads: changes whenever a ValueSet is written."""
    conn = session.connection()
    count, newest = driver.fetch_all(conn, _VALUESET_GENERATION)[0]
    return int(count), instant_reader(conn)(newest)


def all_keys(session: Session, resource_types: Sequence[str]) -> list[Key]:
    """Every current, non-deleted resource of these types (a full remap)."""
    c = _HEAD.c
    rows = session.execute(
        select(c.resource_type, c.resource_id).where(
            c.resource_type.in_(list(resource_types)), c.deleted.is_(False)
        )
    )
    return [(r.resource_type, r.resource_id) for r in rows]
