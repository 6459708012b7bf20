"""What other PostgreSQL sessions are doing, for tests that hold one transaction open."""

from __future__ import annotations

from sqlalchemy import Engine, text

_WAITING = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock'"
)


def waiting_on_a_lock(engine: Engine) -> bool:
    """Whether a session of the engine's database waits for a lock another one holds."""
    with engine.connect() as conn:
        return bool(conn.execute(_WAITING).scalar_one())
