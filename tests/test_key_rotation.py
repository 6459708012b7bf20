"""Rotating the token signing key and a client's keys, over real HTTP on both backends.

Each test runs its own app with authentication on, on a database of its own, and rotates with the
same commands an operator runs (`trialbridge keys rotate`, `trialbridge client keys`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jws import extract_compact
from sqlalchemy import Engine, text

from service.access.clients import add_client
from service.access.tokens import RETIRE_AFTER, TokenService, rotate_signing_key
from service.infra.clock import utcnow
from service.infra.settings import Settings
from tests.kit.auth import access_token, assertion, bearer, ec_key, jwks, token_request
from tests.kit.live import Served, served

BIN = Path(sys.executable).parent
KEY = ec_key("feed-1")
SCOPES = "system/Patient.rs"
READ = "/fhir/Patient?identifier=none"


@pytest.fixture
def app(backend: str, new_database: Any) -> Iterator[Served]:
    """The app with authentication on and one registered client, `feed`."""
    settings = Settings(
        database_url=str(new_database(backend)), auth_disabled=False, webhook_interval_seconds=0
    )
    with served(settings) as running:
        add_client(running.engine, "feed", [SCOPES], jwks=jwks(KEY))
        yield running


def _kid(token: str) -> str:
    return str(extract_compact(token.encode()).protected["kid"])


def _status(app: Served, token: str) -> int:
    return httpx.get(f"{app.url}{READ}", headers=bearer(token), timeout=30).status_code


def _signing_keys(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT kid FROM signing_key ORDER BY created_at"))]


def _reload_now(app: Served) -> None:
    """What a minute does: the process reads the signing keys again on its next use."""
    tokens: TokenService = app.app.state.tokens
    tokens._loaded_at -= 3600


def test_a_rotation_signs_new_tokens_with_the_new_key_and_old_tokens_keep_working(
    app: Served,
) -> None:
    before = access_token(app.url, KEY, "feed", SCOPES)
    (first,) = _signing_keys(app.engine)
    new_kid, retired = rotate_signing_key(app.engine)
    assert retired == []
    assert _signing_keys(app.engine) == [first, new_kid]
    assert _kid(access_token(app.url, KEY, "feed", SCOPES)) == first  # until the reload
    _reload_now(app)
    after = access_token(app.url, KEY, "feed", SCOPES)
    assert (_kid(before), _kid(after)) == (first, new_kid)
    assert (_status(app, before), _status(app, after)) == (200, 200)


def test_a_key_is_retired_only_once_its_tokens_have_expired(app: Served) -> None:
    old = access_token(app.url, KEY, "feed", SCOPES)
    (first,) = _signing_keys(app.engine)
    second, _ = rotate_signing_key(app.engine)
    soon = utcnow() + RETIRE_AFTER - dt.timedelta(seconds=1)
    third, retired = rotate_signing_key(app.engine, now=soon)
    assert retired == []  # the first was outlived by 15 minutes less a second: kept
    later = utcnow() + RETIRE_AFTER + dt.timedelta(seconds=1)
    fourth, retired = rotate_signing_key(app.engine, now=later)
    assert retired == [first]  # the second and third were outlived for less than 15 minutes
    assert _signing_keys(app.engine) == [second, third, fourth]
    _reload_now(app)
    assert _status(app, old) == 401
    fresh = access_token(app.url, KEY, "feed", SCOPES)
    assert (_kid(fresh), _status(app, fresh)) == (fourth, 200)


def test_retire_now_ends_every_outstanding_token(app: Served) -> None:
    old = access_token(app.url, KEY, "feed", SCOPES)
    new_kid, retired = rotate_signing_key(app.engine, retire_now=True)
    assert retired == [_kid(old)]
    assert _signing_keys(app.engine) == [new_kid]
    _reload_now(app)
    assert _status(app, old) == 401
    assert _status(app, access_token(app.url, KEY, "feed", SCOPES)) == 200


def test_a_second_process_accepts_the_new_key_at_once(app: Served) -> None:
    """Another replica has the old keys cached; a token naming the new kid makes it reload."""
    access_token(app.url, KEY, "feed", SCOPES)
    other = TokenService(app.engine)
    other.verify(access_token(app.url, KEY, "feed", SCOPES))  # caches the first key
    new_kid, _ = rotate_signing_key(app.engine)
    _reload_now(app)
    token = access_token(app.url, KEY, "feed", SCOPES)
    assert _kid(token) == new_kid
    other._loaded_at -= 2  # a second on: an unknown kid makes it read the keys (at most 1/s)
    assert other.verify(token).client == "feed"


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if k != "TRIALBRIDGE_AUTH_DISABLED"},
        "DATABASE_URL": database_url,
    }
    return subprocess.run(
        [str(BIN / "trialbridge"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_keys_commands(app: Served, tmp_path: Path) -> None:
    database_url = str(app.engine.url.render_as_string(hide_password=False))
    # keys made by one clock (the command's): this test process runs on a frozen one
    assert _cli(database_url, "keys", "rotate").returncode == 0
    (first,) = _signing_keys(app.engine)
    rotated = _cli(database_url, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    (second,) = set(_signing_keys(app.engine)) - {first}
    assert rotated.stdout == f"signing with {second} (every process within a minute)\n"
    listed = _cli(database_url, "keys", "list").stdout.splitlines()
    assert [(line.split("\t")[0], line.split("\t")[2]) for line in listed] == [
        (first, "verifying"),
        (second, "signing"),
    ]
    now = _cli(database_url, "keys", "rotate", "--retire-now")
    (third,) = _signing_keys(app.engine)
    assert now.stdout.splitlines() == [
        f"signing with {third} (every process within a minute)",
        f"retired {first}",
        f"retired {second}",
    ]


def test_a_client_rotates_its_own_keys(app: Served, tmp_path: Path) -> None:
    database_url = str(app.engine.url.render_as_string(hide_password=False))
    token_url = f"{app.url}/auth/token"
    new = ec_key("feed-2")
    both = tmp_path / "both.json"
    both.write_text(json.dumps(jwks(KEY, new)))
    changed = _cli(database_url, "client", "keys", "feed", "--jwks", str(both))
    assert (changed.returncode, changed.stdout) == (0, "client feed: keys feed-1, feed-2\n")
    for key in (KEY, new):  # during the change, either key signs
        assert token_request(app.url, assertion(key, "feed", token_url), SCOPES).status_code == 200
    only_new = tmp_path / "new.json"
    only_new.write_text(json.dumps(jwks(new)))
    assert _cli(database_url, "client", "keys", "feed", "--jwks", str(only_new)).returncode == 0
    old = token_request(app.url, assertion(KEY, "feed", token_url), SCOPES)
    assert (old.status_code, old.json()["error"]) == (401, "invalid_client")
    assert token_request(app.url, assertion(new, "feed", token_url), SCOPES).status_code == 200
    unknown = _cli(database_url, "client", "keys", "nobody", "--jwks", str(only_new))
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines()[-1] == "trialbridge: no active client 'nobody'"
