"""The write path's unit of work: one transaction, what it wrote, and what waits for its commit.

Use cases create it and pass it down to ingest and derivation (cosmicpython, chapter 6), instead
of hiding state in `session.info`: what a write stored is read from here by derivation, events
stored are not decoded again when read back in the same transaction, and caches that must never
learn of a rolled-back write register with `after_commit`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlmodel import Session

from fhir_mapping.events.model import TrialEvent
from service.infra.db import session_scope
from service.repositories.fhir_versions import VersionRow, Written, WrittenVersion


@dataclass(eq=False)
class UnitOfWork:
    """One write transaction over `session`; `commit`/`rollback` end it, or `unit_of_work` does."""

    session: Session
    # what this unit of work has written, {(type, id): version}: derivation maps it directly
    written: Written = field(default_factory=dict)
    # every version written, (type, id, version, deleted), kept for the Provenance at the end
    versions: list[tuple[str, str, int, bool]] = field(default_factory=list)
    # the id of that Provenance, chosen before the first version is written: each version row
    # names it (see `fhir_versions.write_versions`)
    provenance_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # {payload digest: event} of the events stored here: reading them back needs no decoding
    stored_events: dict[bytes, TrialEvent] = field(default_factory=dict)
    # the pseudonym key, once read or generated in this transaction
    pseudonym_key: bytes | None = None
    # studies whose cohort inputs this transaction changed (one change row each, see derivation)
    changed_studies: set[str] = field(default_factory=set)
    _after_commit: list[Callable[[], None]] = field(default_factory=list)

    def record(self, rows: Sequence[VersionRow]) -> None:
        """Remember the versions just written (their content is current by construction)."""
        self.written.update(
            (r.key, WrittenVersion(r.version_id, r.resource, r.identifiers)) for r in rows
        )
        self.versions.extend(
            (r.resource_type, r.resource_id, r.version_id, r.deleted) for r in rows
        )

    def take_written(self) -> Written:
        """What was written since the last call (derivation consumes it once per write)."""
        taken, self.written = self.written, {}
        return taken

    def after_commit(self, then: Callable[[], None]) -> None:
        """Run `then` once this transaction has committed; never if it rolls back."""
        self._after_commit.append(then)

    def commit(self) -> None:
        """Commit, then run what waited for the commit."""
        self.session.commit()
        self.committed()

    def rollback(self) -> None:
        """Roll back and forget everything this transaction held: its writes, events and waiters."""
        self.session.rollback()
        self.written, self.stored_events, self.pseudonym_key = {}, {}, None
        self.changed_studies = set()
        self.versions = []
        self._after_commit.clear()

    def committed(self) -> None:
        """The transaction has committed: run (and drop) what waited for it, in order."""
        waiting, self._after_commit = self._after_commit, []
        for then in waiting:
            then()


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[UnitOfWork]:
    """A unit of work that commits on success and rolls back on any error."""
    with session_scope(engine) as session:
        uow = UnitOfWork(session)
        yield uow
    uow.committed()
