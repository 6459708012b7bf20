"""The write path's hot statements straight on the driver's cursor, inside SQLAlchemy's transaction.

SQLAlchemy's own work for one statement (execution context, events, result metadata) is ~20 µs,
about as much as SQLite needs to run a small one, and a one-patient write runs a dozen or more.
The statements here skip it and keep what matters of it: they run on the connection and in the
transaction the session began; a failure goes through SQLAlchemy's own error handling (`raised`),
so a driver error is its exception type (the retry, 409 and 503 logic holds) without the
parameters (they may be patient data), and a lost connection is invalidated with the pool's older
ones; and whenever anything listens to statement events (`before_cursor_execute`: tests that
EXPLAIN every statement or cut a connection mid-write, instrumentation) they go through SQLAlchemy
after all, which tells the listener. SQLAlchemy's statement echo (`echo=True`, its engine logger at
INFO) does not show them; the service never turns it on (statements may quote patient data).

Parameters are positional: `mark(conn)` is the driver's placeholder. `fetch_all`, `execute` and
`execute_many` take and give values as the driver has them, so a caller converts what SQLAlchemy's
column types would (see `fhir_versions.instant_reader`); `table_rows`, `insert_row` and
`update_rows` do it by the table's column types.
"""

from __future__ import annotations

import functools
import json
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from sqlalchemy import Connection, Dialect, Table

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
    rows: list[Row] = _run(conn, sql, params, _ROWS)
    return rows


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


def insert_row(conn: Connection, table: Table, values: dict[str, Any]) -> None:
    """One row into `table`, each value bound as its column type binds it (SQLite's text forms of
    dates and times, UTC for aware datetimes), as a Core INSERT would."""
    names = tuple(values)
    marks = ", ".join([mark(conn)] * len(names))
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({marks})"
    execute(conn, sql, _binding(conn, sql, table, values))


def update_rows(
    conn: Connection, table: Table, values: dict[str, Any], where: dict[str, Any]
) -> int:
    """Set `values` on the rows whose `where` columns equal the given (non-null) values, bound as
    the column types bind them; how many rows."""
    if not values or not where or any(v is None for v in where.values()):
        raise ValueError("update_rows needs values to set and non-null values to match")
    p = mark(conn)
    sql = (
        f"UPDATE {table.name} SET {', '.join(f'{n} = {p}' for n in values)} "
        f"WHERE {' AND '.join(f'{n} = {p}' for n in where)}"
    )
    bound = [*_binding(conn, sql, table, values), *_binding(conn, sql, table, where)]
    return execute(conn, sql, bound)


def _binding(conn: Connection, sql: str, table: Table, values: dict[str, Any]) -> list[Any]:
    """The driver's parameters of these values; a value its column type refuses (a naive
    datetime, a date that is not one) fails as SQLAlchemy's StatementError, as in Core."""
    try:
        return _bound(conn.dialect, table, tuple(values))(values)
    except Exception as exc:
        raised(conn, sql, exc)


@functools.lru_cache(maxsize=128)
def _bound(
    dialect: Dialect, table: Table, names: tuple[str, ...]
) -> Callable[[dict[str, Any]], list[Any]]:
    """What makes the driver's parameters of these columns from Python values."""
    processors = [table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names]
    steps = [(n, p or _same) for n, p in zip(names, processors, strict=True)]
    return lambda values: [step(values[n]) for n, step in steps]


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
    return int(_run(conn, sql, params, _COUNT))


def execute_many(conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """One statement once per row (psycopg pipelines them)."""
    if not rows:
        return
    if observed(conn):
        conn.exec_driver_sql(sql, list(rows))
        return
    _run(conn, sql, rows, _MANY)


_ROWS, _COUNT, _MANY = range(3)


def _run(conn: Connection, sql: str, params: Any, what: int) -> Any:
    """One statement on a cursor of its own: its rows, its row count, or (executemany) nothing;
    a failure as SQLAlchemy handles it (`raised`). Inline rather than `cursor`: a context manager
    per statement cost more than the rest of this path."""
    dbapi_conn: Any = conn.connection.dbapi_connection
    found: Any = None
    try:
        found = dbapi_conn.cursor()
        if what == _MANY:
            found.executemany(sql, params)
            out = None
        else:
            found.execute(sql, params)
            out = found.fetchall() if what == _ROWS else found.rowcount
    except BaseException as exc:
        raised(conn, sql, exc, found)  # closes the cursor, or invalidates the whole connection
    found.close()
    return out


@contextmanager
def cursor(conn: Connection, sql: str) -> Iterator[Any]:
    """A cursor of the connection's driver connection, for `sql`; whatever goes wrong in the block
    is handled as SQLAlchemy handles a failed statement (see `raised`)."""
    dbapi_conn: Any = conn.connection.dbapi_connection
    found: Any = None
    try:
        found = dbapi_conn.cursor()
        yield found
    except GeneratorExit:  # the block never finished (the generator was dropped)
        if found is not None:
            found.close()
        raise
    except BaseException as exc:
        raised(conn, sql, exc, found)  # closes the cursor, or invalidates the whole connection
    found.close()


def raised(conn: Connection, sql: str, exc: BaseException, found: Any = None) -> NoReturn:
    """Raise `exc` as SQLAlchemy would have for this statement, by SQLAlchemy's own handler: a
    driver error as its exception type (IntegrityError, OperationalError, …) with the parameters
    left out, the `handle_error` events, and on a lost connection (or an interrupt mid-statement)
    this connection invalidated and every other the pool opened before it replaced.

    The handler is a private method of SQLAlchemy's `Connection` (stable through 2.0 and 2.1);
    `tests/test_driver.py` holds what it does here, so an upgrade that changes it fails there.
    """
    conn._handle_dbapi_exception(exc, sql, None, found, None)
