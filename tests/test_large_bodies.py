"""The per-process budget of large bodies, over real HTTP on SQLite and PostgreSQL.

One slot, a 64 KiB threshold and a 0.5 s wait: a first large transaction holds the slot while its
body trickles in (its client sends half, then waits for the test), so what the others get is
decided, not raced.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from api.large_bodies import LargeBodyBudget
from service.infra.settings import Settings
from tests.conftest import clear_store, counts
from tests.kit.fhir import patient, put_entry, transaction
from tests.kit.live import Served, served
from tests.kit.store import store_counts

THRESHOLD = 64 * 1024
FHIR = {"content-type": "application/fhir+json", "accept": "application/fhir+json"}


@pytest.fixture
def server(database_url: str, engine: Engine) -> Iterator[Served]:
    """The app with one large-body slot, on an empty store."""
    clear_store(engine)
    settings = Settings(
        database_url=database_url,
        large_body_bytes=THRESHOLD,
        large_body_slots=1,
        large_body_wait_seconds=0.5,
    )
    with served(settings) as running:
        yield running


def large_transaction(tag: str, patients: int = 400) -> bytes:
    """A transaction of `patients` Patients (ids `tag-n`): well over the threshold."""
    body = transaction(
        *(put_entry(patient(id=f"{tag}-{n}", name=[{"text": "x" * 200}])) for n in range(patients))
    )
    assert len(body) > 2 * THRESHOLD
    return body


def budget(server: Served) -> LargeBodyBudget:
    found = server.app.state.large_bodies
    assert isinstance(found, LargeBodyBudget)
    return found


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class SlowPost(threading.Thread):
    """POST a body in two halves (chunked), the second only once `go` is set."""

    def __init__(self, url: str, body: bytes) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.go = threading.Event()
        self.response: httpx.Response | None = None

    def _pieces(self) -> Iterator[bytes]:
        half = len(self.body) // 2
        yield self.body[:half]
        self.go.wait(30)
        yield self.body[half:]

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            self.response = client.post(self.url, content=self._pieces(), headers=FHIR)


def test_one_slot_two_large_posts(server: Served, engine: Engine) -> None:
    first = SlowPost(f"{server.url}/fhir", large_transaction("first"))
    first.start()
    wait_for(lambda: budget(server).in_use == 1, "the first post to take the slot")
    with httpx.Client(base_url=f"{server.url}/fhir", headers=FHIR, timeout=60) as client:
        started = time.monotonic()
        refused = client.post("", content=large_transaction("second"))
        waited = time.monotonic() - started
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        outcome = refused.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert [i["code"] for i in outcome["issue"]] == ["throttled"]
        assert "nothing was written" in outcome["issue"][0]["diagnostics"]
        assert waited >= 0.5  # it waited for a slot before it was refused
        assert counts(engine) == store_counts()  # the first is still arriving: nothing yet

        small = client.put("/Patient/small", content=json.dumps(patient(id="small")))
        assert small.status_code == 201, small.text  # a small body takes no slot

        first.go.set()
        first.join(60)
        assert first.response is not None
        assert first.response.status_code == 200, first.response.text
        assert budget(server).in_use == 0
        assert counts(engine)["fhir_resource"] == 401  # the first's 400 and the small one

        again = client.post("", content=large_transaction("second"))
        assert again.status_code == 200, again.text
    assert counts(engine)["fhir_resource"] == 801
    assert budget(server).in_use == 0


def test_a_declared_large_body_takes_the_slot_before_its_first_byte(server: Served) -> None:
    """With a Content-Length over the threshold, the slot is taken when the route starts reading,
    and the JSON API answers in its own error shape."""
    first = SlowPost(f"{server.url}/fhir", large_transaction("held"))
    first.start()
    wait_for(lambda: budget(server).in_use == 1, "the first post to take the slot")
    big = {
        "url": "https://example.org/hook",
        "events": ["deviation.created"],
        "pad": "x" * THRESHOLD,
    }
    refused = httpx.post(f"{server.url}/api/v1/subscriptions", json=big, timeout=60)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "server_busy"
    first.go.set()
    first.join(60)
    assert first.response is not None
    assert first.response.status_code == 200


def test_a_streamed_import_takes_no_slot(server: Served, engine: Engine) -> None:
    first = SlowPost(f"{server.url}/fhir", large_transaction("held"))
    first.start()
    wait_for(lambda: budget(server).in_use == 1, "the first post to take the slot")
    lines = b"\n".join(
        json.dumps(patient(id=f"line-{n}", name=[{"text": "y" * 200}])).encode() for n in range(400)
    )
    assert len(lines) > THRESHOLD
    imported = httpx.post(
        f"{server.url}/fhir/$import",
        content=lines,
        headers={"content-type": "application/fhir+ndjson"},
        timeout=60,
    )
    assert imported.status_code == 200, imported.text
    assert [e["response"]["status"] for e in imported.json()["entry"]] == ["201 Created"] * 400
    first.go.set()
    first.join(60)
    assert first.response is not None
    assert first.response.status_code == 200
    assert counts(engine)["fhir_resource"] == 800
