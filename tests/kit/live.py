"""A live app of a test module's own, whose derivation clock the tests set (deviations, webhooks)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine

from service.derivation.refresh import Derivation
from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON, clear_store, free_port, start_server, stop_server


@dataclass
class Live:
    """A running app on its own database, and the clock its derivation reads."""

    url: str
    database_url: str
    engine: Engine
    derivation: Derivation
    now: dt.datetime


@dataclass(frozen=True)
class Served:
    """A running app, its URL, and an engine on its database for asserting what it stored."""

    url: str
    engine: Engine
    app: FastAPI


@contextmanager
def served(settings: Settings) -> Iterator[Served]:
    """The real app over HTTP with these settings; stopped and its engine disposed after."""
    server, thread, base = start_server(settings)
    engine = make_engine(settings)
    app = server.config.app
    assert isinstance(app, FastAPI)
    try:
        yield Served(base, engine, app)
    finally:
        stop_server(server, thread)
        engine.dispose()


@contextmanager
def live_app(database_url: str, now: dt.datetime, **more: Any) -> Iterator[Live]:
    """The real app over HTTP with webhook delivery off and "now" under the test's control;
    `more` are further settings (site_timezone="America/New_York" …)."""
    settings = Settings(database_url=database_url, webhook_interval_seconds=0, **more)
    with served(settings) as running:
        derivation = running.app.state.store.derivation
        assert isinstance(derivation, Derivation)
        state = Live(running.url, database_url, running.engine, derivation, now)
        derivation.clock = lambda: state.now  # the running app's "now" is the test's
        yield state


@contextmanager
def api_client(live: Live, now: dt.datetime) -> Iterator[httpx.Client]:
    """A client on /api/v1 of an emptied store (no subscriptions, no outbox), clock at `now`."""
    clear_store(live.engine)
    live.now = now
    with httpx.Client(base_url=f"{live.url}/api/v1", timeout=60) as client:
        yield client


@contextmanager
def fhir_client(live: Live) -> Iterator[httpx.Client]:
    """A client on /fhir of the same store."""
    with httpx.Client(base_url=f"{live.url}/fhir", headers=FHIR_JSON, timeout=60) as client:
        yield client


def clocked_fixtures(now: dt.datetime) -> tuple[Any, Any, Any]:
    """The `live`, `api` and `fhir` fixtures of a test module with an app of its own whose clock
    stands at `now`: `live, api, fhir = clocked_fixtures(NOW)` at the module's top level."""

    @pytest.fixture(scope="module")
    def live(backend: str, new_database: Any) -> Iterator[Live]:
        """The real app over HTTP with webhook delivery off and "now" under the test's control."""
        with live_app(str(new_database(backend)), now) as state:
            yield state

    @pytest.fixture
    def api(live: Live) -> Iterator[httpx.Client]:
        """A client on /api/v1 of an empty store, with the clock at `now`."""
        with api_client(live, now) as client:
            yield client

    @pytest.fixture
    def fhir(live: Live, api: httpx.Client) -> Iterator[httpx.Client]:
        """A client on /fhir of the same (emptied) store."""
        with fhir_client(live) as client:
            yield client

    return live, api, fhir


@dataclass(frozen=True)
class ServerProcess:
    """One running `trialbridge serve` process and its base URL."""

    process: subprocess.Popen[bytes]
    url: str


@contextmanager
def server_processes(database_url: str, count: int, spool: Path) -> Iterator[list[str]]:
    """`count` real `trialbridge serve` processes on one database (authentication off, loopback),
    each with its own audit journal under `spool`; their base URLs."""
    with running_servers(database_url, count, spool) as servers:
        yield [server.url for server in servers]


@contextmanager
def running_servers(
    database_url: str,
    count: int,
    spool: Path,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
) -> Iterator[list[ServerProcess]]:
    """As `server_processes`, with more `TRIALBRIDGE_*` settings in `env` (webhook delivery is off
    unless it sets an interval) and `serve --workers`, yielding the processes too (a test may kill
    one)."""
    started: list[ServerProcess] = []
    try:
        for n in range(count):
            port = free_port()
            variables = {
                **os.environ,
                "TRIALBRIDGE_DATABASE_URL": database_url,
                "TRIALBRIDGE_AUDIT_SPOOL_DIR": str(spool / str(n)),
                "TRIALBRIDGE_AUTH_DISABLED": "true",
                "TRIALBRIDGE_WEBHOOK_INTERVAL_SECONDS": "0",
                "TRIALBRIDGE_MODEL_CHECK_PROCESSES": "0",
                **(env or {}),
            }
            command = [
                str(Path(sys.executable).parent / "trialbridge"),
                "serve",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ]
            log_path = spool / f"server-{n}.log"  # read back when it fails to start
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    command, env=variables, stdout=log, stderr=subprocess.STDOUT
                )
            started.append(ServerProcess(process, f"http://127.0.0.1:{port}"))
        for n, server in enumerate(started):
            _wait_ready(server.process, server.url, spool / f"server-{n}.log")
        yield list(started)
    finally:
        for server in started:
            if server.process.poll() is None:
                server.process.terminate()
        for server in started:
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # e.g. a cohort computation still running
                server.process.kill()
                server.process.wait(timeout=30)  # reaped: no ResourceWarning for a live child


def _wait_ready(process: subprocess.Popen[bytes], base: str, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + 180  # several processes starting on a busy 2-core machine
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise AssertionError(
                f"the server at {base} exited with {process.returncode}; its log ends:\n{said}"
            )
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server at {base} did not become ready")
