"""Shared fixtures: each test runs on a real SQLite file and a real PostgreSQL, over real HTTP."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from sqlalchemy import Engine, text

from api.app import create_app
from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.repositories import fhir_versions
from tests.kit.clock import check_on_frozen_days, frozen

# The tests of everything but access control run their servers on loopback with authentication
# off, the one configuration where TRIALBRIDGE_AUTH_DISABLED is allowed; tests/test_auth.py and
# the quickstart test run with it on (they pass auth_disabled=False, or drop the variable).
os.environ["TRIALBRIDGE_AUTH_DISABLED"] = "true"

TEST_DATA = Path(__file__).resolve().parent / "data"  # real FHIR data: see data/README.md
FIXTURES = Path(__file__).resolve().parent / "fixtures"
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
STORE_TABLES = (
    "import_spool",
    "bulk_job_error",
    "bulk_job",
    "pull_job",
    "source_state",
    "signing_key",
    "client_assertion",
    "api_client",
    "webhook_outbox",
    "webhook_subscription",
    "deviation_history",
    "deviation",
    "eligibility_result",
    "study_subject",
    "trial_event_dependency",
    "trial_event",
    "fhir_identifier",
    "fhir_reference",
    "fhir_resource_version",
    "fhir_resource",
)
AUDIT_TABLES = ("audit_record", "audit_entity")
# The cohort read model, kept by each server's background refresher: cleared with the store (its
# leases too, so a computation in flight over the old data is discarded), counted by its own tests.
# The lease first: a background refresher storing a snapshot holds its lease row, then writes the
# snapshot tables; emptying them in the same order cannot deadlock with it (PostgreSQL did).
COHORT_TABLES = (
    "cohort_lease",
    "cohort_figure",
    "cohort_listing",
    "cohort_snapshot",
    "study_change",
)
FHIR_JSON = {"content-type": "application/fhir+json"}


@pytest.fixture(scope="session", autouse=True)
def frozen_clock() -> Iterator[None]:
    """The whole session, its servers and databases, runs at the kit's frozen instant in New York."""
    with frozen():
        yield


@pytest.fixture(autouse=True)
def on_frozen_days(frozen_clock: None) -> None:
    """Each test starts on the frozen days: a guard, not a reset, since time only moves on."""
    check_on_frozen_days()


def _admin_connect() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # fail loudly: PostgreSQL is part of the test bed
        raise RuntimeError(
            f"PostgreSQL is required for the tests and is not reachable at {POSTGRES_ADMIN_URL}: "
            f"{exc}. Start it or set TEST_POSTGRES_URL."
        ) from exc


def _pg_url(dbname: str) -> str:
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def new_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Factory: a fresh, empty database URL of the given backend, dropped at the end."""
    created: list[str] = []

    def make(backend: str) -> str:
        name = f"tb_test_{uuid.uuid4().hex[:12]}"
        if backend == "sqlite":
            return f"sqlite:///{tmp_path_factory.mktemp('db') / (name + '.db')}"
        with _admin_connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _pg_url(name)

    yield make
    with _admin_connect() as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend under test; every dependent test runs on both."""
    return str(request.param)


@pytest.fixture(scope="session")
def database_url(backend: str, new_database: object) -> str:
    """A migrated database of the current backend, shared by the tests of this backend."""
    url = new_database(backend)  # type: ignore[operator]
    engine = make_engine(Settings(database_url=url))
    migrate.upgrade(engine)
    engine.dispose()
    return str(url)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    """A direct engine on the test database, for asserting what was (not) written."""
    eng = make_engine(Settings(database_url=database_url))
    yield eng
    eng.dispose()


@dataclass(frozen=True)
class LiveServer:
    """A uvicorn server running the real app on a loopback port."""

    url: str
    settings: Settings

    @property
    def fhir(self) -> str:
        """Base URL of the FHIR endpoint."""
        return f"{self.url}/fhir"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Start the app in uvicorn on a free loopback port; returns once it accepts requests."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def stop_server(server: uvicorn.Server, thread: threading.Thread) -> None:
    """Ask uvicorn to finish its requests and stop, and wait for its thread."""
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="session")
def server(database_url: str) -> Iterator[LiveServer]:
    """The app served over real HTTP on the current backend."""
    settings = Settings(database_url=database_url)
    srv, thread, url = start_server(settings)
    yield LiveServer(url, settings)
    stop_server(srv, thread)


def clear_store(engine: Engine) -> None:
    """Empty every store table (children first)."""
    with engine.begin() as conn:
        for table in STORE_TABLES + COHORT_TABLES:
            conn.execute(text(f"DELETE FROM {table}"))


def refuse_server_errors(client: httpx.Client) -> None:
    """Make any 5xx answer to this client fail the test that sent the request."""

    def check(response: httpx.Response) -> None:
        if response.status_code >= 500:
            response.read()
            raise AssertionError(
                f"{response.request.method} {response.request.url} -> "
                f"{response.status_code}: {response.text}"
            )

    client.event_hooks["response"].append(check)


@pytest.fixture
def fhir(server: LiveServer, engine: Engine) -> Iterator[httpx.Client]:
    """An HTTP client on /fhir of an empty store."""
    clear_store(engine)
    with httpx.Client(base_url=server.fhir, headers=FHIR_JSON, timeout=60) as client:
        yield client


@pytest.fixture
def api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    """A client on /api/v1 of an empty store (the `fhir` fixture empties it); a test module with
    an `api` of its own (another server, a cohort loaded first) overrides this one."""
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=60) as client:
        yield client


def counts(engine: Engine) -> dict[str, int]:
    """Rows in every store table (the audit trail and the cohort snapshots, which change on their
    own, have their own tests)."""
    from sqlmodel import Session

    with Session(engine) as session:
        found = fhir_versions.table_counts(session)
    return {t: n for t, n in found.items() if t not in AUDIT_TABLES + COHORT_TABLES}
