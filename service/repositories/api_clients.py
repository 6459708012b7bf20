"""All SQL for API clients, the client-assertion ids seen, and token signing keys. Never commits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from service.infra.tables import ApiClient, ClientAssertion, SigningKey

_CLIENT = ApiClient.__table__  # type: ignore[attr-defined]
_ASSERTION = ClientAssertion.__table__  # type: ignore[attr-defined]
_KEY = SigningKey.__table__  # type: ignore[attr-defined]


def get_client(session: Session, name: str) -> Any | None:
    """One client by name (revoked ones too: the caller decides)."""
    return session.execute(select(_CLIENT).where(_CLIENT.c.name == name)).first()


def list_clients(session: Session) -> list[Any]:
    """Every client, by name."""
    return list(session.execute(select(_CLIENT).order_by(_CLIENT.c.name)))


def has_clients(session: Session) -> bool:
    """Whether any client was ever registered (an empty install has none)."""
    return session.execute(select(_CLIENT.c.name).limit(1)).first() is not None


def insert_client(session: Session, values: dict[str, Any]) -> None:
    """Register a client; a taken name fails with an integrity error."""
    session.execute(insert(_CLIENT), [values])


def revoke_client(session: Session, name: str, now: dt.datetime) -> bool:
    """Mark a client revoked; False when there is no such (unrevoked) client."""
    done = session.execute(
        update(_CLIENT)
        .where(_CLIENT.c.name == name, _CLIENT.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def set_client_keys(session: Session, name: str, jwks: str | None, jwks_url: str | None) -> bool:
    """Replace an active client's public keys (or their URL); False when there is no such client."""
    done = session.execute(
        update(_CLIENT)
        .where(_CLIENT.c.name == name, _CLIENT.c.revoked_at.is_(None))
        .values(jwks=jwks, jwks_url=jwks_url)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def remember_assertion(
    session: Session, client: str, jti: str, expires_at: dt.datetime, now: dt.datetime
) -> bool:
    """Record a client assertion's id; False when it was seen before (a replay).

    Ids of assertions expired for `_KEEP` by the server's clock are dropped (never by a time the
    caller chose: that could purge ids still in force).
    """
    session.execute(delete(_ASSERTION).where(_ASSERTION.c.expires_at < now - _KEEP))
    try:
        with session.begin_nested():
            session.execute(
                insert(_ASSERTION), [{"client": client, "jti": jti, "expires_at": expires_at}]
            )
    except IntegrityError:
        return False
    return True


# longer than any accepted clock skew (at most 5 minutes) past an assertion's expiry
_KEEP = dt.timedelta(minutes=10)


def signing_keys(session: Session) -> list[Any]:
    """The token signing keys, oldest first (every process signs with the last)."""
    return list(session.execute(select(_KEY).order_by(_KEY.c.created_at, _KEY.c.kid)))


_FIRST_KEY_LOCK = 0x7472_6B65_7930  # "trkey0": one advisory lock id for the first key


def lock_signing_keys(session: Session) -> None:
    """Serialise processes that may make the first key, so an empty database gets one key only.

    PostgreSQL: a transaction advisory lock, after which the next read sees what the holder
    stored. SQLite writers are serialised already (BEGIN IMMEDIATE).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _FIRST_KEY_LOCK})


def delete_signing_keys(session: Session, kids: Sequence[str]) -> None:
    """Retire keys: tokens they signed are refused from now on."""
    if kids:
        session.execute(delete(_KEY).where(_KEY.c.kid.in_(list(kids))))


def insert_signing_key(session: Session, kid: str, private_jwk: str, now: dt.datetime) -> None:
    """Keep a new signing key; a concurrent creator makes this unit of work retry."""
    session.execute(insert(_KEY), [{"kid": kid, "private_jwk": private_jwk, "created_at": now}])
