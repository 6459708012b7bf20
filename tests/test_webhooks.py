"""Webhooks end to end: subscriptions over HTTP, the outbox written with the data, signed delivery.

The app runs for real (both backends) with its dispatcher off, so each test drives `deliver_due`
itself with a chosen `now`. Only the receiver is mocked (respx patches httpx in this process), and
DNS is stubbed at `service.notifications.outbound.resolve_host`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import Engine, text
from sqlmodel import Session

from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.notifications import outbound
from service.notifications.webhooks import DeliveryPolicy, Dispatcher, deliver_due
from service.repositories import webhook_outbox
from tests.conftest import FHIR_JSON, start_server, stop_server
from tests.kit import fhir as kit
from tests.kit.client import put_resources
from tests.kit.clock import FROZEN_INSTANT
from tests.kit.evidence import cited
from tests.kit.live import Live, clocked_fixtures
from tests.kit.receiver import Arrival, issue_certificate, receiving

NCT = "NCT06088771"

NOW = dt.datetime(2025, 6, 30, 12, 0, tzinfo=dt.UTC)  # the derivation's clock
T0 = NOW + dt.timedelta(minutes=5)  # the first delivery pass
POLICY = DeliveryPolicy(
    timeout_seconds=2, max_attempts=3, backoff_base_seconds=10, backoff_max_seconds=3600
)
LEASE = dt.timedelta(seconds=32)  # timeout + 30 s

HOST = "ctms.example.org"
URL_A = f"https://{HOST}/hooks/a"
URL_B = f"https://{HOST}/hooks/b"
URL_C = f"https://{HOST}/hooks/c"
PUBLIC = "93.184.215.14"
DNS = {
    HOST: [PUBLIC],
    "intranet.example.org": ["10.1.2.3"],
    "mixed.example.org": [PUBLIC, "192.168.7.1"],
    "nat64.example.org": ["64:ff9b::a00:1"],  # AAAA only: NAT64 of 10.0.0.1
}
SECRET_A = "receiver-a-shared-secret-0001"
REAL_RESOLVER = outbound.resolve_host  # captured at import, before any test stubs it


# -- the app, DNS and the outbox -------------------------------------------------------------------------


def fake_dns(host: str) -> list[str]:
    """Stand-in for DNS: the hosts above, and nothing else resolves."""
    if host not in DNS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return sorted(DNS[host])


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test resolves names through fake_dns."""
    monkeypatch.setattr(outbound, "resolve_host", fake_dns)


live, api, fhir = clocked_fixtures(NOW)


def outbox(engine: Engine) -> list[Any]:
    """Every notification row, in the order written."""
    with Session(engine) as session:
        return webhook_outbox.outbox_state(session)


def subscribe(
    api: httpx.Client, url: str, events: list[str], secret: str | None = None
) -> dict[str, Any]:
    """POST a subscription; it must be created."""
    body: dict[str, Any] = {"url": url, "events": events}
    if secret is not None:
        body["secret"] = secret
    response = api.post("/subscriptions", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# -- the receiver -----------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A trial system's endpoint: checks the signature, applies each delivery once (by key)."""

    secret: str
    requests: list[httpx.Request] = field(default_factory=list)
    effects: dict[str, dict[str, Any]] = field(default_factory=dict)
    script: list[httpx.Response | Exception] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        """Answer as scripted (500, timeout …), then 200 for good, signed requests."""
        self.requests.append(request)
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        if not verify(self.secret, request):
            return httpx.Response(401)
        body = json.loads(request.content)
        self.effects.setdefault(request.headers["Idempotency-Key"], body)  # dedupe by key
        return httpx.Response(200)

    def keys(self) -> list[str]:
        """The Idempotency-Key of every request received, in order."""
        return [r.headers["Idempotency-Key"] for r in self.requests]


def verify(secret: str, request: httpx.Request) -> bool:
    """What a receiver does: recompute HMAC-SHA256 over `timestamp.body` with the shared secret."""
    timestamp = request.headers["X-Trialbridge-Timestamp"]
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + request.content, hashlib.sha256)
    expected = "sha256=" + mac.hexdigest()
    return hmac.compare_digest(expected, request.headers["X-Trialbridge-Signature"])


def deliver(
    engine: Engine,
    at: dt.datetime,
    receivers: Mapping[str, Callable[[httpx.Request], httpx.Response]],
    policy: DeliveryPolicy = POLICY,
) -> dict[str, int]:
    """One delivery pass at `at`, with only the receivers' URLs answering."""
    with respx.mock(assert_all_called=False) as router:
        for url, handler in receivers.items():
            router.post(url).mock(side_effect=handler)
        return deliver_due(engine, policy, now=lambda: at)


NOTHING = {"delivered": 0, "retry": 0, "failed": 0}


# -- FHIR data ----------------------------------------------------------------------------------------------

STUDY = kit.research_study()
DAY1_DOSES = (  # two dupilumab syringes and cemiplimab on 2025-03-10 (New York, EDT)
    ("dupi", "Dupixent 300 MG", 300, "09:00:00-04:00"),
    ("dupi2", "Dupixent 300 MG", 300, "09:05:00-04:00"),
    ("cemi", "Libtayo 350 MG", 350, "10:00:00-04:00"),
)


