"""`GET /metrics` in Prometheus' text format, and the counting of what the HTTP layer refuses.

Counters and histograms live in `service.infra.metrics`; what is cheaper to read when scraped than
to keep up to date (the outbox, this process's model-check workers) is read here at scrape time.
Nothing here names a patient, a path or an id. `TRIALBRIDGE_METRICS_TOKEN`, when set, is the
bearer token a scraper must send; without it the endpoint is open, as Prometheus expects, and the
network (deploy/kubernetes NetworkPolicy) decides who reaches it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.errors import AuthError
from service.fhir.ingest import EntryResult
from service.infra import metrics
from service.infra.clock import utcnow
from service.notifications.webhooks import outbox_backlog
from service.reads.cohort_reports import SnapshotStatus
from service.repositories.webhook_outbox import Backlog

log = logging.getLogger(__name__)

router = APIRouter(tags=["ops"])

_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# content or state refusals of a write: not access (401/403), size (413) or media type (415)
_REFUSALS = frozenset({400, 409, 412, 422})
# the classic text format every Prometheus version reads (generate_latest writes it)
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
_MODEL_CHECK_STATES = ("off", "idle", "starting", "ready", "failed")


class ScrapeTime(Collector):
    """Values read when scraped: the outbox (one for the deployment) and this process's workers."""

    def __init__(self, request: Request) -> None:
        self.state = request.app.state

    def collect(self) -> Iterator[Metric]:
        """The outbox backlog and its oldest age, and the model-check workers' state."""
        try:
            backlog = outbox_backlog(self.state.engine)
        except SQLAlchemyError:  # a scrape during an outage still answers, and says so
            log.warning("metrics: the database did not answer the outbox query")
            backlog = None
        yield GaugeMetricFamily(
            "trialbridge_database_up",
            "1 when the scrape's outbox query reached the database, else 0",
            value=0.0 if backlog is None else 1.0,
        )
        if backlog is not None:
            yield from _outbox(backlog)
            try:
                yield from _cohorts(self.state.reports.status())
            except SQLAlchemyError:
                log.warning("metrics: the database did not answer the cohort snapshot query")
        checks = self.state.store.model_checks
        current = checks.state()
        family = GaugeMetricFamily(
            "trialbridge_model_check_workers_state",
            "1 for the state the scraped process's model-check workers are in, 0 for the others",
            labels=["state"],
        )
        for state in _MODEL_CHECK_STATES:
            family.add_metric([state], 1.0 if state == current else 0.0)
        yield family
        yield GaugeMetricFamily(
            "trialbridge_model_check_jobs_in_flight",
            "Bundles the scraped process's model-check workers are checking now",
            value=checks.busy(),
        )


def _outbox(backlog: Backlog) -> Iterator[Metric]:
    """The three outbox gauges an alert on stuck or failing webhooks needs."""
    yield GaugeMetricFamily(
        "trialbridge_webhook_outbox_pending",
        "Webhook notifications not yet delivered (and not given up)",
        value=backlog.pending,
    )
    oldest = backlog.oldest_created_at
    age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
    yield GaugeMetricFamily(
        "trialbridge_webhook_outbox_oldest_age_seconds",
        "Age of the oldest notification still to deliver; 0 when none waits",
        value=max(age, 0.0),
    )
    yield GaugeMetricFamily(
        "trialbridge_webhook_outbox_failed",
        "Notifications given up after their last attempt",
        value=backlog.failed,
    )


def _cohorts(snapshots: list[SnapshotStatus]) -> Iterator[Metric]:
    """Per study: how old its snapshot is, whether it is stale, how many changes wait for it."""
    age = GaugeMetricFamily(
        "trialbridge_cohort_snapshot_age_seconds",
        "Time since the study's cohort snapshot was computed (no sample before the first)",
        labels=["study"],
    )
    stale = GaugeMetricFamily(
        "trialbridge_cohort_snapshot_stale",
        "1 when the study's cohort snapshot misses a change (or none exists yet), else 0",
        labels=["study"],
    )
    took = GaugeMetricFamily(
        "trialbridge_cohort_snapshot_compute_seconds",
        "How long the computation of the study's current cohort snapshot took (any process)",
        labels=["study"],
    )
    pending = GaugeMetricFamily(
        "trialbridge_cohort_changes_pending",
        "Writes that changed the study and that no cohort snapshot reflects yet",
        labels=["study"],
    )
    now = utcnow()
    for s in snapshots:
        if s.computed_at is not None:
            age.add_metric([s.study_id], max((now - s.computed_at).total_seconds(), 0.0))
        if s.compute_seconds is not None:
            took.add_metric([s.study_id], s.compute_seconds)
        stale.add_metric([s.study_id], 1.0 if s.stale else 0.0)
        pending.add_metric([s.study_id], float(s.pending_changes))
    yield from (age, took, stale, pending)


def _exposition(request: Request) -> bytes:
    """Every process's counters (or this one's, with the process metrics), then scrape-time values."""
    if metrics.multiprocess():
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
        counted = generate_latest(shared)
    else:
        counted = generate_latest(REGISTRY)
    now = CollectorRegistry(auto_describe=False)
    now.register(ScrapeTime(request))
    return counted + generate_latest(now)


def _authorised(request: Request, token: str) -> bool:
    sent = request.headers.get("authorization", "")
    scheme, _, value = sent.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    """Prometheus' text exposition format."""
    secret = request.app.state.settings.metrics_token
    if secret is not None and not _authorised(request, secret.get_secret_value()):
        raise AuthError(401, "invalid_token", "a bearer token is required: the metrics token")
    body = await run_in_threadpool(_exposition, request)
    return Response(body, media_type=TEXT_FORMAT, headers={"Cache-Control": "no-store"})


def count_results(results: Iterable[EntryResult]) -> None:
    """Count the entries of a batch or an import that were refused, by their type."""
    for result in results:
        if result.change == "failed":
            metrics.count_refused(result.resource_type)


def count_refusal(request: Request, status: int) -> None:
    """Count a FHIR write refused whole: its resource type, or `Bundle` for a Bundle post."""
    if request.method not in _WRITES or status not in _REFUSALS:
        return
    resource_type = request.path_params.get("resource_type")
    if resource_type is None and request.url.path.rstrip("/").endswith("/fhir"):
        resource_type = "Bundle"
    metrics.count_refused(resource_type)
