"""Prometheus metrics: the counters dashboards and alerts read, labelled only by route, type and state.

No label carries a path, an id or a search value: routes are templates, resources are counted by
type. With `serve --workers N` every process writes its values to files in a folder shared by the
workers (`PROMETHEUS_MULTIPROC_DIR`, which `serve` sets for them: `TRIALBRIDGE_METRICS_DIR` or a
new temporary folder), so a scrape of any one of them sums all.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter as Tally
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.multiprocess import mark_process_dead
from sqlalchemy import Engine, event

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# seconds: a search or read takes milliseconds, a large transaction tens of seconds
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUESTS = Counter(
    "trialbridge_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "trialbridge_http_request_duration_seconds",
    "Time from the request's arrival to the end of its answer, by method and route template",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
RESOURCES_WRITTEN = Counter(
    "trialbridge_fhir_resources_written",
    "FHIR resource versions committed, by type and change (created, updated, deleted)",
    ["resource_type", "change"],
)
RESOURCES_REFUSED = Counter(
    "trialbridge_fhir_resources_refused",
    "FHIR resources refused (invalid, out of scope, conflicting), by type as sent",
    ["resource_type"],
)
DERIVATION_SECONDS = Histogram(
    "trialbridge_derivation_seconds",
    "Time a write spends mapping what it changed into trial events and re-evaluating subjects",
    buckets=_LATENCY_BUCKETS,
)
COHORT_COMPUTE_SECONDS = Histogram(
    "trialbridge_cohort_compute_seconds",
    "Time one background computation of a study's cohort outcomes took (load, compute, figures)",
    ["study"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
COHORT_COMPUTATIONS = Counter(
    "trialbridge_cohort_computations",
    "Cohort computations by outcome: stored, discarded (the lease was lost), failed",
    ["study", "outcome"],
)
WEBHOOK_DELIVERIES = Counter(
    "trialbridge_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, retry, failed)",
    ["outcome"],
)
CONNECTIONS_REFUSED = Counter(
    "trialbridge_connections_refused",
    "Requests answered 503 (and their connection closed) because the process was over its "
    "connection cap (TRIALBRIDGE_MAX_CONNECTIONS)",
)
# why a slow client was cut off: its head or body missed its deadline (408), or the rest of a body
# still trickled in after the answer (the connection is closed)
SLOW_CLIENT_REASONS = ("head_timeout", "body_timeout", "body_trickle")
SLOW_CLIENTS_CUT_OFF = Counter(
    "trialbridge_slow_clients_cut_off",
    "Connections cut off for slowness, by reason: head_timeout and body_timeout (answered 408), "
    "body_trickle (body still arriving after the answer, closed)",
    ["reason"],
)
for _reason in SLOW_CLIENT_REASONS:  # every reason is scraped from the start, at 0
    SLOW_CLIENTS_CUT_OFF.labels(_reason)
DB_CONNECTIONS_IN_USE = Gauge(
    "trialbridge_db_pool_connections_in_use",
    "Database connections checked out of the pools of the live processes",
    multiprocess_mode="livesum",
)
DB_CONNECTIONS_OPEN = Gauge(
    "trialbridge_db_pool_connections_open",
    "Database connections open (in use or idle) in the pools of the live processes",
    multiprocess_mode="livesum",
)


def fresh_multiprocess_dir(folder: Path | None) -> str:
    """The folder for the workers' value files: the configured one emptied of a past run's, or new.

    Set for the workers only: this (parent) process imported prometheus-client before, so it keeps
    its own values in memory and writes no file.
    """
    if folder is None:
        return tempfile.mkdtemp(prefix="trialbridge-metrics-")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # a previous run's counters would be added to this one's
        stale.unlink()
    return str(folder)


def process_ended() -> None:
    """Drop this process's live gauges from the shared files (its counters stay counted)."""
    if multiprocess():
        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def multiprocess() -> bool:
    """Values are shared through files when the workers were given a folder for them."""
    return bool(os.environ.get(MULTIPROCESS_ENV))


def observe_request(method: str | None, route: str, status: int, seconds: float) -> None:
    """Count one answered request; unknown methods are one label so clients cannot add series."""
    verb = method if method in _METHODS else "other"
    HTTP_REQUESTS.labels(verb, route, str(status)).inc()
    HTTP_DURATION.labels(verb, route).observe(seconds)


def count_written(versions: Iterable[tuple[str, str, int, bool]]) -> None:
    """Count committed versions (type, id, version, deleted): version 1 is a create."""
    tally = Tally(
        (t, "deleted" if deleted else "created" if version == 1 else "updated")
        for t, _, version, deleted in versions
    )
    for (resource_type, change), n in tally.items():
        RESOURCES_WRITTEN.labels(resource_type, change).inc(n)


def count_connection_refused() -> None:
    """Count one request refused by the connection cap."""
    CONNECTIONS_REFUSED.inc()


def count_slow_client(reason: str) -> None:
    """Count one connection cut off for slowness (one of `SLOW_CLIENT_REASONS`)."""
    SLOW_CLIENTS_CUT_OFF.labels(reason).inc()


def count_refused(resource_type: str | None) -> None:
    """Count one refused resource; content too broken to name its type counts as `unknown`."""
    RESOURCES_REFUSED.labels(resource_type or "unknown").inc()


def watch_pool(engine: Engine) -> None:
    """Follow the engine's pool through its events, so each process reports its own connections."""

    @event.listens_for(engine, "connect")
    def opened(*_: object) -> None:
        DB_CONNECTIONS_OPEN.inc()

    @event.listens_for(engine, "close")
    def closed(*_: object) -> None:
        DB_CONNECTIONS_OPEN.dec()

    @event.listens_for(engine, "checkout")
    def checked_out(*_: object) -> None:
        DB_CONNECTIONS_IN_USE.inc()

    @event.listens_for(engine, "checkin")
    def checked_in(*_: object) -> None:
        DB_CONNECTIONS_IN_USE.dec()