def surgery(pid: str, when: str) -> dict[str, Any]:
    """The lung resection (Day 1 is 2025-03-10: Day 20 = 03-29, Day 31 = 04-09)."""
    return kit.procedure(
        id=f"{pid}-surgery", patient=pid, code="Right upper lobectomy", performed=when
    )


def enrolled(pid: str, surgery_on: str = "2025-04-09") -> list[dict[str, Any]]:
    """A subject on schedule except the surgery, which by default is on Day 31 (one deviation)."""
    return [
        STUDY,
        kit.patient(id=pid, gender="male", birth_date="1950-01-02"),
        kit.research_subject(id=f"{pid}-rs", patient=pid, start="2025-03-03"),
        *(
            kit.dose(id=f"{pid}-{key}", patient=pid, drug=drug, amount=mg, when=f"2025-03-10T{at}")
            for key, drug, mg, at in DAY1_DOSES
        ),
        *(
            kit.procedure(
                id=f"{pid}-cnb{i}",
                patient=pid,
                code="core needle biopsy of lung",
                performed="2025-02-20",
            )
            for i in range(3)
        ),
        kit.specimen(id=f"{pid}-stool", patient=pid, type="Stool specimen", collected="2025-03-05"),
        surgery(pid, surgery_on),
        # the visit is inside both post-op windows
        kit.encounter(id=f"{pid}-postop", patient=pid, start="2025-05-03T10:00:00-04:00"),
    ]


def the_deviation(api: httpx.Client) -> dict[str, Any]:
    """The single deviation in the log."""
    found = api.get(f"/studies/{NCT}/deviations").json()["deviations"]
    assert len(found) == 1, found
    only: dict[str, Any] = found[0]
    return only


# -- subscriptions ------------------------------------------------------------------------------------------


