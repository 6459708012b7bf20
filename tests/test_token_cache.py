"""The cache of verified access tokens skips only the signature check: every other check stays."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jws import extract_compact
from sqlalchemy import Engine

from service.access.clients import add_client, revoke_client
from service.access.scopes import Scopes
from service.access.tokens import (
    REVOCATION_CHECK_SECONDS,
    Principal,
    TokenService,
    VerifiedTokens,
    _Verified,
    rotate_signing_key,
)
from service.errors import AuthError
from service.infra import migrate
from service.infra.clock import utcnow
from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.kit.auth import access_token, bearer, ec_key, jwks
from tests.kit.live import Served, served

SCOPES = "system/Patient.rs"
FEED_KEY = ec_key("feed-1")


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def engine(new_database: Any) -> Iterator[Engine]:
    made = make_engine(Settings(database_url=new_database("sqlite")))
    migrate.upgrade(made)
    add_client(made, "feed", [SCOPES], jwks=jwks(FEED_KEY))
    yield made
    made.dispose()


def _token(tokens: TokenService) -> str:
    return tokens._issue("feed", Scopes.parse(SCOPES)).access_token


def _refused(tokens: TokenService, token: str) -> bool:
    with pytest.raises(AuthError) as refused:
        tokens.verify(token)
    return (refused.value.status, refused.value.code) == (401, "invalid_token")


def _signatures_checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token whose signature `verify` checks from now on."""
    seen: list[str] = []
    decode = jwt.decode

    def counting(value: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(value)
        return decode(value, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return seen


def test_a_repeat_token_skips_only_the_signature_check(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = TokenService(engine)
    token = _token(tokens)
    checked = _signatures_checked(monkeypatch)
    assert tokens.cached(token) is None  # never verified: only verify() can tell
    assert [tokens.verify(token).client for _ in range(3)] == ["feed"] * 3
    assert checked == [token]
    assert tokens.cached(token) == tokens.verify(token)
    assert list(tokens.verified._entries) == [hashlib.sha256(token.encode()).digest()]


def test_a_cached_token_is_refused_once_its_client_is_revoked(engine: Engine) -> None:
    tokens = TokenService(engine)
    token = _token(tokens)
    assert tokens.verify(token).client == "feed"
    revoke_client(engine, "feed")
    tokens._revoked.clear()  # a second on: the revocation is asked of the database again
    assert tokens.cached(token) is None
    assert _refused(tokens, token)
    assert tokens.cached(token) is None  # known revoked: never admitted without verify()


def test_a_cached_token_is_refused_after_its_expiry(engine: Engine) -> None:
    clock = Clock()
    tokens = TokenService(engine, clock=clock, lifetime_seconds=300, skew_seconds=60)
    token = _token(tokens)
    assert tokens.verify(token).client == "feed"
    clock.now += dt.timedelta(seconds=299)
    assert tokens.cached(token) is not None
    clock.now += dt.timedelta(seconds=1)  # at exp: the entry goes, the full check remains
    assert tokens.cached(token) is None
    assert tokens.verify(token).client == "feed"  # within the skew, signature checked again
    assert len(tokens.verified) == 0  # not kept again past its exp
    clock.now += dt.timedelta(seconds=61)
    assert _refused(tokens, token)


def test_a_cached_token_is_refused_before_its_nbf(engine: Engine) -> None:
    clock = Clock()
    tokens = TokenService(engine, clock=clock, skew_seconds=60)
    token = _token(tokens)
    assert tokens.verify(token).client == "feed"
    clock.now -= dt.timedelta(seconds=61)  # the clock stepped back past nbf and the skew
    assert tokens.cached(token) is None
    assert _refused(tokens, token)


def test_a_cached_token_is_refused_once_its_key_is_retired(engine: Engine) -> None:
    tokens = TokenService(engine)
    token = _token(tokens)
    assert tokens.verify(token).client == "feed"
    _, retired = rotate_signing_key(engine, retire_now=True)
    assert retired == [str(extract_compact(token.encode()).protected["kid"])]
    tokens._loaded_at -= 3600  # what a minute does: the keys are read again on the next use
    assert tokens.cached(token) is None
    assert _refused(tokens, token)
    assert len(tokens.verified) == 0
    assert tokens.verify(_token(tokens)).client == "feed"  # the new key's tokens work


def test_a_tampered_signature_is_refused_and_never_served_from_the_cache(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = TokenService(engine)
    token = _token(tokens)
    assert tokens.verify(token).client == "feed"
    head, payload, signature = token.split(".")
    tampered = (
        f"{head}.{payload}.{signature[:10]}{'A' if signature[10] != 'A' else 'B'}"
        + (signature[11:])
    )
    checked = _signatures_checked(monkeypatch)
    assert tokens.cached(tampered) is None
    assert _refused(tokens, tampered)
    assert _refused(tokens, tampered)
    assert checked == [tampered, tampered]  # checked each time, never admitted
    assert len(tokens.verified) == 1


def test_the_cache_keeps_its_bounds(engine: Engine) -> None:
    tokens = TokenService(engine, cache_entries=3)
    issued = [_token(tokens) for _ in range(5)]
    for token in issued:
        tokens.verify(token)
    assert len(tokens.verified) == 3
    kept = {hashlib.sha256(t.encode()).digest() for t in issued[2:]}
    assert set(tokens.verified._entries) == kept  # the least recently used went first
    size = next(iter(tokens.verified._entries.values())).size
    small = TokenService(engine, cache_bytes=2 * size)
    for token in issued:
        small.verify(token)
    assert (len(small.verified), small.verified.bytes) == (2, 2 * size)


def test_the_bytes_bound_refuses_an_entry_larger_than_itself() -> None:
    cache = VerifiedTokens(max_entries=10, max_bytes=100)
    who = Principal("feed", Scopes.parse(SCOPES))
    cache.put(b"a", _Verified(who, {}, "k", 2**40, 101))
    cache.put(b"b", _Verified(who, {}, "k", 2**40, 60))
    cache.put(b"c", _Verified(who, {}, "k", 2**40, 60))
    assert (list(cache._entries), cache.bytes) == ([b"c"], 60)


def test_tokens_of_another_issuer_are_not_kept(engine: Engine) -> None:
    """An external issuer's key set changes on its own schedule: its tokens are checked each time."""
    tokens = TokenService(engine)
    assert tokens.verified.max_entries > 0
    assert _refused(tokens, "a.b.c")
    assert len(tokens.verified) == 0


# -- through the app over HTTP: the event loop's fast path (`cached`) and the thread's `verify` --

NCT = "NCT06088771"
TIMELINE = f"/api/v1/studies/{NCT}/subjects/nobody/timeline"  # 404 once the token is admitted


@pytest.fixture
def running(new_database: Any) -> Iterator[Served]:
    settings = Settings(
        database_url=new_database("sqlite"), auth_disabled=False, webhook_interval_seconds=0
    )
    with served(settings) as app:
        add_client(app.engine, "feed", [SCOPES, f"study/{NCT}.read"], jwks=jwks(FEED_KEY))
        yield app


def _http_token(app: Served) -> str:
    return access_token(app.url, FEED_KEY, "feed", f"{SCOPES} study/{NCT}.read")


def _status(app: Served, token: str) -> int:
    return httpx.get(f"{app.url}{TIMELINE}", headers=bearer(token), timeout=30).status_code


def test_over_http_a_repeat_token_is_admitted_without_its_signature_checked_again(
    running: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens: TokenService = running.app.state.tokens
    token = _http_token(running)
    checked = _signatures_checked(monkeypatch)
    assert [_status(running, token) for _ in range(4)] == [404] * 4
    assert checked == [token]
    assert len(tokens.verified) == 1


def test_over_http_a_tampered_signature_is_refused_every_time(
    running: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = _http_token(running)
    assert _status(running, token) == 404
    head, payload, signature = token.split(".")
    flipped = "A" if signature[-5] != "A" else "B"
    tampered = f"{head}.{payload}.{signature[:-5]}{flipped}{signature[-4:]}"
    checked = _signatures_checked(monkeypatch)
    assert [_status(running, tampered) for _ in range(3)] == [401] * 3
    assert checked == [tampered] * 3
    assert _status(running, token) == 404  # the genuine one still served from the cache
    assert checked == [tampered] * 3


def test_over_http_a_cached_token_is_refused_once_expired_revoked_or_its_key_retired(
    running: Served,
) -> None:
    tokens: TokenService = running.app.state.tokens
    clock = Clock()
    tokens.clock = clock
    token = _http_token(running)
    assert [_status(running, token) for _ in range(2)] == [404, 404]
    clock.now += dt.timedelta(seconds=tokens.lifetime + tokens.skew + 1)
    assert _status(running, token) == 401  # expired
    clock.now = utcnow()

    fresh = _http_token(running)
    assert [_status(running, fresh) for _ in range(2)] == [404, 404]
    rotate_signing_key(running.engine, retire_now=True)
    tokens._loaded_at -= 3600  # what a minute does: the keys are read again on the next use
    assert _status(running, fresh) == 401  # its key is retired
    assert len(tokens.verified) == 0

    newest = _http_token(running)
    assert [_status(running, newest) for _ in range(2)] == [404, 404]
    revoke_client(running.engine, "feed")
    time.sleep(REVOCATION_CHECK_SECONDS + 0.2)  # how long a process may trust its last look
    assert _status(running, newest) == 401  # revoked
