"""Request budgets: a token bucket per network address and per client; 429 with `Retry-After`.

A request needs a token from its address's bucket and, once its bearer token is verified, one from
its client's. The address is taken at the door (this middleware, before routing): an
unauthenticated flood is refused before any token is verified or body read. The client is known
only after verification, so `principal` (api/auth.py) calls `charge_client` with the verified
client id: keying on an unverified claim would let anyone spend another client's budget. Either
refusal is answered inside the audit middleware, so it is recorded (outcome 4, HTTP 429) and
logged like any answer. A refused request takes no token.

The buckets live in this process's memory: with N processes or replicas a client may make N times
the configured rate (a limiter shared between them would need a store such as Redis, which this
service does not require). Every bucket operation runs on the event loop without an `await`
inside, so coroutines never interleave within one; the lock makes a table safe for callers on
other threads too, and costs nothing uncontended.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import is_fhir_path, render
from api.request_log import route_path
from service.errors import RateLimitedError
from service.infra.settings import Settings

# Never limited: probes, discovery of what the server supports, and the metrics scrape.
EXEMPT = frozenset({"/healthz", "/readyz", "/fhir/metadata", "/metrics"})
# Buckets kept per table. An idle bucket that has refilled is dropped first (a new one would be
# the same); past this many, the least recently used goes, so memory stays bounded (~3 MB).
MAX_BUCKETS = 10_000
# Float noise in refill arithmetic must not refuse a token that is due, nor add a second.
_TOKEN_SLACK = 1e-9
_SECOND_SLACK = 1e-6
# Set by the middleware on a request that must also spend its client's token; taken by the charge.
_PENDING = "rate_limits_pending"


class TokenBucket:
    """Up to `burst` tokens, refilled at `rate` per second; a request takes one or waits."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def take(self, now: float) -> float:
        """0 when a token was taken; else the seconds until one is due (nothing is taken)."""
        self._refill(now)
        if self._tokens >= 1 - _TOKEN_SLACK:
            self._tokens = max(0.0, self._tokens - 1)
            return 0.0
        return (1 - self._tokens) / self.rate

    def full(self, now: float) -> bool:
        """Refilled to its burst: the same as a bucket made now."""
        elapsed = max(0.0, now - self._stamp)
        return self._tokens + elapsed * self.rate >= self.burst - _TOKEN_SLACK


def retry_after(wait: float) -> int:
    """A wait as `Retry-After`: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait - _SECOND_SLACK))


class Buckets:
    """One token bucket per key (a client id, an address), at most `capacity` of them."""

    def __init__(self, rate: float, burst: int, capacity: int = MAX_BUCKETS) -> None:
        self.rate = rate
        self.burst = burst
        self.capacity = capacity
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def take(self, key: str, now: float) -> float:
        """Take a token from `key`'s bucket: 0, or the seconds until one is due."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                self._make_room(now)
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            else:
                self._buckets.move_to_end(key)
            return bucket.take(now)

    def _make_room(self, now: float) -> None:
        """Drop refilled buckets from the idle end, then the least recently used if still full."""
        while self._buckets:
            key, oldest = next(iter(self._buckets.items()))
            if len(self._buckets) < self.capacity and not oldest.full(now):
                return
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimits:
    """This process's two tables, from the settings; a rate of 0 turns a table off."""

    def __init__(
        self,
        clients: Buckets | None,
        addresses: Buckets | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clients = clients
        self.addresses = addresses
        self.clock = clock

    @classmethod
    def for_settings(
        cls, settings: Settings, clock: Callable[[], float] = time.monotonic
    ) -> RateLimits:
        """The tables the settings ask for."""
        return cls(
            _table(settings.rate_limit_client_per_second, settings.rate_limit_client_burst),
            _table(settings.rate_limit_address_per_second, settings.rate_limit_address_burst),
            clock,
        )

    def check(self, whose: Literal["client", "address"], key: str) -> None:
        """Spend one of `key`'s tokens, or raise RateLimitedError saying when to come back."""
        table = self.clients if whose == "client" else self.addresses
        if table is None:
            return
        wait = table.take(key, self.clock())
        if wait > 0:
            raise RateLimitedError(retry_after(wait), whose)


def _table(rate: float, burst: int) -> Buckets | None:
    return Buckets(rate, burst) if rate > 0 else None


def charge_client(request: Request, client: str) -> None:
    """After the token is verified: spend the client's token (once per request), or 429."""
    limits = request.scope.get("state", {}).pop(_PENDING, None)
    if isinstance(limits, RateLimits):  # not on exempt paths, nor twice for one request
        limits.check("client", client)


class RateLimit:
    """ASGI middleware: the address's token at the door; the client's is left to `principal`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in EXEMPT:
            await self.app(scope, receive, send)
            return
        limits: RateLimits = scope["app"].state.rate_limits
        peer = scope.get("client")
        try:
            if peer:  # the address uvicorn reports (X-Forwarded-For from a trusted proxy)
                limits.check("address", str(peer[0]))
        except RateLimitedError as exc:
            await render(exc, fhir=is_fhir_path(path))(scope, receive, send)
            return
        scope.setdefault("state", {})[_PENDING] = limits
        await self.app(scope, receive, send)
