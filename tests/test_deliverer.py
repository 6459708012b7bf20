"""`trialbridge deliver --loop`: the deliverer process of the deploy files (deploy/), run for real.

The servers of a deployment leave webhook delivery to this process
(`TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS=0` on them); it must deliver what is due, over real HTTP
to a receiver on loopback, and stop cleanly on SIGTERM, which is how Docker and Kubernetes stop it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlmodel import Session

from service.infra import migrate
from service.infra.db import make_engine, session_scope
from service.infra.settings import Settings
from service.notifications import webhooks
from service.repositories import webhook_outbox

TRIALBRIDGE = str(Path(sys.executable).parent / "trialbridge")
SECRET = "deliverer-test-shared-secret-01"
QUEUED = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)  # due for the subprocess, which runs on real time


@dataclass
class Received:
    """What the receiver got: each request's headers and body."""

    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@contextmanager
def receiver() -> Iterator[tuple[str, Received]]:
    """A webhook receiver on a loopback port that answers 204 to every POST."""
    got = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()
            got.arrived.set()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads what arrived, not the server's log."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/trial", got
    finally:
        server.shutdown()
        server.server_close()


def deliverer_env(database_url: str, **settings: str) -> dict[str, str]:
    """The process environment with only these settings (none leaks in from the test run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALBRIDGE_")}
    return {**env, "DATABASE_URL": database_url, **settings}


def test_the_deliverer_delivers_until_sigterm_then_stops_cleanly(
    backend: str, new_database: Any, tmp_path: Path
) -> None:
    database_url = str(new_database(backend))
    engine = make_engine(Settings(database_url=database_url))
    migrate.upgrade(engine)  # the release step; the deliverer is told not to migrate
    log = tmp_path / "deliverer.log"
    try:
        with receiver() as (url, got):
            with session_scope(engine) as session:
                sub = webhooks.create(
                    session,
                    url=url,
                    events=["deviation.opened"],
                    secret=SECRET,
                    allow_private=True,
                )
                queued = webhook_outbox.enqueue(
                    session, "deviation.opened", "DEV-1.v1", {"deviation": {"id": "DEV-1"}}, QUEUED
                )
            assert queued == 1
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [TRIALBRIDGE, "deliver", "--loop"],
                    env=deliverer_env(
                        database_url,
                        TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS="0.2",
                        TRIALBRIDGE_WEBHOOK_ALLOW_PRIVATE="true",  # the receiver is on loopback
                        TRIALBRIDGE_AUTO_MIGRATE="false",
                    ),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                deadline = time.monotonic() + 120  # a guard against hanging, not a timing claim
                while not got.arrived.wait(0.2):
                    assert process.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                process.send_signal(signal.SIGTERM)
                returncode = process.wait(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        with Session(engine) as session:
            [row] = webhook_outbox.outbox_state(session)
    finally:
        engine.dispose()

    assert returncode == 0, log.read_text()
    [(headers, body)] = got.requests  # once: delivered, then nothing more was due
    assert headers["idempotency-key"] == f"DEV-1.v1.{sub.id}"
    assert headers["x-trialbridge-event"] == "deviation.opened"
    mac = hmac.new(
        SECRET.encode(), headers["x-trialbridge-timestamp"].encode() + b"." + body, hashlib.sha256
    )
    assert headers["x-trialbridge-signature"] == "sha256=" + mac.hexdigest()
    assert json.loads(body) == {
        "deviation": {"id": "DEV-1"},
        "id": "DEV-1.v1",
        "type": "deviation.opened",
    }
    assert row.delivered_at is not None
    assert row.attempts == 1
    messages = [json.loads(line)["message"] for line in log.read_text().splitlines()]
    assert "delivering webhook notifications every 0.2 s until SIGTERM" in messages
    assert "SIGTERM: finishing the delivery in progress, then stopping" in messages
    assert not any(m.startswith("Running upgrade") for m in messages)  # it left the schema alone


def test_the_deliverer_refuses_to_start_with_delivery_switched_off(tmp_path: Path) -> None:
    """`0` means "this process does not deliver": a deliverer told so would idle forever."""
    done = subprocess.run(
        [TRIALBRIDGE, "deliver", "--loop"],
        env=deliverer_env(
            f"sqlite:///{tmp_path}/var/trialbridge.db", TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS="0"
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "trialbridge: deliver --loop needs TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS above 0\n"
    )
    assert not (tmp_path / "var").exists()  # nothing was created
