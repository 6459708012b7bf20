"""All SQL for the service's own generated secrets (e.g. the pseudonym key). Nothing here commits."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import insert, select
from sqlmodel import Session

from service.infra.tables import ServiceSecret

_SECRET = ServiceSecret.__table__  # type: ignore[attr-defined]


def get_or_create_secret(session: Session, name: str, make: Callable[[], str]) -> str:
    """A service secret, created once; a concurrent creator makes this unit of work retry."""
    row = session.execute(select(_SECRET.c.value).where(_SECRET.c.name == name)).first()
    if row is not None:
        return str(row.value)
    value = str(make())
    session.execute(insert(_SECRET), [{"name": name, "value": value}])
    return value
