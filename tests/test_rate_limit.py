"""Request budgets: a token bucket per client and per address, refusals answered 429 + Retry-After.

The bucket's arithmetic is checked on a hand-moved clock (a burst of B, then exactly r a second);
the middleware over real HTTP on both backends with authentication on and tiny limits, on a clock
the test moves, so no refill can happen behind its back. Addresses come from X-Forwarded-For,
which uvicorn applies for a loopback peer (its default trusted proxy), as it does behind a proxy.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import Engine, text

from api.rate_limit import Buckets, RateLimits, TokenBucket, retry_after
from api.request_log import JsonFormatter
from service.access.clients import add_client
from service.errors import RateLimitedError
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON
from tests.kit import fhir as kit
from tests.kit.auth import access_token, bearer, ec_key, jwks
from tests.kit.live import served

NCT = "NCT06088771"
KEYS = {name: ec_key(f"{name}-1") for name in ("ehr", "monitor")}
SCOPES = {"ehr": ["system/*.cruds"], "monitor": [f"study/{NCT}.read"]}
CTMS = "https://ctms.hospital.example"  # a browser client: it must be able to read Retry-After


# -- the bucket, on a clock moved by hand --------------------------------------------------------


def _drain(bucket: TokenBucket, now: float) -> int:
    """Take every token there is at `now`; how many."""
    taken = 0
    while bucket.take(now) == 0:
        taken += 1
    return taken


@pytest.mark.parametrize(("rate", "burst"), [(2.0, 3), (3.0, 1), (0.1, 10), (1000.0, 50)])
def test_a_bucket_gives_its_burst_then_exactly_its_rate(rate: float, burst: int) -> None:
    bucket = TokenBucket(rate, burst, now=100.0)
    assert _drain(bucket, 100.0) == burst
    # Every tenth of a token's time for 30 tokens' worth: exactly 30 more, one per 1/rate seconds.
    step = 1 / rate / 10
    per_step = [_drain(bucket, 100.0 + n * step) for n in range(1, 301)]
    assert sum(per_step) == 30
    assert [n for n, got in enumerate(per_step, start=1) if got] == list(range(10, 301, 10))


def test_a_refusal_says_when_the_next_token_is_due_and_takes_nothing() -> None:
    bucket = TokenBucket(0.25, 2, now=0.0)
    assert [bucket.take(0.0), bucket.take(0.0)] == [0.0, 0.0]
    assert bucket.take(0.0) == 4.0
    assert bucket.take(1.5) == 2.5  # refused again: still due at 4.0, the refusals cost nothing
    assert bucket.take(4.0) == 0.0
    assert bucket.take(4.0) == 4.0


def test_a_bucket_refills_to_its_burst_and_no_further() -> None:
    bucket = TokenBucket(1.0, 3, now=0.0)
    assert _drain(bucket, 0.0) == 3
    assert bucket.full(2.5) is False
    assert bucket.full(3.0) is True
    assert _drain(bucket, 1000.0) == 3


@pytest.mark.parametrize(
    ("wait", "header"),
    [(4.0, 4), (2.5, 3), (0.001, 1), (1e-12, 1), (1.0000000001, 1), (1.01, 2), (1000.0, 1000)],
)
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: int) -> None:
    assert retry_after(wait) == header


def test_each_key_has_its_own_bucket() -> None:
    table = Buckets(1.0, 2)
    assert [table.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert [table.take("b", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert len(table) == 2


def test_idle_refilled_buckets_are_forgotten_and_busy_ones_kept() -> None:
    table = Buckets(1.0, 2, capacity=100)
    table.take("a", 0.0)
    table.take("a", 0.0)
    table.take("b", 1.0)  # "a" has one of two tokens back: kept, its state still matters
    assert len(table) == 2
    table.take("c", 5.0)  # both refilled: a new bucket would be the same, so they go
    assert len(table) == 1


def test_the_table_never_holds_more_than_its_capacity_least_recently_used_go_first() -> None:
    table = Buckets(0.001, 1, capacity=3)
    for address in ("a", "b", "c"):
        assert table.take(address, 0.0) == 0.0
    assert table.take("a", 0.0) > 0  # "a" used again: "b" is now the least recently used
    for n in range(50):
        table.take(f"flood-{n}", 0.0)
        assert len(table) <= 3
    assert len(table) == 3
    table = Buckets(0.001, 1, capacity=3)
    for address in ("a", "b", "c"):
        table.take(address, 0.0)
    table.take("a", 0.0)
    table.take("d", 0.0)  # evicts "b" (a fresh bucket next time), keeps "a" (still empty)
    assert (table.take("a", 0.0) > 0, table.take("b", 0.0)) == (True, 0.0)


def test_a_rate_of_zero_turns_a_table_off() -> None:
    limits = RateLimits.for_settings(
        Settings(rate_limit_client_per_second=0, rate_limit_address_per_second=0)
    )
    assert (limits.clients, limits.addresses) == (None, None)
    for _ in range(1000):
        limits.check("client", "busy")
        limits.check("address", "10.0.0.1")


def test_the_defaults_and_the_limits_of_the_settings() -> None:
    defaults = Settings()
    assert (
        defaults.rate_limit_client_per_second,
        defaults.rate_limit_client_burst,
        defaults.rate_limit_address_per_second,
        defaults.rate_limit_address_burst,
    ) == (200.0, 1000, 400.0, 2000)
    for bad in (
        {"rate_limit_client_per_second": -1},
        {"rate_limit_address_per_second": -0.5},
        {"rate_limit_client_burst": 0},
        {"rate_limit_address_burst": 0},
    ):
        with pytest.raises(ValidationError):
            Settings(**bad)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALBRIDGE_RATE_LIMIT_CLIENT_PER_SECOND", "2.5")
    monkeypatch.setenv("TRIALBRIDGE_RATE_LIMIT_ADDRESS_BURST", "7")
    limits = RateLimits.for_settings(Settings(), clock=lambda: 0.0)
    assert limits.clients is not None
    assert limits.addresses is not None
    assert (limits.clients.rate, limits.clients.burst) == (2.5, 1000)
    assert (limits.addresses.rate, limits.addresses.burst) == (400.0, 7)


def test_a_refusal_names_whose_budget_and_when_to_come_back() -> None:
    now = [0.0]
    limits = RateLimits(Buckets(0.5, 1), None, clock=lambda: now[0])
    limits.check("client", "ehr")
    with pytest.raises(RateLimitedError) as refused:
        limits.check("client", "ehr")
    assert (refused.value.status, refused.value.retry_after, refused.value.whose) == (
        429,
        2,
        "client",
    )
    now[0] = 2.0
    limits.check("client", "ehr")


# -- over HTTP -------------------------------------------------------------------------------------


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Limited:
    """A running app with authentication on and tiny limits, its tokens and its database."""

    url: str
    app: FastAPI
    engine: Engine
    settings: Settings
    tokens: dict[str, str]

    def call(
        self,
        method: str,
        path: str,
        *,
        client: str | None = None,
        address: str | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """One request as `client` (a token) from `address` (X-Forwarded-For)."""
        headers = {"x-request-id": uuid.uuid4().hex, **kw.pop("headers", {})}
        if client is not None:
            headers.update(bearer(self.tokens[client]))
        if address is not None:
            headers["x-forwarded-for"] = address
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)

    def statuses(self, count: int, method: str, path: str, **kw: Any) -> list[int]:
        """The statuses of `count` identical requests, in order."""
        return [self.call(method, path, **kw).status_code for _ in range(count)]

    def audit_event(self, request_id: str) -> dict[str, Any]:
        """The AuditEvent of one request."""
        self.app.state.audit.flush()
        with self.engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT content FROM audit_record WHERE kind = 'AuditEvent' "
                    "AND request_id = :rid"
                ),
                {"rid": request_id},
            ).scalars()
            events: list[dict[str, Any]] = [json.loads(c) for c in found]
        assert len(events) == 1, events
        return events[0]


@pytest.fixture(scope="module")
def limited(backend: str, new_database: Any) -> Iterator[Limited]:
    settings = Settings(
        database_url=str(new_database(backend)),
        auth_disabled=False,
        webhook_interval_seconds=0,
        cors_origins=CTMS,
        # tiny budgets: a client gets 3 at once, then one every 2 s; an address 8, then one every 4 s
        rate_limit_client_per_second=0.5,
        rate_limit_client_burst=3,
        rate_limit_address_per_second=0.25,
        rate_limit_address_burst=8,
    )
    with served(settings) as running:
        running.app.state.rate_limits = RateLimits(None, None)  # setting up is not what is tested
        for name, key in KEYS.items():
            add_client(running.engine, name, SCOPES[name], jwks=jwks(key))
        tokens = {
            name: access_token(running.url, key, name, " ".join(SCOPES[name]))
            for name, key in KEYS.items()
        }
        stored = httpx.put(
            f"{running.url}/fhir/Patient/rl",
            json=kit.patient(id="rl"),
            headers={**FHIR_JSON, **bearer(tokens["ehr"])},
            timeout=30,
        )
        assert stored.status_code in (200, 201), stored.text
        yield Limited(running.url, running.app, running.engine, settings, tokens)


@pytest.fixture
def clock(limited: Limited) -> ManualClock:
    """Fresh budgets from the settings, on a clock the test moves."""
    manual = ManualClock()
    limited.app.state.rate_limits = RateLimits.for_settings(limited.settings, clock=manual)
    return manual


def test_a_client_gets_its_burst_then_429_with_retry_after_on_fhir(
    limited: Limited, clock: ManualClock
) -> None:
    read = {"client": "ehr", "address": "10.1.0.1"}
    assert limited.statuses(3, "GET", "/fhir/Patient/rl", **read) == [200, 200, 200]
    refused = limited.call("GET", "/fhir/Patient/rl", **read)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"
    assert refused.headers["content-type"].startswith("application/fhir+json")
    assert refused.headers["x-content-type-options"] == "nosniff"  # inside the security headers
    issues = refused.json()["issue"]
    assert [(i["severity"], i["code"]) for i in issues] == [("error", "throttled")]
    assert "client" in issues[0]["diagnostics"]
    clock.now += 1.9
    assert limited.call("GET", "/fhir/Patient/rl", **read).headers["retry-after"] == "1"
    clock.now += 0.1  # the 2 s are up: one token back, and one only
    assert limited.statuses(2, "GET", "/fhir/Patient/rl", **read) == [200, 429]


def test_a_client_gets_its_burst_then_429_with_the_json_error_on_the_api(
    limited: Limited, clock: ManualClock
) -> None:
    who = {"client": "monitor", "address": "10.1.1.1"}
    assert limited.statuses(3, "GET", f"/api/v1/studies/{NCT}", **who) == [200, 200, 200]
    refused = limited.call("GET", f"/api/v1/studies/{NCT}", headers={"origin": CTMS}, **who)
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "2")
    assert refused.headers["access-control-allow-origin"] == CTMS
    exposed = refused.headers["access-control-expose-headers"].lower().split(",")
    assert "retry-after" in [h.strip() for h in exposed]
    assert refused.json() == {
        "error": {
            "status": 429,
            "code": "rate_limited",
            "message": "too many requests from this client; retry after 2 second(s)",
            "details": [],
        }
    }


def test_two_clients_have_their_own_buckets_and_a_client_keeps_its_own_across_addresses(
    limited: Limited, clock: ManualClock
) -> None:
    ehr = {"client": "ehr", "address": "10.2.0.1"}
    monitor = {"client": "monitor", "address": "10.2.0.2"}
    assert limited.statuses(4, "GET", "/fhir/Patient/rl", **ehr) == [200, 200, 200, 429]
    assert limited.statuses(4, "GET", f"/api/v1/studies/{NCT}", **monitor) == [200, 200, 200, 429]
    moved = limited.call("GET", "/fhir/Patient/rl", client="ehr", address="10.2.0.3")
    assert (moved.status_code, moved.headers["retry-after"]) == (429, "2")


def test_the_address_bucket_refuses_an_unauthenticated_flood_before_anything_runs(
    limited: Limited, clock: ManualClock
) -> None:
    flood = {"address": "10.3.0.1"}
    assert limited.statuses(8, "GET", "/fhir/Patient/rl", **flood) == [401] * 8
    refused = limited.call("GET", "/fhir/Patient/rl", **flood)
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "4")
    assert [i["code"] for i in refused.json()["issue"]] == ["throttled"]
    assert refused.headers["x-content-type-options"] == "nosniff"
    assert "address" in refused.json()["issue"][0]["diagnostics"]
    # The address is refused whatever it sends: a valid token, or a token request.
    assert limited.call("GET", "/fhir/Patient/rl", client="ehr", **flood).status_code == 429
    login = limited.call("POST", "/auth/token", data={"grant_type": "client_credentials"}, **flood)
    assert (login.status_code, login.headers["retry-after"]) == (429, "4")
    assert login.json()["error"]["code"] == "rate_limited"
    # Another address is not: it hears 401 as before, and a client with a token its 200.
    assert limited.call("GET", "/fhir/Patient/rl", address="10.3.0.2").status_code == 401
    other = limited.call("GET", "/fhir/Patient/rl", client="ehr", address="10.3.0.3")
    assert other.status_code == 200
    clock.now += 4
    assert limited.statuses(2, "GET", "/fhir/Patient/rl", **flood) == [401, 429]


def test_token_requests_are_limited_by_address(limited: Limited, clock: ManualClock) -> None:
    form = {"grant_type": "client_credentials"}  # refused (no assertion), but it costs the server
    answers = [limited.call("POST", "/auth/token", data=form, address="10.5.0.1") for _ in range(9)]
    assert [a.status_code for a in answers] == [400] * 8 + [429]
    assert answers[-1].json() == {
        "error": {
            "status": 429,
            "code": "rate_limited",
            "message": "too many requests from this address; retry after 4 second(s)",
            "details": [],
        }
    }


def test_probes_and_discovery_are_never_limited(limited: Limited, clock: ManualClock) -> None:
    probe = {"address": "10.4.0.1"}
    for path in ("/healthz", "/readyz", "/fhir/metadata"):
        assert limited.statuses(12, "GET", path, **probe) == [200] * 12
    # /metrics is exempt too (whatever it answers, never a refusal).
    assert 429 not in limited.statuses(12, "GET", "/metrics", **probe)
    # They took nothing: the address still has its whole burst.
    assert limited.statuses(9, "GET", "/fhir/Patient/rl", **probe) == [401] * 8 + [429]


def test_a_refused_request_is_audited_and_logged_with_429(
    limited: Limited, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    read = {"client": "ehr", "address": "10.6.0.1"}
    assert limited.statuses(3, "GET", "/fhir/Patient/rl", **read) == [200, 200, 200]
    by_client = limited.call("GET", "/fhir/Patient/rl", **read)
    assert by_client.status_code == 429
    event = limited.audit_event(by_client.headers["x-request-id"])
    agent = event["agent"][0]
    assert (
        event["action"],
        event["outcome"],
        event["outcomeDesc"],
        event["subtype"][0]["code"],
        agent["who"]["identifier"]["value"],
        agent["network"]["address"],
    ) == ("R", "4", "HTTP 429", "read", "ehr", "10.6.0.1")
    assert [e["what"]["reference"] for e in event["entity"] if "reference" in e["what"]] == [
        "Patient/rl"
    ]
    flood = {"address": "10.6.0.2"}
    assert limited.statuses(8, "GET", "/fhir/Patient/rl", **flood) == [401] * 8
    by_address = limited.call("GET", "/fhir/Patient/rl", **flood)
    assert by_address.status_code == 429
    event = limited.audit_event(by_address.headers["x-request-id"])
    agent = event["agent"][0]
    assert (
        event["outcome"],
        event["outcomeDesc"],
        agent["who"]["identifier"]["value"],
        agent["network"]["address"],
    ) == ("4", "HTTP 429", "anonymous", "10.6.0.2")
    wanted = {by_client.headers["x-request-id"]: "ehr", by_address.headers["x-request-id"]: None}
    access = _access_lines(caplog, set(wanted))
    assert {a["request_id"]: (a["status"], a["client"]) for a in access} == {
        rid: (429, client) for rid, client in wanted.items()
    }


def _access_lines(caplog: pytest.LogCaptureFixture, request_ids: set[str]) -> list[dict[str, Any]]:
    """The access lines of these requests (written just after each answer was sent)."""
    formatter = JsonFormatter()
    deadline = time.monotonic() + 10
    while True:
        lines = [
            json.loads(formatter.format(r))
            for r in caplog.records
            if r.name == "trialbridge.access" and getattr(r, "request_id", None) in request_ids
        ]
        if len(lines) == len(request_ids) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)
