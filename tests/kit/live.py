"""A live app of a test module's own, whose derivation clock the tests set (deviations, webhooks)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from sqlalchemy import Engine

from service.derivation.refresh import Derivation
from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON, clear_store, start_server, stop_server


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
def live_app(database_url: str, now: dt.datetime) -> Iterator[Live]:
    """The real app over HTTP with webhook delivery off and "now" under the test's control."""
    settings = Settings(database_url=database_url, webhook_interval_seconds=0)
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
