"""Planner statistics of the tables a bulk load grows, refreshed while it grows them (PostgreSQL).

PostgreSQL plans a look-up such as `trial_event WHERE patient_id = ANY($1)` from the table's
statistics. A table that has never been analysed, or was analysed when it held a fraction of its
rows, has none that fit: the planner's default estimates then favour a sequential scan, so every
chunk of a bulk load scans the whole table and the load slows as the table grows (seen on a 10^5
load: a 0.2–0.5 s parallel scan of 1.5 M events per chunk, where the index finds them in a
millisecond). Autovacuum analyses tables when it runs, but a bulk load can grow a table a
hundredfold between two of its rounds, and it may be off. SQLite's planner uses its indexes
without statistics, so it is left alone.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from service.errors import DatabaseUnavailableError
from service.infra.db import reading, writing

log = logging.getLogger(__name__)

# What the write path and derivation look rows up in by a selective key (patient, resource,
# reference target, identifier, dependency target, subject).
GROWN_TABLES = (
    "fhir_resource",
    "fhir_resource_version",
    "fhir_reference",
    "fhir_identifier",
    "trial_event",
    "trial_event_dependency",
    "study_subject",
    "eligibility_result",
    "deviation",
)
# Statistics are refreshed once this many resources were written since the last refresh, or as
# many as the statistics describe if that is more: at most ~log2 of the store's growth times.
# (Updates count as growth too: an over-estimate that costs an early refresh at worst.) ANALYZE
# needs the tables' owner (or, from PostgreSQL 17, the MAINTAIN privilege); another role gets a
# warning from the server and the statistics stay as they were.
ANALYZE_EVERY = 10_000


def refresh(session: Session) -> None:
    """ANALYZE the grown tables (a sample of each, not a scan; PostgreSQL)."""
    session.execute(text(f"ANALYZE {', '.join(GROWN_TABLES)}"))


def stored_resources(session: Session) -> int:
    """The stored resources the statistics describe (0 before the first analysis; PostgreSQL):
    cheap to ask."""
    found = session.execute(
        text("SELECT reltuples FROM pg_class WHERE oid = CAST('fhir_resource' AS regclass)")
    ).scalar_one()
    return max(int(found), 0)  # -1: never analysed


@dataclass
class _Growth:
    """What one process has written into one database since its statistics were refreshed."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    described: int | None = None  # resources the statistics describe; None: not read yet
    since: int = 0


_GROWTH: weakref.WeakKeyDictionary[Engine, _Growth] = weakref.WeakKeyDictionary()
_GROWTH_LOCK = threading.Lock()


def note_written(engine: Engine, resources: int) -> bool:
    """Count committed resources; refresh the statistics once the store has outgrown them.

    Counted per process and database, across jobs (`trialbridge load` runs one job per file), so
    that a load of many small files is covered as well as one large one. True: refreshed now.
    """
    if engine.dialect.name != "postgresql" or resources <= 0:
        return False
    with _GROWTH_LOCK:
        growth = _GROWTH.setdefault(engine, _Growth())
    with growth.lock:
        growth.since += resources
        try:
            if growth.described is None:
                with reading(engine) as session:
                    growth.described = stored_resources(session)
            if growth.since < max(ANALYZE_EVERY, growth.described):
                return False
            growth.since = 0  # refreshed or not, the next try waits for as much growth again
            with writing(engine) as session:
                refresh(session)
                growth.described = stored_resources(session)
        except (DBAPIError, DatabaseUnavailableError) as exc:
            # statistics are an optimisation: never the failure of a load whose chunk committed
            cause = exc.__cause__ if isinstance(exc, DatabaseUnavailableError) else exc
            log.warning(
                "planner statistics not refreshed: %s",
                type(getattr(cause, "orig", cause)).__name__,
            )
            return False
    return True
