"""Conditional-create locks: two writers creating on the same criteria create one after the other.

A conditional create searches, then creates when nothing matches; two transactions doing that at
once on PostgreSQL (READ COMMITTED) would both find nothing and both create. Each takes a
transaction-scoped advisory lock on its criteria's hash first; the second searches again after the
first commits and finds what it created. SQLite writers are serialised already (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import text
from sqlmodel import Session

# One statement, locks taken in array order (a function scan, no sort): ascending keys, so waits
# between writers never form a cycle. One-bigint keys: the two-int space of derivation_locks
# never meets them.
_LOCK = text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) AS t(k)")


def key_of(criteria: str) -> int:
    """A signed 64-bit key for a criteria text (the key every release has used for it)."""
    return int.from_bytes(hashlib.sha256(criteria.encode()).digest()[:8], "big", signed=True)


def lock_criteria(session: Session, criteria: Iterable[str]) -> None:
    """Hold these criteria's locks until the transaction ends (PostgreSQL only)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted({key_of(c) for c in criteria})
    if keys:
        session.execute(_LOCK, {"keys": keys})
