"""`trialbridge client add|list|revoke`, `trialbridge token` (for curl), `trialbridge audit export`."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import sys
import time
import uuid
from pathlib import Path
from typing import TextIO

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import Engine

from service.access.clients import add_client, list_clients, replace_client_keys, revoke_client
from service.access.tokens import (
    ASSERTION_TYPE,
    GRANT_TYPE,
    rotate_signing_key,
    signing_key_states,
)
from service.audit.trail import recover
from service.errors import ApiError
from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.reads.audit_log import AuditLog


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `client`, `keys`, `token` and `audit` subcommands."""
    client = sub.add_parser("client", help="register, list or revoke API clients")
    actions = client.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="register a client and the public keys it signs with")
    add.add_argument("name")
    add.add_argument("--scope", action="append", required=True, help="repeat for each scope")
    keys = add.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks", type=Path, help="a JSON Web Key Set file (public keys)")
    keys.add_argument("--jwks-url", help="where the client publishes its JWKS (fetched, cached)")
    actions.add_parser("list", help="every client, its scopes and key ids")
    revoke = actions.add_parser("revoke", help="refuse the client's assertions from now on")
    revoke.add_argument("name")
    rekey = actions.add_parser(
        "keys", help="replace a client's public keys (list old and new keys while it changes)"
    )
    rekey.add_argument("name")
    new_keys = rekey.add_mutually_exclusive_group(required=True)
    new_keys.add_argument("--jwks", type=Path, help="a JSON Web Key Set file (public keys)")
    new_keys.add_argument("--jwks-url", help="where the client publishes its JWKS")
    signing = sub.add_parser("keys", help="the keys this service signs its access tokens with")
    signing_actions = signing.add_subparsers(dest="action", required=True)
    signing_actions.add_parser("list", help="every signing key: kid, created, signing or verifying")
    rotate = signing_actions.add_parser(
        "rotate",
        help="sign with a new key; retire keys outlived for 15 minutes (their tokens expired)",
    )
    rotate.add_argument(
        "--retire-now",
        action="store_true",
        help="retire every older key at once (a leaked key): all outstanding tokens stop working",
    )
    token = sub.add_parser("token", help="mint a client assertion, exchange it, print a token")
    token.add_argument("name")
    token.add_argument("--key", type=Path, required=True, help="the client's private JWK")
    token.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    token.add_argument("--scope", action="append", help="scopes to ask for (default: all)")
    audit = sub.add_parser("audit", help="the audit trail, for a SIEM")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    export = audit_actions.add_parser(
        "export", help="AuditEvent and Provenance records as NDJSON on stdout, oldest first"
    )
    export.add_argument(
        "--since",
        type=_instant,
        help="records at or after this instant (ISO 8601 with offset) or date (UTC)",
    )
    export.add_argument(
        "--after-seq",
        type=int,
        help="records stored after this one (the seq the last export printed): nothing missed",
    )


def _instant(text: str) -> dt.datetime:
    """An ISO 8601 instant with its offset (or Z), or a date meaning its start in UTC."""
    try:
        if len(text) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), tzinfo=dt.UTC)
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or instant") from exc
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs an offset, e.g. Z or +01:00")
    return value


