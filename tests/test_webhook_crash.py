"""A server process killed with a webhook delivery in flight: at least once, with a stable key.

Two real `trialbridge serve` processes deliver one outbox to a real receiver on 127.0.0.1 (a real
socket: it stands for the trial system). The receiver holds the first requests unanswered, so each
process has one delivery in flight; one process is then killed with SIGKILL. The survivor sends
everything else, and, once the dead process's lease has run out, the notification it was sending:
that one arrives twice with the same idempotency key (the receiver dedupes by it), every other
exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.notifications.webhooks import policy_from, sign
from service.repositories import webhook_outbox
from tests.conftest import FHIR_JSON
from tests.kit import fhir as kit
from tests.kit.live import running_servers
from tests.kit.receiver import Arrival, receiving

NOTIFICATIONS = 6
SECRET = "receiver-b-shared-secret-0002"
DELIVERY = {
    "TRIALBRIDGE_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
    "TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS": "0.1",
    # Ample for the held requests (held well under a second unless the machine is very busy);
    # the dead process's lease ends 10 + 1 s after it claimed its notification.
    "TRIALBRIDGE_WEBHOOK_TIMEOUT_SECONDS": "10",
    "TRIALBRIDGE_WEBHOOK_LEASE_MARGIN_SECONDS": "1",
}


def candidates(count: int) -> bytes:
    """One transaction of `count` patients each with an NSCLC diagnosis: each patient's first
    eligibility verdict is one `eligibility.changed` notification, all committed at once."""
    resources = []
    for n in range(count):
        resources += [
            kit.patient(id=f"k{n}", gender="female"),
            kit.condition(
                id=f"k{n}-dx", patient=f"k{n}", code=kit.NSCLC, onset="2025-01-15", clinical=None
            ),
        ]
    return kit.put_all(*resources)


def signed(arrival: Arrival) -> bool:
    """The receiver's signature check."""
    timestamp = arrival.headers["x-trialbridge-timestamp"]
    return sign(SECRET, timestamp, arrival.body) == arrival.headers["x-trialbridge-signature"]


def test_the_lease_margin_is_a_setting() -> None:
    """What the processes below are configured with reaches the delivery policy (30 s unset)."""
    assert policy_from(Settings()).lease_margin_seconds == 30
    assert policy_from(Settings(webhook_lease_margin_seconds=1)).lease_margin_seconds == 1
    with pytest.raises(ValueError, match="greater than 0"):
        Settings(webhook_lease_margin_seconds=0)


@pytest.mark.slow
def test_a_process_killed_mid_delivery_costs_one_repeat_with_the_same_key(
    backend: str, new_database: Any, tmp_path: Path
) -> None:
    """SIGKILL with a delivery in flight: every notification arrives, the one in flight twice
    with one key, the others once; nothing is left undelivered."""
    database_url = str(new_database(backend))
    engine = make_engine(Settings(database_url=database_url))
    migrate.upgrade(engine)  # once, before two processes start on it
    try:
        with (
            receiving(delay_seconds=0.1) as receiver,
            running_servers(database_url, 2, tmp_path, DELIVERY) as (doomed, survivor),
        ):
            receiver.hold()
            with httpx.Client(base_url=survivor.url, timeout=60) as client:
                created = client.post(
                    "/api/v1/subscriptions",
                    json={
                        "url": receiver.url(),
                        "events": ["eligibility.changed"],
                        "secret": SECRET,
                    },
                )
                assert created.status_code == 201, created.text
                written = client.post("/fhir", content=candidates(NOTIFICATIONS), headers=FHIR_JSON)
                assert written.status_code == 200, written.text

            # One delivery in flight per process (each sends one at a time): kill one of them.
            in_flight = receiver.wait_for(lambda arrived: len(arrived) == 2, seconds=60)
            assert len({a.key for a in in_flight}) == 2
            doomed.process.kill()
            doomed.process.wait(timeout=30)
            arrived = receiver.wait_for(lambda got: any(a.abandoned for a in got), seconds=30)
            [lost] = [a for a in arrived if a.abandoned]
            receiver.release()

            deadline = time.monotonic() + 120
            while not all(r.delivered_at is not None for r in _outbox(engine)):
                assert time.monotonic() < deadline, "the survivor did not deliver everything"
                time.sleep(0.2)
            assert survivor.process.poll() is None

        rows = _outbox(engine)
        assert len(rows) == NOTIFICATIONS
        keys = Counter(a.key for a in receiver.arrivals)
        assert set(keys) == {r.idempotency_key for r in rows}
        assert keys == {r.idempotency_key: 2 if r.idempotency_key == lost.key else 1 for r in rows}
        twice = [a for a in receiver.arrivals if a.key == lost.key]
        assert [a.abandoned for a in twice] == [True, False]
        assert twice[0].body == twice[1].body
        assert all(signed(a) for a in receiver.arrivals)
        assert [(r.attempts, r.last_error) for r in rows] == [(1, None)] * NOTIFICATIONS
    finally:
        engine.dispose()


