"""Derivation locks: two writers whose derivations depend on each other derive one after the other.

PostgreSQL runs writers under READ COMMITTED, so derivation reads what other transactions have
committed, never what they are writing. Two kinds of write skew follow, and a lock kind for each:

- patients: two transactions writing resources of one patient each derive the patient's subject,
  screening and deviation rows from events lacking the other's (and may read the events before,
  and the subject rows after, the other's commit); the later commit keeps an incomplete result.
  Both take the patient's lock before reading; the second reads after the first commits.
- targets: a resource whose events read another resource (a ResearchSubject its ResearchStudy, a
  MedicationRequest its Medication) is mapped while that other resource is being written: the
  mapping misses the new content, and the other writer misses the dependency row to remap it by.
  A writer locks what it wrote (exclusive) before looking for dependents; a mapping locks what
  it reads from the store (shared) before reading it. Whoever comes second sees the first's
  commit: the mapping reads the new content, or the writer finds the dependency and remaps.

Locks last until the transaction ends. SQLite needs none: its writers are serialised (BEGIN
IMMEDIATE). Each call is one statement; deadlocks between writers are retried by the write path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import text
from sqlmodel import Session

# The two-int advisory key space, which never meets the one-bigint keys used elsewhere
# (migrations, the job schema, conditional creates, the first signing key): (namespace, key).
_PATIENT = 0x7472_7074  # "trpt": one patient's derivation, keyed by a hash of its id
_PATIENTS = 0x7472_7061  # "trpa": every patient; shared by the few, exclusive for the many
_TARGET = 0x7472_7474  # "trtt": one resource or identifier that mappings read
_TARGETS = 0x7472_7461  # "trta": every target; shared by the few, exclusive for the many
# Above this many keys a transaction locks the whole kind at once instead of each key:
# PostgreSQL's lock table is shared and bounded (max_locks_per_transaction x connections).
MANY = 256

# One statement, locks taken in array order (a function scan, no sort): the lock on the whole
# kind first, then the keys ascending, so waits between writers never form a cycle.
_LOCK = text(
    "SELECT count(CASE WHEN x THEN pg_advisory_xact_lock(s, k) "
    "ELSE pg_advisory_xact_lock_shared(s, k) END) "
    "FROM unnest(CAST(:spaces AS integer[]), CAST(:keys AS integer[]), "
    "CAST(:exclusive AS boolean[])) AS t(s, k, x)"
)


def key_of(name: str) -> int:
    """A signed 32-bit key for a name (a collision only makes two names wait together)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)


def _lock(session: Session, every: int, one: int, names: Iterable[str], exclusive: bool) -> None:
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted({key_of(n) for n in names})
    if not keys:
        return
    if len(keys) > MANY:
        spaces, ints, modes = [every], [0], [True]
    else:
        spaces = [every] + [one] * len(keys)
        ints = [0, *keys]
        modes = [False] + [exclusive] * len(keys)
    session.execute(_LOCK, {"spaces": spaces, "keys": ints, "exclusive": modes})


def lock_patients(session: Session, patient_ids: Iterable[str]) -> None:
    """Hold these patients' derivation locks until the transaction ends (PostgreSQL only)."""
    _lock(session, _PATIENTS, _PATIENT, patient_ids, exclusive=True)


def lock_written(session: Session, targets: Iterable[str]) -> None:
    """A writer's exclusive hold on what it wrote, before it looks for the mappings that read it."""
    _lock(session, _TARGETS, _TARGET, targets, exclusive=True)


def lock_read(session: Session, targets: Iterable[str]) -> None:
    """A mapping's shared hold on what it is about to read from the store."""
    _lock(session, _TARGETS, _TARGET, targets, exclusive=False)
