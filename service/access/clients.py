"""Registering, listing and revoking API clients, and the local admin client of a new install."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from service.access.scopes import is_scope
from service.errors import ApiError
from service.infra.clock import utcnow
from service.infra.db import reading, writing
from service.notifications.outbound import check_url
from service.repositories import api_clients

log = logging.getLogger(__name__)

ADMIN = "admin"
# The local admin may do everything: every FHIR interaction, every study, clients and the audit.
ADMIN_SCOPES = ("system/*.cruds", "study/*.read", "study/*.deviations.write", "admin", "audit")


@dataclass(frozen=True)
class Client:
    """A registered client as `trialbridge client list` shows it (never a private key)."""

    name: str
    scopes: tuple[str, ...]
    key_ids: tuple[str, ...]
    jwks_url: str | None
    revoked: bool


def _client(row: Any) -> Client:
    kids = tuple(str(k.get("kid", "?")) for k in json.loads(row.jwks or "{}").get("keys", []))
    return Client(
        row.name, tuple(row.scopes.split()), kids, row.jwks_url, row.revoked_at is not None
    )


def _checked_jwks(jwks: dict[str, Any]) -> str:
    """A public JWKS of RSA or EC keys, each with a kid; private parts are refused."""
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except Exception as exc:
        raise ApiError(400, "invalid_jwks", f"not a JWKS: {exc}") from exc
    for key in keys:
        if key.key_type not in ("RSA", "EC") or not key.kid or key.is_private:
            raise ApiError(
                400, "invalid_jwks", "every key must be a public RSA or EC key with a kid"
            )
    return json.dumps(keys.as_dict(private=False))


def add_client(
    engine: Engine,
    name: str,
    scopes: list[str],
    *,
    jwks: dict[str, Any] | None = None,
    jwks_url: str | None = None,
    allow_private: bool = False,
) -> Client:
    """Register a client with the scopes it may ask for and its public keys (or where they are)."""
    if (jwks is None) == (jwks_url is None):
        raise ApiError(400, "invalid_client", "give the client's JWKS or its JWKS URL, not both")
    if jwks_url is not None:
        check_url(jwks_url, allow_private=allow_private)  # the webhook rules: no internal hosts
    unknown = sorted(s for s in scopes if not is_scope(s))
    if not scopes or unknown:
        raise ApiError(400, "invalid_scope", f"unknown scopes: {' '.join(unknown) or '(none)'}")
    values = {
        "name": name,
        "scopes": " ".join(sorted(set(scopes))),
        "jwks": _checked_jwks(jwks) if jwks is not None else None,
        "jwks_url": jwks_url,
        "created_at": utcnow(),
        "revoked_at": None,
    }
    try:
        with writing(engine) as session:
            api_clients.insert_client(session, values)
    except IntegrityError as exc:
        raise ApiError(409, "client_exists", f"a client named {name!r} exists") from exc
    return list_clients(engine, only=name)[0]


def replace_client_keys(
    engine: Engine,
    name: str,
    *,
    jwks: dict[str, Any] | None = None,
    jwks_url: str | None = None,
    allow_private: bool = False,
) -> Client:
    """Rotate a client's keys: the new JWKS (holding old and new keys during the change) or URL."""
    if (jwks is None) == (jwks_url is None):
        raise ApiError(400, "invalid_client", "give the client's JWKS or its JWKS URL, not both")
    if jwks_url is not None:
        check_url(jwks_url, allow_private=allow_private)
    checked = _checked_jwks(jwks) if jwks is not None else None
    with writing(engine) as session:
        if not api_clients.set_client_keys(session, name, checked, jwks_url):
            raise ApiError(404, "client_not_found", f"no active client {name!r}")
    return list_clients(engine, only=name)[0]


def list_clients(engine: Engine, only: str | None = None) -> list[Client]:
    """Every client (or one), by name."""
    with reading(engine) as session:
        rows = api_clients.list_clients(session)
    return [_client(r) for r in rows if only is None or r.name == only]


def revoke_client(engine: Engine, name: str) -> None:
    """Refuse the client's assertions from now on (its tokens expire within minutes)."""
    with writing(engine) as session:
        if not api_clients.revoke_client(session, name, utcnow()):
            raise ApiError(404, "client_not_found", f"no active client {name!r}")


def bootstrap_admin(engine: Engine, key_file: Path) -> bool:
    """On an install with no clients yet: register `admin` and write its private key (0600).

    The client is registered first; only the process whose registration won writes the key file,
    to a fresh temporary file (created 0600, never following a link) renamed into place, so
    processes starting together never leave a key file that does not match the registered key.
    """
    with reading(engine) as session:
        if api_clients.has_clients(session):
            return False
    key = ECKey.generate_key("P-384", parameters={"use": "sig", "alg": "ES384"})
    key = ECKey.import_key({**key.as_dict(private=True), "kid": key.thumbprint()})
    try:
        add_client(engine, ADMIN, list(ADMIN_SCOPES), jwks={"keys": [key.as_dict(private=False)]})
    except ApiError:
        return False  # another process registered it first
    key_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = key_file.with_name(f".{key_file.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(temporary, flags, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(json.dumps(key.as_dict(private=True)))
    os.replace(temporary, key_file)
    log.warning(
        "created the local admin client; get a token with: trialbridge token %s --key %s",
        ADMIN,
        key_file,
    )
    return True
