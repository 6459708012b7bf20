"""The write path's hot statements straight on the driver's cursor, inside SQLAlchemy's transaction.

SQLAlchemy's own work for one statement (execution context, events, result metadata) is ~20 µs,
about as much as SQLite needs to run a small one, and a one-patient write runs a dozen or more.
The statements here skip it and keep what matters of it: they run on the connection and in the
transaction the session began, a driver error is raised as SQLAlchemy's own exception type (so the
retry, 409 and 503 logic holds) with its parameters hidden (they may be patient data), a lost
connection is invalidated, and whenever anything listens to statements (`before_cursor_execute`:
tests that EXPLAIN every statement or cut a connection mid-write, instrumentation) they go through
SQLAlchemy after all, which tells the listener.

Parameters are positional: `mark(conn)` is the driver's placeholder. Values go in and come out as
the driver has them, so a caller converts what SQLAlchemy's column types would have (see
`fhir_versions.instant_reader`).
"""

from __future__ import annotations

import functools
import json
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Dialect, Table
from sqlalchemy.exc import DBAPIError, StatementError

Row = tuple[Any, ...]


def mark(conn: Connection) -> str:
    """The driver's positional placeholder (sqlite3: ?, psycopg: %s)."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def one_of(conn: Connection, column: str) -> str:
    """`column` is one of a list passed as one parameter (`list_param`): one statement text,
    cached and prepared once, whatever the list's length."""
    if conn.dialect.name == "postgresql":
        return f"{column} = ANY(%s)"
    return f"{column} IN (SELECT value FROM json_each(?))"


def list_param(conn: Connection, values: Sequence[Any]) -> Any:
    """The parameter `one_of` takes: an array on PostgreSQL, a JSON list on SQLite."""
    return list(values) if conn.dialect.name == "postgresql" else json.dumps(list(values))


def observed(conn: Connection) -> bool:
    """Whether something listens to this connection's statements (then SQLAlchemy runs them)."""
    dispatch = conn.dispatch
    return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)


def fetch_all(conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[Row]:
    """Every row of one statement, as tuples."""
    if observed(conn):
        return [tuple(r) for r in conn.exec_driver_sql(sql, tuple(params))]
    with _cursor(conn, sql) as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def table_rows(conn: Connection, table: Table, where: str, params: Sequence[Any]) -> list[Any]:
    """Whole rows of `table` where `where` (driver SQL) holds, as named tuples of the values its
    column types give (dates, aware datetimes, booleans), as SQLAlchemy's rows would have them."""
    select_all, make = _shape(conn.dialect, table)
    return [make(row) for row in fetch_all(conn, f"{select_all} WHERE {where}", params)]


@functools.lru_cache(maxsize=32)
def _shape(dialect: Dialect, table: Table) -> tuple[str, Callable[[Row], Any]]:
    """(SELECT every column FROM the table, what makes a named row of a driver row)."""
    columns = list(table.columns)
    named = namedtuple(f"{table.name}_row", [c.name for c in columns])  # type: ignore[misc]
    processors = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
    if not any(processors):
        return _select_all(table), lambda row: named(*row)
    steps = [p or _same for p in processors]

    def make(row: Row) -> Any:
        return named(*[step(value) for step, value in zip(steps, row, strict=True)])

    return _select_all(table), make


def _select_all(table: Table) -> str:
    """Every column named, in the table's order (the named row's fields)."""
    return f"SELECT {', '.join(c.name for c in table.columns)} FROM {table.name}"


def _same(value: Any) -> Any:
    """A column the driver already returns as its Python value."""
    return value


def execute(conn: Connection, sql: str, params: Sequence[Any] = ()) -> int:
    """One statement that returns no rows; its row count."""
    if observed(conn):
        return int(conn.exec_driver_sql(sql, tuple(params)).rowcount)
    with _cursor(conn, sql) as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def execute_many(conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """One statement once per row (psycopg pipelines them)."""
    if not rows:
        return
    if observed(conn):
        conn.exec_driver_sql(sql, list(rows))
        return
    with _cursor(conn, sql) as cursor:
        cursor.executemany(sql, rows)


@contextmanager
def _cursor(conn: Connection, sql: str) -> Iterator[Any]:
    """A cursor of the connection's driver connection; its errors as SQLAlchemy's."""
    dbapi_conn: Any = conn.connection.dbapi_connection
    try:
        cursor = dbapi_conn.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
    except conn.dialect.loaded_dbapi.Error as exc:
        raise translated(conn, sql, exc) from exc


def translated(conn: Connection, sql: str, exc: Any) -> StatementError:
    """A driver error as SQLAlchemy raises it (IntegrityError, OperationalError, …), parameters
    hidden; a lost connection is invalidated, as SQLAlchemy does, so the pool replaces it."""
    dbapi_conn = conn.connection.dbapi_connection
    lost = conn.dialect.is_disconnect(exc, dbapi_conn, None)
    if lost:
        conn.invalidate(exc)
    error: StatementError = DBAPIError.instance(
        sql,
        None,
        exc,
        conn.dialect.loaded_dbapi.Error,
        hide_parameters=True,
        connection_invalidated=lost,
    )
    return error
