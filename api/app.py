"""The ASGI app: `uvicorn api.app:app`. Settings, engine and migrations happen at start-up."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api import errors, request_log
from api.audit import AuditRequests
from api.auth import router as auth_router
from api.bulk_import import router as bulk_import_router
from api.client_limits import BodyDeadline
from api.cors import Cors
from api.deviation_routes import router as deviation_router
from api.docs_pages import docs_router
from api.export_routes import router as export_router
from api.fhir_routes import audit_router
from api.fhir_routes import open_router as fhir_open_router
from api.fhir_routes import router as fhir_router
from api.host_guard import HostGuard
from api.large_bodies import LargeBodies, LargeBodyBudget
from api.metrics import router as metrics_router
from api.outcome_routes import router as outcome_router
from api.rate_limit import RateLimit, RateLimits
from api.security_headers import SecurityHeaders
from api.source_routes import router as source_router
from api.study_routes import router as study_router
from service.access.clients import bootstrap_admin
from service.access.tokens import TokenService
from service.audit.trail import AuditTrail
from service.derivation.catalog import load_catalog
from service.export.sdtm.export import SdtmExporter
from service.fhir.interactions import FhirService
from service.fhir.pull.jobs import SourcePulls
from service.fhir.pull.schedule import PullScheduler
from service.fhir.validation_workers import ModelChecks
from service.infra import metrics, migrate
from service.infra.db import make_engine
from service.infra.process import settle_process
from service.infra.settings import Settings
from service.jobs.bulk import BulkJobs
from service.jobs.queue import ensure_schema, make_queue
from service.notifications.webhooks import Dispatcher, policy_from
from service.privacy.evidence import EvidenceCodec
from service.reads.audit_log import AuditLog
from service.reads.cohort_refresher import CohortRefresher
from service.reads.cohort_reports import CohortReports
from service.reads.deviation_log import DeviationLog
from service.reads.study_reader import StudyReader
from service.reads.subject_cache import SubjectCache

log = logging.getLogger(__name__)


def _admin_key_default(settings: Settings) -> Path:
    """Beside the SQLite database: the data folder a new install already has."""
    database = settings.sqlite_path()
    return (database.parent if database else Path("var")) / "admin-key.jwk"


def routing_order(routers: Sequence[APIRouter], *, first: APIRouter) -> list[APIRouter]:
    """`first`, then the others in their order: the router routing tries first.

    FastAPI tries a request against each included router in turn (and the one that matches
    twice), so a per-subject read paid for every /fhir route declared before the study routes:
    about a tenth of a millisecond of CPU a request. Trying the study routes first changes no
    answer: every one of their paths begins `/api/v1/`, which no route of a router declared
    before them can match (tests/test_study_api.py checks the templates), so the same route
    matches (or partly matches: 405) every request as before."""
    return [first, *(r for r in routers if r is not first)]


def keep_documented_order(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """The OpenAPI document lists paths in the routers' declared order, whatever the routing
    order: the document is the same as before the study routes were tried first."""
    declared = {getattr(x, "path", ""): n for n, r in enumerate(routers) for x in r.routes}
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        paths = schema.get("paths", {})
        ordered = sorted(paths, key=lambda p: declared.get(p, len(routers)))  # stable: the rest
        if list(paths) != ordered:
            schema["paths"] = {p: paths[p] for p in ordered}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing touches the environment or the database until start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        conf = settings or Settings()
        request_log.configure(conf.log_level)
        catalog = load_catalog(conf)  # a broken protocol file stops start-up, naming the key
        engine = make_engine(conf)
        metrics.watch_pool(engine)
        if conf.auto_migrate:
            await run_in_threadpool(migrate.upgrade, engine)
            await run_in_threadpool(ensure_schema, engine)  # the job queue's (PostgreSQL)
        app.state.settings = conf
        app.state.engine = engine
        app.state.rate_limits = RateLimits.for_settings(conf)
        app.state.tokens = TokenService(
            engine,
            lifetime_seconds=conf.token_lifetime_seconds,
            skew_seconds=conf.clock_skew_seconds,
            issuers=conf.auth_issuers,
            allow_private=conf.webhook_allow_private,
            cache_entries=conf.token_cache_entries,
        )
        if conf.auth_disabled:
            log.warning(
                "authentication is OFF (TRIALBRIDGE_AUTH_DISABLED=true): anyone who reaches "
                "this process reads and writes everything; bind to loopback only"
            )
        elif conf.is_sqlite:
            key_file = conf.admin_key_file or _admin_key_default(conf)
            await run_in_threadpool(bootstrap_admin, engine, key_file)
        app.state.evidence = EvidenceCodec(engine)
        if conf.auto_migrate:  # else the release step has not made its table yet: read it lazily
            await run_in_threadpool(app.state.evidence.load)
        app.state.audit = AuditTrail(engine, conf.spool_dir())
        await run_in_threadpool(app.state.audit.start)
        app.state.audit_log = AuditLog(
            engine,
            default_count=conf.search_default_count,
            max_count=conf.search_max_count,
        )
        model_checks = ModelChecks.for_settings(conf)
        app.state.store = FhirService(engine, conf, catalog.derivation, model_checks)
        app.state.large_bodies = LargeBodyBudget.for_settings(conf, app.state.store.release_memory)
        app.state.studies = StudyReader(
            engine,
            catalog.protocols,
            conf.site_zone(),
            SubjectCache(conf.subject_cache_mb * 1024 * 1024),
        )
        # a broken sources file stops start-up, naming the source and key
        app.state.pulls = SourcePulls(engine, app.state.store, conf)
        app.state.bulk_jobs = BulkJobs(engine, app.state.store)
        job_queue = make_queue(app.state.bulk_jobs, app.state.pulls)
        app.state.job_queue = job_queue
        app.state.pulls.launcher = job_queue.submit_pull  # pulls run on the job queue
        pull_schedule = PullScheduler(app.state.pulls)
        evidence: EvidenceCodec = app.state.evidence
        refresher = CohortRefresher(
            engine,
            catalog.protocols,
            evidence.seal,
            interval_seconds=conf.cohort_refresh_interval_seconds,
            debounce_seconds=conf.cohort_debounce_seconds,
            max_delay_seconds=conf.cohort_max_delay_seconds,
            zone=conf.site_zone(),
        )
        catalog.derivation.on_studies_changed = refresher.notice
        app.state.reports = CohortReports(
            engine,
            catalog.protocols,
            refresher,
            fresh_timeout_seconds=conf.cohort_fresh_timeout_seconds,
        )
        app.state.sdtm = SdtmExporter(engine, catalog.protocols, conf.site_zone())
        app.state.deviations = DeviationLog(
            engine, catalog.protocols, allow_private_webhooks=conf.webhook_allow_private
        )
        dispatcher = None
        if conf.webhook_interval_seconds > 0:
            dispatcher = Dispatcher(engine, policy_from(conf), conf.webhook_interval_seconds)
            dispatcher.start()
        await run_in_threadpool(settle_process)
        refresher.start()
        pull_schedule.start()
        job_queue.start()  # in-process: resumes unfinished jobs; procrastinate: workers run them
        try:
            yield
        finally:
            try:
                await run_in_threadpool(pull_schedule.stop)
                await run_in_threadpool(job_queue.stop)
                await run_in_threadpool(refresher.stop)
                if dispatcher is not None:
                    dispatcher.stop()
                await run_in_threadpool(model_checks.close)
                await run_in_threadpool(app.state.audit.stop)
            finally:  # the database connections are closed whatever stopping the others raised
                await app.state.studies.loop_reads.aclose()
                engine.dispose()
                metrics.process_ended()

    app = FastAPI(
        title="trialbridge",
        summary="FHIR R4 ingest and trial events for NCT06088771 and the dupilumab-cirAE cohort",
        version="0.1.0",
        lifespan=lifespan,
        # ours instead (api/docs_pages.py): no CDN, no inline script; the scheme is a bearer
        # token, so Swagger UI has no OAuth redirect to come back to
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    errors.install(app)
    app.add_middleware(BodyDeadline)  # innermost: it bounds every read of a body, 408 after
    app.add_middleware(errors.ApiBodyLimit)
    app.add_middleware(LargeBodies)  # a slot for each large body, taken when the route reads it
    app.add_middleware(HostGuard)  # a Host that may not shape URLs is refused before anything runs
    app.add_middleware(RateLimit)  # inside the audit and the headers (429s recorded), before routes
    app.add_middleware(SecurityHeaders)  # on every answer, refusals included
    app.add_middleware(AuditRequests)  # inside the request log: records carry the request id
    app.add_middleware(Cors)  # preflights are answered before anything is audited
    app.add_middleware(request_log.RequestLog)  # outermost: every answer has its request id
    documented = (
        auth_router,
        fhir_open_router,  # /fhir/metadata before /fhir/{resource_type}
        audit_router,  # so are /fhir/AuditEvent and /fhir/Provenance
        bulk_import_router,  # and /fhir/$import-status/{id}
        fhir_router,
        study_router,
        deviation_router,
        outcome_router,
        export_router,
        source_router,
        metrics_router,
        docs_router(),
    )
    for router in routing_order(documented, first=study_router):
        app.include_router(router)
    keep_documented_order(app, documented)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: database reachable and migrated")
    async def readyz() -> Response:
        """Ready when the database answers and is at the head revision."""

        def check() -> str | None:
            with app.state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return migrate.current_revision(app.state.engine)

        try:
            revision = await run_in_threadpool(check)
        except Exception as exc:  # any failure to reach the database means not ready
            # the reason names hosts and ports: for the log, not for whoever asks
            log.warning("not ready: %s", str(exc).splitlines()[0])
            return errors.json_error(503, "database_unavailable", "the database is unavailable")
        head = migrate.head_revision()
        if revision != head:  # e.g. TRIALBRIDGE_AUTO_MIGRATE=false before the release step ran
            return errors.json_error(
                503,
                "schema_not_current",
                f"database schema at revision {revision or 'none'}, this release needs {head}: "
                "run `trialbridge migrate`",
            )
        return JSONResponse(
            {
                "status": "ready",
                "schema_revision": revision,
                "model_checks": app.state.store.model_checks.state(),
            }
        )

    return app


app = create_app()