def _outbox(engine: Any) -> list[Any]:
    with Session(engine) as session:
        return webhook_outbox.outbox_state(session)


SLOW = {
    "TRIALBRIDGE_WEBHOOK_ALLOW_PRIVATE": "true",
    "TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS": "0.1",
    # a lease of 5 + 1 s: one process sending all 16 notifications one after the other behind a
    # receiver that takes 0.5 s each would outlast a lease taken for them at once
    "TRIALBRIDGE_WEBHOOK_TIMEOUT_SECONDS": "5",
    "TRIALBRIDGE_WEBHOOK_LEASE_MARGIN_SECONDS": "1",
}
SLOW_NOTIFICATIONS = 16


@pytest.mark.slow
def test_two_replicas_of_two_workers_behind_a_slow_receiver_deliver_each_notification_once(
    new_database: Any, tmp_path: Path
) -> None:
    """Issue 17: with `--workers 2` and a slow receiver, 20 notifications arrived 32 times.
    Four delivering processes (two replicas of `serve --workers 2`) on PostgreSQL: each arrives
    exactly once."""
    database_url = str(new_database("postgres"))
    engine = make_engine(Settings(database_url=database_url))
    migrate.upgrade(engine)
    try:
        with (
            receiving(delay_seconds=0.5) as receiver,
            running_servers(database_url, 2, tmp_path, SLOW, workers=2) as replicas,
        ):
            with httpx.Client(base_url=replicas[0].url, timeout=60) as client:
                created = client.post(
                    "/api/v1/subscriptions",
                    json={
                        "url": receiver.url(),
                        "events": ["eligibility.changed"],
                        "secret": SECRET,
                    },
                )
                assert created.status_code == 201, created.text
                written = client.post(
                    "/fhir", content=candidates(SLOW_NOTIFICATIONS), headers=FHIR_JSON
                )
                assert written.status_code == 200, written.text
            deadline = time.monotonic() + 120
            while not all(r.delivered_at is not None for r in _outbox(engine)):
                assert time.monotonic() < deadline, "the notifications were not all delivered"
                time.sleep(0.2)
            time.sleep(7)  # longer than a lease: a repeat sent by another process would be seen
            assert all(r.process.poll() is None for r in replicas)
        rows = _outbox(engine)
        assert len(rows) == SLOW_NOTIFICATIONS
        keys = Counter(a.key for a in receiver.arrivals)
        assert keys == {r.idempotency_key: 1 for r in rows}
        assert len(receiver.arrivals) == SLOW_NOTIFICATIONS
        assert all(signed(a) for a in receiver.arrivals)
        assert [(r.attempts, r.last_error) for r in rows] == [(1, None)] * SLOW_NOTIFICATIONS
    finally:
        engine.dispose()
