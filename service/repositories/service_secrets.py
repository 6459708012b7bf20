"""All SQL for the service's own generated secrets (e.g. the pseudonym key). Nothing here commits."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlmodel import Session

from service.infra.tables import ServiceSecret
from service.repositories.sql import insert_on_conflict

_SECRET = ServiceSecret.__table__  # type: ignore[attr-defined]


def get_or_create_secret(session: Session, name: str, make: Callable[[], str]) -> str:
    """A service secret, created once: whoever asks first stores it, and every other asker gets
    the stored one. Two processes starting on a new database ask at the same moment: the second
    insert waits for the first transaction and then does nothing (no unique-key failure that
    would stop a server's start-up), and the read after it finds the winner's secret."""
    query = select(_SECRET.c.value).where(_SECRET.c.name == name)
    row = session.execute(query).first()
    if row is not None:
        return str(row.value)
    stored = insert_on_conflict(session, _SECRET).values(name=name, value=str(make()))
    session.execute(stored.on_conflict_do_nothing(index_elements=["name"]))
    return str(session.execute(query).scalar_one())