def export_audit(
    settings: Settings, since: dt.datetime | None, after_seq: int | None, out: TextIO
) -> tuple[int, int | None]:
    """Write the audit records asked for to `out`, one JSON document per line: (how many, the
    last one's seq)."""
    engine = make_engine(settings)
    try:
        migrate.prepare(engine, auto_migrate=settings.auto_migrate)
        recover(engine, settings.spool_dir())  # what a crashed process journaled is exported too
        written, last = 0, after_seq
        log = AuditLog(engine, default_count=1, max_count=1)
        for seq, line in log.export(since, after_seq):
            out.write(line + "\n")
            written, last = written + 1, seq
        return written, last
    finally:
        engine.dispose()


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Carry out `client ...`, `token ...` or `audit ...`; errors go to stderr with exit code 1."""
    try:
        if args.command == "token":
            print(_token(args, settings))
            return 0
        if args.command == "audit":
            if args.since is None and args.after_seq is None:
                print("trialbridge: audit export needs --since or --after-seq", file=sys.stderr)
                return 2
            written, last = export_audit(settings, args.since, args.after_seq, sys.stdout)
            follow = f"; next time: --after-seq {last}" if last is not None else ""
            print(f"exported {written} audit record(s){follow}", file=sys.stderr)
            return 0
        engine = make_engine(settings)
        migrate.prepare(engine, auto_migrate=settings.auto_migrate)
        try:
            if args.command == "keys":
                _signing_keys(engine, args)
            elif args.action == "add":
                jwks = json.loads(args.jwks.read_text("utf-8")) if args.jwks else None
                made = add_client(
                    engine,
                    args.name,
                    args.scope,
                    jwks=jwks,
                    jwks_url=args.jwks_url,
                    allow_private=settings.webhook_allow_private,
                )
                print(f"client {made.name}: {' '.join(made.scopes)}")
            elif args.action == "list":
                for c in list_clients(engine):
                    state = "revoked" if c.revoked else "active"
                    keys = c.jwks_url or ", ".join(c.key_ids)
                    print(f"{c.name}\t{state}\t{' '.join(c.scopes)}\tkeys: {keys}")
            elif args.action == "keys":
                jwks = json.loads(args.jwks.read_text("utf-8")) if args.jwks else None
                changed = replace_client_keys(
                    engine,
                    args.name,
                    jwks=jwks,
                    jwks_url=args.jwks_url,
                    allow_private=settings.webhook_allow_private,
                )
                print(
                    f"client {changed.name}: keys {changed.jwks_url or ', '.join(changed.key_ids)}"
                )
            else:
                revoke_client(engine, args.name)
                print(f"client {args.name} revoked")
        finally:
            engine.dispose()
    except (ApiError, OSError, ValueError, httpx.HTTPError) as exc:
        print(f"trialbridge: {exc}", file=sys.stderr)
        return 1
    return 0


def _signing_keys(engine: Engine, args: argparse.Namespace) -> None:
    """`keys list` and `keys rotate`."""
    if args.action == "rotate":
        kid, retired = rotate_signing_key(engine, retire_now=args.retire_now)
        print(f"signing with {kid} (every process within a minute)")
        for old in retired:
            print(f"retired {old}")
        return
    for key in signing_key_states(engine):
        role = "signing" if key.signing else "verifying"
        print(f"{key.kid}\t{key.created_at.isoformat()}\t{role}")


def _token(args: argparse.Namespace, settings: Settings) -> str:
    """An access token for `args.name`, from the service at `args.url`."""
    raw = json.loads(args.key.read_text("utf-8"))
    key = ECKey.import_key(raw) if raw.get("kty") == "EC" else RSAKey.import_key(raw)
    alg = "ES384" if raw.get("kty") == "EC" else "RS384"
    scopes = args.scope
    if not scopes:  # everything the client was granted
        engine = make_engine(settings)
        try:
            found = list_clients(engine, only=args.name)
        finally:
            engine.dispose()
        if not found:
            raise ValueError(f"no client {args.name!r} in this database; pass --scope")
        scopes = list(found[0].scopes)
    token_url = args.url.rstrip("/") + "/auth/token"
    now = int(time.time())
    claims = {
        "iss": args.name,
        "sub": args.name,
        "aud": token_url,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
    }
    assertion = jwt.encode(
        {"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg]
    )
    answer = httpx.post(
        token_url,
        data={
            "grant_type": GRANT_TYPE,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
            "scope": " ".join(scopes),
        },
        timeout=30,
    )
    body = answer.json()
    if answer.status_code != 200:
        raise ValueError(f"{body.get('error')}: {body.get('error_description')}")
    return str(body["access_token"])


def refuse_unauthenticated_bind(settings: Settings, host: str) -> str | None:
    """Why `serve` must not start: authentication off on an address beyond this machine."""
    if not settings.auth_disabled:
        return None
    try:  # an address, not a name: /etc/hosts may map `localhost` anywhere
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"TRIALBRIDGE_AUTH_DISABLED=true is allowed only on a loopback address, not {host!r}: "
        "anyone who can reach the port would read and write all patient data"
    )