def test_subscription_create_list_delete(api: httpx.Client) -> None:
    """The secret is shown once, at creation; listing never reveals it; delete removes it."""
    first = subscribe(api, URL_A, ["deviation.resolved", "deviation.opened", "deviation.opened"])
    assert set(first) == {"id", "url", "events", "created_at", "secret"}
    assert first["url"] == URL_A
    assert first["events"] == ["deviation.opened", "deviation.resolved"]  # sorted, deduplicated
    assert first["id"].startswith("SUB-")
    generated = first["secret"]
    assert len(generated) == 43  # token_urlsafe(32)
    second = subscribe(api, URL_B, ["eligibility.changed"], secret=SECRET_A)
    assert second["secret"] == SECRET_A
    assert first["secret"] != second["secret"]

    listed = api.get("/subscriptions")
    assert listed.status_code == 200
    assert listed.json() == {
        "subscriptions": [
            {k: v for k, v in s.items() if k != "secret"} | {"secret": None}
            for s in (first, second)
        ]
    }
    assert generated not in listed.text
    assert SECRET_A not in listed.text

    assert api.delete(f"/subscriptions/{first['id']}").status_code == 204
    assert [s["id"] for s in api.get("/subscriptions").json()["subscriptions"]] == [second["id"]]
    again = api.delete(f"/subscriptions/{first['id']}")
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "subscription_not_found"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://ctms.example.org/hooks", "invalid_url"),
        ("/hooks/relative", "invalid_url"),
        ("https://user:secret@ctms.example.org/hooks", "invalid_url"),
        ("https://ctms.example.org:99999/hooks", "invalid_url"),
        ("https://ctms.example.org:http/hooks", "invalid_url"),
        ("https://nowhere.example.org/hooks", "invalid_url"),
        (f"https://{HOST}/{'x' * 2000}", "invalid_url"),
        ("http://127.0.0.1/", "url_not_allowed"),
        ("http://10.0.0.5/", "url_not_allowed"),
        ("http://[::1]:8080/hooks", "url_not_allowed"),
        ("http://[64:ff9b::a00:1]/hooks", "url_not_allowed"),  # NAT64 of 10.0.0.1
        ("http://[2002:a00:1::1]/hooks", "url_not_allowed"),  # 6to4 of 10.0.0.1
        ("http://[::10.0.0.1]/hooks", "url_not_allowed"),  # IPv4-compatible
        ("http://[::ffff:192.168.0.1]/hooks", "url_not_allowed"),  # IPv4-mapped
        ("http://169.254.169.254/latest/meta-data", "url_not_allowed"),
        ("http://localhost:8080/hooks", "url_not_allowed"),
        ("https://intranet.example.org/hooks", "url_not_allowed"),
        ("https://mixed.example.org/hooks", "url_not_allowed"),
        ("https://nat64.example.org/hooks", "url_not_allowed"),
    ],
    ids=[
        "ftp",
        "relative",
        "credentials",
        "port-out-of-range",
        "port-not-a-number",
        "does-not-resolve",
        "too-long",
        "loopback",
        "private",
        "ipv6-loopback",
        "nat64-of-private",
        "6to4-of-private",
        "ipv4-compatible-private",
        "ipv4-mapped-private",
        "link-local-metadata",
        "localhost",
        "resolves-private",
        "resolves-public-and-private",
        "resolves-nat64-of-private",
    ],
)
def test_bad_urls_are_refused(api: httpx.Client, url: str, code: str) -> None:
    """No other schemes, no credentials, nothing undeliverable, nothing reaching inside the network."""
    response = api.post("/subscriptions", json={"url": url, "events": ["deviation.opened"]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert api.get("/subscriptions").json() == {"subscriptions": []}


def test_host_name_idna_cannot_encode_is_a_400(
    api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With real name resolution, a host like `a..b` makes IDNA raise: that is a bad URL, not a 500."""
    monkeypatch.setattr(outbound, "resolve_host", REAL_RESOLVER)
    response = api.post(
        "/subscriptions", json={"url": "https://a..b/hooks", "events": ["deviation.opened"]}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_url"


def test_private_urls_are_allowed_when_configured(backend: str, new_database: Any) -> None:
    """A deployment inside a hospital network may opt in to internal receivers."""
    settings = Settings(
        database_url=str(new_database(backend)),
        webhook_interval_seconds=0,
        webhook_allow_private=True,
    )
    server, thread, base = start_server(settings)
    try:
        with httpx.Client(base_url=f"{base}/api/v1", timeout=60) as client:
            for url in ("http://10.0.0.5/", "https://intranet.example.org/hooks"):
                response = client.post(
                    "/subscriptions", json={"url": url, "events": ["deviation.opened"]}
                )
                assert response.status_code == 201, response.text
            for url in ("ftp://10.0.0.5/", "http://u:p@10.0.0.5/"):
                refused = client.post(
                    "/subscriptions", json={"url": url, "events": ["deviation.opened"]}
                )
                assert refused.status_code == 400
                assert refused.json()["error"]["code"] == "invalid_url"
    finally:
        stop_server(server, thread)


@pytest.mark.parametrize(
    "events",
    [["deviation.created"], ["deviation.opened", "Deviation.Resolved"], []],
    ids=["unknown", "wrong-case", "empty"],
)
def test_unknown_event_names_are_refused(api: httpx.Client, events: list[str]) -> None:
    """A typo would subscribe to nothing and fail silently: refuse it."""
    response = api.post("/subscriptions", json={"url": URL_A, "events": events})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_events"
    assert "deviation.opened, deviation.resolved, eligibility.changed" in error["message"]
    assert api.get("/subscriptions").json() == {"subscriptions": []}


def test_subscription_body_is_validated(api: httpx.Client) -> None:
    """A short secret or an unknown field is refused before anything is stored."""
    short = api.post(
        "/subscriptions", json={"url": URL_A, "events": ["deviation.opened"], "secret": "x"}
    )
    assert short.status_code == 422
    extra = api.post(
        "/subscriptions", json={"url": URL_A, "events": ["deviation.opened"], "active": True}
    )
    assert extra.status_code == 422
    assert api.get("/subscriptions").json() == {"subscriptions": []}


# -- the outbox ---------------------------------------------------------------------------------------------


def test_write_enqueues_one_row_per_interested_subscription(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """The notification is written with the data, once per subscription that asked for it."""
    a = subscribe(api, URL_A, ["deviation.opened", "deviation.resolved"], SECRET_A)
    b = subscribe(api, URL_B, ["deviation.opened"])
    c = subscribe(api, URL_C, ["eligibility.changed"])
    put_resources(fhir, *enrolled("p1"))
    dev = the_deviation(api)
    event_id = f"deviation.opened.{dev['id']}.v1"
    rows = outbox(live.engine)
    assert sorted((r.subscription_id, r.event_type) for r in rows) == sorted(
        [
            (a["id"], "deviation.opened"),
            (b["id"], "deviation.opened"),
            (c["id"], "eligibility.changed"),
        ]
    )
    opened = {r.subscription_id: r for r in rows if r.event_type == "deviation.opened"}
    assert opened[a["id"]].idempotency_key == f"{event_id}.{a['id']}"
    assert opened[b["id"]].idempotency_key == f"{event_id}.{b['id']}"
    for row in rows:
        assert (row.created_at, row.next_attempt_at) == (NOW, NOW)
        assert (row.attempts, row.delivered_at, row.failed, row.last_error) == (
            0,
            None,
            False,
            None,
        )
    assert json.loads(opened[a["id"]].payload) == {
        "id": event_id,
        "type": "deviation.opened",
        "deviation": dev,
    }
    # receivers are trial software too: evidence ids, as in the API, never FHIR ids
    assert [set(e) for e in dev["evidence"]] == [{"evidence_id", "resource_type"}]

    # A transaction that fails (a stale If-Match on its last entry) leaves neither data nor mail.
    stale = kit.put_entry(kit.patient(id="p1", gender="female"), ifMatch='W/"9"')
    body = kit.transaction(*(kit.put_entry(r) for r in enrolled("p2")), stale)
    assert fhir.post("", content=body).status_code == 412
    assert [r.pk for r in outbox(live.engine)] == [r.pk for r in rows]
    assert the_deviation(api)["id"] == dev["id"]

    # Resolving it notifies the one subscription that asked for resolutions.
    live.now = NOW + dt.timedelta(hours=1)
    put_resources(fhir, surgery("p1", "2025-03-29"))
    resolved = [r for r in outbox(live.engine) if r.event_type == "deviation.resolved"]
    assert [(r.subscription_id, r.idempotency_key) for r in resolved] == [
        (a["id"], f"deviation.resolved.{dev['id']}.v2.{a['id']}")
    ]
    assert json.loads(resolved[0].payload)["deviation"]["status"] == "resolved"


def test_no_subscription_no_outbox(live: Live, api: httpx.Client, fhir: httpx.Client) -> None:
    """Without subscribers nothing accumulates in the outbox."""
    put_resources(fhir, *enrolled("p1"))
    assert the_deviation(api)["rule"] == "surgery_window"
    assert outbox(live.engine) == []


# -- delivery -----------------------------------------------------------------------------------------------


def test_delivery_is_signed_and_verifiable_with_the_secret(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """The receiver checks the HMAC-SHA256 of `timestamp.body` with its secret, independently."""
    sub = subscribe(api, URL_A, ["deviation.opened"], SECRET_A)
    put_resources(fhir, *enrolled("p1"))
    dev = the_deviation(api)
    receiver = Receiver(SECRET_A)
    assert deliver(live.engine, T0, {URL_A: receiver}) == {"delivered": 1, "retry": 0, "failed": 0}

    [request] = receiver.requests
    key = f"deviation.opened.{dev['id']}.v1.{sub['id']}"
    assert request.method == "POST"
    assert str(request.url) == URL_A
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Trialbridge-Event"] == "deviation.opened"
    assert request.headers["Idempotency-Key"] == key
    assert request.headers["X-Trialbridge-Delivery"] == key
    timestamp = request.headers["X-Trialbridge-Timestamp"]
    assert FROZEN_INSTANT.timestamp() <= int(timestamp) <= time.time()  # signed on the test clock
    mac = hmac.new(SECRET_A.encode(), f"{timestamp}.".encode() + request.content, hashlib.sha256)
    assert request.headers["X-Trialbridge-Signature"] == f"sha256={mac.hexdigest()}"
    assert not verify("another-secret-entirely", request)
    tampered = httpx.Request(
        "POST",
        URL_A,
        headers=request.headers,
        content=request.content.replace(b"Day 31", b"Day 21"),
    )
    assert not verify(SECRET_A, tampered)
    assert json.loads(request.content) == {
        "id": f"deviation.opened.{dev['id']}.v1",
        "type": "deviation.opened",
        "deviation": dev,
    }
    assert receiver.effects == {key: json.loads(request.content)}

    [row] = outbox(live.engine)
    assert (row.delivered_at, row.attempts, row.last_error) == (T0, 1, None)
    assert deliver(live.engine, T0 + dt.timedelta(days=1), {URL_A: receiver}) == NOTHING
    assert len(receiver.requests) == 1


def test_retries_after_500_and_timeout_with_backoff(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """A failing receiver is retried later (10 s, then 20 s), never early, with the same key."""
    subscribe(api, URL_A, ["deviation.opened"], SECRET_A)
    put_resources(fhir, *enrolled("p1"))
    receiver = Receiver(
        SECRET_A, script=[httpx.Response(500), httpx.TimeoutException("read timed out")]
    )
    hooks = {URL_A: receiver}

    assert deliver(live.engine, T0, hooks) == {"delivered": 0, "retry": 1, "failed": 0}
    [row] = outbox(live.engine)
    assert (row.attempts, row.next_attempt_at, row.last_error) == (
        1,
        T0 + dt.timedelta(seconds=10),
        "HTTP 500",
    )
    assert (row.delivered_at, row.failed) == (None, False)
    assert deliver(live.engine, T0 + dt.timedelta(seconds=9), hooks) == NOTHING
    assert len(receiver.requests) == 1

    second = T0 + dt.timedelta(seconds=10)
    assert deliver(live.engine, second, hooks) == {"delivered": 0, "retry": 1, "failed": 0}
    [row] = outbox(live.engine)
    assert (row.attempts, row.next_attempt_at, row.last_error) == (
        2,
        second + dt.timedelta(seconds=20),
        "TimeoutException: read timed out",
    )
    assert deliver(live.engine, second + dt.timedelta(seconds=19), hooks) == NOTHING
    assert len(receiver.requests) == 2

    third = second + dt.timedelta(seconds=20)
    assert deliver(live.engine, third, hooks) == {"delivered": 1, "retry": 0, "failed": 0}
    [row] = outbox(live.engine)
    assert (row.attempts, row.delivered_at, row.failed) == (3, third, False)
    assert len(set(receiver.keys())) == 1
    assert len(receiver.requests) == 3
    assert len(receiver.effects) == 1


def test_gives_up_after_max_attempts(live: Live, api: httpx.Client, fhir: httpx.Client) -> None:
    """A receiver that never recovers is tried max_attempts times, then marked failed and left alone."""
    subscribe(api, URL_A, ["deviation.opened"], SECRET_A)
    put_resources(fhir, *enrolled("p1"))
    receiver = Receiver(SECRET_A, script=[httpx.Response(503) for _ in range(10)])
    hooks = {URL_A: receiver}
    assert deliver(live.engine, T0, hooks) == {"delivered": 0, "retry": 1, "failed": 0}
    assert deliver(live.engine, T0 + dt.timedelta(seconds=10), hooks)["retry"] == 1
    last = deliver(live.engine, T0 + dt.timedelta(seconds=30), hooks)
    assert last == {"delivered": 0, "retry": 0, "failed": 1}
    [row] = outbox(live.engine)
    assert (row.attempts, row.failed, row.delivered_at, row.last_error) == (
        3,
        True,
        None,
        "HTTP 503",
    )
    assert deliver(live.engine, T0 + dt.timedelta(days=30), hooks) == NOTHING
    assert len(receiver.requests) == 3


def test_url_is_checked_again_at_delivery(
    live: Live, api: httpx.Client, fhir: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the receiver's name later resolves inside the network, nothing is sent there."""
    subscribe(api, URL_A, ["deviation.opened"], SECRET_A)
    put_resources(fhir, *enrolled("p1"))
    monkeypatch.setitem(DNS, HOST, ["10.9.8.7"])
    receiver = Receiver(SECRET_A)
    assert deliver(live.engine, T0, {URL_A: receiver}) == {"delivered": 0, "retry": 1, "failed": 0}
    assert receiver.requests == []
    [row] = outbox(live.engine)
    assert row.last_error == (
        f"url refused: {HOST} resolves to an internal address (10.9.8.7); "
        "set TRIALBRIDGE_WEBHOOK_ALLOW_PRIVATE=true to allow it"
    )


REBOUND = "hooks.example"  # a receiver's name in the pinning tests


def pinned_delivery_setup(
    api: httpx.Client, fhir: httpx.Client, monkeypatch: pytest.MonkeyPatch, url: str
) -> list[str]:
    """Subscribe `url` (its name public when checked), queue one notification; from then on the
    name resolves to 127.0.0.1. The hosts looked up at delivery, in order."""
    monkeypatch.setitem(DNS, REBOUND, [PUBLIC])
    subscribe(api, url, ["deviation.opened"], SECRET_A)
    put_resources(fhir, *enrolled("p1"))
    monkeypatch.setitem(DNS, REBOUND, ["127.0.0.1"])
    asked: list[str] = []

    def counting(host: str) -> list[str]:
        asked.append(host)
        return fake_dns(host)

    monkeypatch.setattr(outbound, "resolve_host", counting)
    return asked


def signed_arrival(arrival: Arrival) -> bool:
    """The receiver's check of a real request's signature."""
    request = httpx.Request(
        "POST", "http://receiver", headers=arrival.headers, content=arrival.body
    )
    return verify(SECRET_A, request)


def test_delivery_connects_to_the_address_it_checked_with_the_host_name(
    live: Live, api: httpx.Client, fhir: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One resolution per delivery and the connection goes to its answer (here this machine, with
    internal receivers allowed), while `Host` names the URL's host: the HTTP client never
    resolves the name again. A checked address that refuses falls to the next one checked."""
    with receiving() as here:
        asked = pinned_delivery_setup(api, fhir, monkeypatch, here.url(REBOUND))
        monkeypatch.setitem(DNS, REBOUND, ["127.0.0.2", "127.0.0.1"])  # nothing on .2's port
        allowed = dataclasses.replace(POLICY, allow_private=True)
        assert deliver_due(live.engine, allowed, now=lambda: T0) == {
            "delivered": 1,
            "retry": 0,
            "failed": 0,
        }
    assert asked == [REBOUND]
    [arrival] = here.arrivals
    assert arrival.headers["host"] == f"{REBOUND}:{here.port}"
    assert arrival.path == "/hooks"
    assert arrival.key == outbox(live.engine)[0].idempotency_key
    assert signed_arrival(arrival)


def test_a_name_rebound_after_the_check_is_not_followed(
    live: Live, api: httpx.Client, fhir: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name is public when checked, 127.0.0.1 when resolved again. Delivery
    dials the public address it checked, and nothing reaches the internal service listening on
    the URL's port at 127.0.0.1."""
    with receiving() as internal, receiving() as public:
        asked = pinned_delivery_setup(api, fhir, monkeypatch, internal.url(REBOUND))
        monkeypatch.setitem(DNS, REBOUND, [PUBLIC])  # what the check sees
        real_connect = socket.create_connection
        dialed: list[tuple[str, int]] = []

        def network(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
            """The network as this machine sees it: the public address routes to `public`; the
            name itself, resolved by the system now, is 127.0.0.1 (the rebinding)."""
            host, port = address[0], address[1]
            dialed.append((host, port))
            routed = ("127.0.0.1", public.port) if host == PUBLIC else ("127.0.0.1", port)
            return real_connect(routed, *args, **kwargs)

        monkeypatch.setattr(socket, "create_connection", network)
        assert deliver_due(live.engine, POLICY, now=lambda: T0) == {
            "delivered": 1,
            "retry": 0,
            "failed": 0,
        }
        monkeypatch.setattr(socket, "create_connection", real_connect)
    assert asked == [REBOUND]
    assert dialed == [(PUBLIC, internal.port)]
    assert internal.arrivals == []
    [arrival] = public.arrivals
    assert arrival.headers["host"] == f"{REBOUND}:{internal.port}"
    assert signed_arrival(arrival)


def test_https_delivery_checks_the_host_names_certificate_at_the_pinned_address(
    live: Live,
    api: httpx.Client,
    fhir: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Connected to an address, TLS still asks for the URL's name (SNI) and verifies the
    certificate against it: one for another name is refused."""
    good = issue_certificate(tmp_path, REBOUND)
    monkeypatch.setenv("SSL_CERT_FILE", str(good.ca_file))  # the deployment trusts this CA
    allowed = dataclasses.replace(POLICY, allow_private=True)
    with receiving(tls=good.server) as here:
        asked = pinned_delivery_setup(api, fhir, monkeypatch, here.url(REBOUND, scheme="https"))
        assert deliver_due(live.engine, allowed, now=lambda: T0)["delivered"] == 1
    assert asked == [REBOUND]
    assert here.server_names == [REBOUND]
    [arrival] = here.arrivals
    assert arrival.headers["host"] == f"{REBOUND}:{here.port}"
    assert signed_arrival(arrival)

    (tmp_path / "other").mkdir()
    other = issue_certificate(tmp_path / "other", "other.example")
    monkeypatch.setenv("SSL_CERT_FILE", str(other.ca_file))
    with live.engine.begin() as conn:
        conn.execute(text("UPDATE webhook_outbox SET delivered_at = NULL"))
    with receiving(tls=other.server) as impostor:
        with live.engine.begin() as conn:
            conn.execute(
                text("UPDATE webhook_subscription SET url = :u"),
                {"u": impostor.url(REBOUND, scheme="https")},
            )
        later = T0 + dt.timedelta(minutes=5)
        assert deliver_due(live.engine, allowed, now=lambda: later) == {
            "delivered": 0,
            "retry": 1,
            "failed": 0,
        }
    assert impostor.server_names == [REBOUND]
    assert impostor.arrivals == []
    [row] = outbox(live.engine)
    assert row.last_error.startswith("ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED]"), (
        row.last_error
    )


def test_one_undeliverable_row_does_not_sink_the_batch(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """A URL the HTTP client refuses is that row's failure; the others are delivered and recorded."""
    bad = subscribe(api, URL_B, ["deviation.opened"])
    subscribe(api, URL_A, ["deviation.opened"], SECRET_A)
    with live.engine.begin() as conn:  # stored before URLs were checked this strictly
        conn.execute(
            text("UPDATE webhook_subscription SET url = :url WHERE id = :id"),
            {"url": f"https://{HOST}:http/hooks", "id": bad["id"]},
        )
    put_resources(fhir, *enrolled("p1"))
    receiver = Receiver(SECRET_A)
    assert deliver(live.engine, T0, {URL_A: receiver}) == {"delivered": 1, "retry": 1, "failed": 0}
    assert len(receiver.effects) == 1
    rows = {r.subscription_id: r for r in outbox(live.engine)}
    assert rows[bad["id"]].last_error.startswith("url refused: the webhook url is malformed")
    assert rows[bad["id"]].attempts == 1


def test_nothing_is_lost_across_a_restart(backend: str, new_database: Any) -> None:
    """Committed with nothing delivering; a new process (fresh engine and app) still delivers it."""
    settings = Settings(database_url=str(new_database(backend)), webhook_interval_seconds=0)
    server, thread, base = start_server(settings)
    try:
        with httpx.Client(base_url=f"{base}/api/v1", timeout=60) as client:
            sub = subscribe(client, URL_A, ["deviation.opened"], SECRET_A)
        with httpx.Client(base_url=f"{base}/fhir", headers=FHIR_JSON, timeout=60) as client:
            put_resources(client, *enrolled("p1"))
    finally:
        stop_server(server, thread)  # its engine is disposed at shutdown

    # A new app on the same database, and a dispatcher thread of a new engine, like a new process.
    server, thread, base = start_server(settings)
    engine = make_engine(settings)
    receiver = Receiver(SECRET_A)
    try:
        with httpx.Client(base_url=f"{base}/api/v1", timeout=60) as client:
            dev = the_deviation(client)
        with respx.mock(assert_all_called=False) as router:
            router.post(URL_A).mock(side_effect=receiver)
            dispatcher = Dispatcher(engine, POLICY, interval_seconds=0.05)
            dispatcher.start()
            deadline = time.monotonic() + 20
            while not receiver.effects and time.monotonic() < deadline:
                time.sleep(0.05)
            dispatcher.stop()
        assert len(receiver.requests) == 1
        assert list(receiver.effects) == [f"deviation.opened.{dev['id']}.v1.{sub['id']}"]
        [row] = outbox(engine)
        assert row.attempts == 1
        assert row.delivered_at is not None
    finally:
        stop_server(server, thread)
        engine.dispose()


def test_two_processes_behind_a_slow_receiver_deliver_each_notification_once(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """Each notification is leased just before its own POST: a batch leased at once expired
    behind a slow receiver, and the other process sent the rest again (20 sent 32 times)."""
    subscribe(api, URL_A, ["deviation.opened"], SECRET_A)
    for n in range(6):
        put_resources(fhir, *enrolled(f"p{n}"))
    assert len(outbox(live.engine)) == 6
    receiver = Receiver(SECRET_A)

    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.3)  # each answer takes a while, a batch of six much longer than a lease
        return receiver(request)

    tight = dataclasses.replace(POLICY, timeout_seconds=1, lease_margin_seconds=0)

    def worker(_: int) -> None:  # a process's dispatcher, passing until nothing is left
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            r.delivered_at is None for r in outbox(live.engine)
        ):
            deliver_due(live.engine, tight)
            time.sleep(0.05)

    with respx.mock(assert_all_called=False) as router:
        router.post(URL_A).mock(side_effect=slow)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(worker, range(2)))
    assert sorted(receiver.keys()) == sorted(r.idempotency_key for r in outbox(live.engine))
    assert len(receiver.requests) == 6  # each once: none sent by both
    assert all(r.delivered_at is not None and r.attempts == 1 for r in outbox(live.engine))


def test_a_notification_queued_before_evidence_ids_is_sent_without_fhir_ids(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """An outbox row written by the previous release cites FHIR references: sealed on sending."""
    subscribe(api, URL_A, ["deviation.opened"], SECRET_A)
    put_resources(fhir, *enrolled("p1"))
    [row] = outbox(live.engine)
    old = json.loads(row.payload)
    old["deviation"]["evidence"] = [
        {
            "resource_type": "Procedure",
            "id": "p1-surgery",
            "version": "1",
            "reference": "Procedure/p1-surgery/_history/1",
        }
    ]
    with live.engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_outbox SET payload = :p WHERE pk = :pk"),
            {"p": json.dumps(old), "pk": row.pk},
        )
    receiver = Receiver(SECRET_A)
    assert deliver(live.engine, T0, {URL_A: receiver})["delivered"] == 1
    [sent] = receiver.requests
    assert b"p1-surgery" not in sent.content
    [evidence] = json.loads(sent.content)["deviation"]["evidence"]
    assert set(evidence) == {"evidence_id", "resource_type"}
    assert cited(api, NCT, [evidence])[0]["reference"] == "Procedure/p1-surgery/_history/1"


def test_redelivery_after_a_crash_has_one_effect(
    live: Live, api: httpx.Client, fhir: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the POST but before recording it means a second POST, with the same key."""
    subscribe(api, URL_A, ["deviation.opened"], SECRET_A)
    put_resources(fhir, *enrolled("p1"))
    receiver = Receiver(SECRET_A)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("process killed")

    with monkeypatch.context() as patch:
        patch.setattr(webhook_outbox, "mark_delivered", crash)
        with pytest.raises(RuntimeError, match="process killed"):
            deliver(live.engine, T0, {URL_A: receiver})
    assert len(receiver.requests) == 1
    [row] = outbox(live.engine)
    assert (row.delivered_at, row.attempts, row.next_attempt_at) == (None, 0, T0 + LEASE)

    # Leased: no one sends it again until the lease ends, then it goes out once more.
    assert deliver(live.engine, T0 + dt.timedelta(seconds=31), {URL_A: receiver}) == NOTHING
    done = deliver(live.engine, T0 + LEASE, {URL_A: receiver})
    assert done == {"delivered": 1, "retry": 0, "failed": 0}
    assert len(receiver.requests) == 2
    assert receiver.keys()[0] == receiver.keys()[1]
    assert len(receiver.effects) == 1  # the receiver's dedupe by Idempotency-Key

    # The same by hand: forget that it was delivered, deliver again: same key, still one effect.
    with live.engine.begin() as conn:
        conn.execute(text("UPDATE webhook_outbox SET delivered_at = NULL"))
    assert deliver(live.engine, T0 + dt.timedelta(minutes=5), {URL_A: receiver})["delivered"] == 1
    assert len(set(receiver.keys())) == 1
    assert len(receiver.requests) == 3
    assert len(receiver.effects) == 1


def test_a_row_in_flight_is_not_sent_by_a_second_worker(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """The claim is committed before the POST, so a worker running meanwhile finds nothing due."""
    subscribe(api, URL_A, ["deviation.opened"], SECRET_A)
    put_resources(fhir, *enrolled("p1"))
    receiver = Receiver(SECRET_A)
    meanwhile: list[dict[str, int]] = []

    def slow_receiver(request: httpx.Request) -> httpx.Response:
        meanwhile.append(deliver_due(live.engine, POLICY, now=lambda: T0 + dt.timedelta(seconds=1)))
        return receiver(request)

    assert deliver(live.engine, T0, {URL_A: slow_receiver})["delivered"] == 1
    assert meanwhile == [NOTHING]
    assert len(receiver.requests) == 1


def test_eligibility_changed_is_delivered_when_the_overall_status_changes(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """Screening systems hear about a candidate's first verdict and each change, not every write."""
    subscribe(api, URL_C, ["eligibility.changed"], SECRET_A)
    # p9's diagnoses, confirmed but with no clinical status
    diagnosis = partial(kit.condition, patient="p9", onset="2025-01-15", clinical=None)

    put_resources(
        fhir, kit.patient(id="p9", gender="female"), diagnosis(id="p9-dx", code=kit.NSCLC)
    )
    live.now = NOW + dt.timedelta(days=1)
    put_resources(fhir, kit.patient(id="p9", gender="female", birth_date="1960"))
    live.now = NOW + dt.timedelta(days=2)
    put_resources(fhir, diagnosis(id="p9-ra", code=kit.RHEUMATOID_ARTHRITIS))
    assert [r.event_type for r in outbox(live.engine)] == ["eligibility.changed"] * 2

    receiver = Receiver(SECRET_A)
    assert deliver(live.engine, T0 + dt.timedelta(days=3), {URL_C: receiver})["delivered"] == 2
    bodies = [json.loads(r.content) for r in receiver.requests]
    subject_id = bodies[0]["subject_id"]
    assert subject_id.startswith("S-")
    assert [(b["previous"], b["overall"], b["as_of"]) for b in bodies] == [
        (None, "indeterminate", "2025-06-30"),
        ("indeterminate", "ineligible", "2025-07-02"),
    ]
    for body in bodies:
        assert body["type"] == "eligibility.changed"
        assert body["study_id"] == NCT
        assert body["subject_id"] == subject_id
    assert [r.headers["X-Trialbridge-Event"] for r in receiver.requests] == [
        "eligibility.changed"
    ] * 2
    assert all(verify(SECRET_A, r) for r in receiver.requests)


def test_subscriptions_with_similar_ids_each_get_their_own_eligibility_row(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """Long event ids must not make two subscriptions' keys collide (which would fail the write)."""
    with Session(live.engine) as session, session.begin():
        for n in (1, 2):
            webhook_outbox.create_subscription(
                session,
                {
                    "id": f"SUB-0123456789ab000{n}",
                    "url": URL_C,
                    "events": '["eligibility.changed"]',
                    "secret": SECRET_A,
                    "created_at": NOW,
                },
            )
    live.now = dt.datetime(2025, 6, 30, 12, 0, 0, 123000, tzinfo=dt.UTC)  # like utcnow()
    put_resources(
        fhir,
        kit.patient(id="p9"),
        kit.condition(
            id="p9-dx",
            patient="p9",
            code=kit.NSCLC,
            onset="2025-01-15",
            clinical=None,
            verification=None,
        ),
    )
    rows = outbox(live.engine)
    subs = ["SUB-0123456789ab0001", "SUB-0123456789ab0002"]
    assert [r.subscription_id for r in rows] == subs
    event_id = json.loads(rows[0].payload)["id"]
    assert re.fullmatch(r"eligibility\.changed\.S-[A-Z2-7]{16}\.[0-9a-f]{32}", event_id)
    assert len(event_id) == 71  # + ".SUB-…" is 92: more than the column's 80
    assert [r.idempotency_key for r in rows] == [
        event_id[:47] + "." + hashlib.sha256(f"{event_id}.{sub}".encode()).hexdigest()[:32]
        for sub in subs
    ]


def test_deleting_a_subscription_drops_its_pending_notifications(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """After DELETE nothing more goes to that receiver, including what was already queued."""
    a = subscribe(api, URL_A, ["deviation.opened", "deviation.resolved"], SECRET_A)
    b = subscribe(api, URL_B, ["deviation.opened", "deviation.resolved"], SECRET_A)
    put_resources(fhir, *enrolled("p1"))
    receiver_a, receiver_b = Receiver(SECRET_A), Receiver(SECRET_A)
    hooks = {URL_A: receiver_a, URL_B: receiver_b}
    assert deliver(live.engine, T0, hooks)["delivered"] == 2

    live.now = NOW + dt.timedelta(hours=1)
    put_resources(
        fhir, surgery("p1", "2025-03-29")
    )  # resolves the deviation: one row each, pending
    pending = [(r.subscription_id, r.event_type) for r in outbox(live.engine) if not r.delivered_at]
    assert sorted(pending) == sorted(
        [(a["id"], "deviation.resolved"), (b["id"], "deviation.resolved")]
    )

    assert api.delete(f"/subscriptions/{a['id']}").status_code == 204
    left = [(r.subscription_id, r.event_type, r.delivered_at is None) for r in outbox(live.engine)]
    assert sorted(left) == sorted(
        [
            (a["id"], "deviation.opened", False),  # already delivered: kept as a record
            (b["id"], "deviation.opened", False),
            (b["id"], "deviation.resolved", True),
        ]
    )
    assert deliver(live.engine, T0 + dt.timedelta(hours=2), hooks)["delivered"] == 1
    assert [r.headers["X-Trialbridge-Event"] for r in receiver_a.requests] == ["deviation.opened"]
    assert [r.headers["X-Trialbridge-Event"] for r in receiver_b.requests] == [
        "deviation.opened",
        "deviation.resolved",
    ]


def test_delivery_waits_for_the_schema_without_failing(
    backend: str, new_database: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Before the release step migrates: one warning, no failing passes, before or after it."""
    engine = make_engine(Settings(database_url=str(new_database(backend))))
    try:
        with caplog.at_level(logging.WARNING, logger="service.notifications.webhooks"):
            dispatcher = Dispatcher(engine, POLICY, interval_seconds=0.02)
            dispatcher.start()
            time.sleep(0.3)
            migrate.upgrade(engine)
            time.sleep(0.5)  # ~25 passes on the migrated schema
            dispatcher.stop()
        # other threads of the process (the cohort refresher) may log too: only delivery's lines
        assert [
            (r.levelname, r.getMessage())
            for r in caplog.records
            if r.name == "service.notifications.webhooks"
        ] == [
            (
                "WARNING",
                "webhook delivery waits for the schema: at revision none, "
                f"this release needs {migrate.head_revision()}",
            )
        ]
    finally:
        engine.dispose()
