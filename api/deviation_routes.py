"""Deviation log and webhook subscriptions under /api/v1."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api.deps import SettingsDep
from api.schemas import (
    ERRORS,
    DeviationDetail,
    DeviationPage,
    DeviationPatch,
    SubscriptionIn,
    SubscriptionList,
    SubscriptionOut,
)
from service.deviation_log import DeviationLog, etag

router = APIRouter(prefix="/api/v1", responses=ERRORS)
CSV_COLUMNS = (
    "id",
    "subject_id",
    "rule",
    "severity",
    "status",
    "study_day",
    "date",
    "message",
    "evidence",
    "detected_at",
    "updated_at",
    "acknowledged_by",
    "resolved_at",
    "resolution",
)


def _log(request: Request) -> DeviationLog:
    log: DeviationLog = request.app.state.deviations
    return log


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv(page: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for d in page["deviations"]:
        row = {**d, "evidence": " ".join(e["reference"] for e in d["evidence"])}
        writer.writerow([_cell(row[c]) for c in CSV_COLUMNS])
    return out.getvalue()


@router.get(
    "/studies/{study_id}/deviations",
    response_model=DeviationPage,
    tags=["deviations"],
    summary="The deviation log (JSON, or CSV with Accept: text/csv)",
    responses={200: {"content": {"text/csv": {}}}},
)
async def list_deviations(
    request: Request,
    settings: SettingsDep,
    study_id: str,
    subject: Annotated[str | None, Query(description="subject_id")] = None,
    rule: Annotated[str | None, Query()] = None,
    severity: Annotated[Literal["major", "minor"] | None, Query()] = None,
    status: Annotated[Literal["open", "acknowledged", "resolved"] | None, Query()] = None,
    date_from: Annotated[dt.date | None, Query(description="deviation date on or after")] = None,
    date_to: Annotated[dt.date | None, Query(description="deviation date on or before")] = None,
    cursor: Annotated[str | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    """Filter by subject, rule, severity, status and date; page with `cursor`."""
    size = min(limit or settings.api_default_limit, settings.api_max_limit)
    filters = {
        "subject_id": subject,
        "rule": rule,
        "severity": severity,
        "status": status,
        "date_from": date_from,
        "date_to": date_to,
    }
    log = _log(request)
    page = await run_in_threadpool(
        lambda: log.page(study_id, cursor=cursor, limit=size, filters=filters)
    )
    if accept and "text/csv" in accept and "application/json" not in accept:
        headers = {}
        if page["next_cursor"]:
            # the same query (filters, limit) with the next cursor: `?cursor=` alone would drop them
            query = request.url.include_query_params(cursor=page["next_cursor"]).query
            headers["Link"] = f'<?{query}>; rel="next"'
        return Response(_csv(page), media_type="text/csv; charset=utf-8", headers=headers)
    return page


@router.get(
    "/studies/{study_id}/deviations/{deviation_id}",
    response_model=DeviationDetail,
    tags=["deviations"],
    summary="One deviation with its history (ETag for PATCH)",
)
async def get_deviation(request: Request, study_id: str, deviation_id: str) -> Response:
    """The deviation, every change to it, and its ETag."""
    log = _log(request)
    body = await run_in_threadpool(lambda: log.get(study_id, deviation_id))
    return JSONResponse(body, headers={"ETag": etag(body["version"])})


@router.patch(
    "/studies/{study_id}/deviations/{deviation_id}",
    response_model=DeviationDetail,
    tags=["deviations"],
    summary="Acknowledge or comment (If-Match required)",
    responses={
        412: {"description": "ETag does not match"},
        428: {"description": "If-Match missing"},
    },
)
async def patch_deviation(
    request: Request,
    study_id: str,
    deviation_id: str,
    patch: DeviationPatch,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Staff handling survives recomputation; every change is kept in the history."""
    log = _log(request)
    body = await run_in_threadpool(
        lambda: log.annotate(
            study_id,
            deviation_id,
            if_match=if_match,
            by=patch.by,
            status=patch.status,
            comment=patch.comment,
        )
    )
    return JSONResponse(body, headers={"ETag": etag(body["version"])})


@router.post(
    "/subscriptions",
    response_model=SubscriptionOut,
    status_code=201,
    tags=["subscriptions"],
    summary="Subscribe a webhook receiver",
)
async def subscribe(request: Request, body: SubscriptionIn) -> dict[str, Any]:
    """Deliveries are POSTs signed with HMAC-SHA256 (see the README), retried with backoff."""
    log = _log(request)
    return await run_in_threadpool(
        lambda: log.subscribe(url=body.url, events=body.events, secret=body.secret)
    )


@router.get(
    "/subscriptions",
    response_model=SubscriptionList,
    tags=["subscriptions"],
    summary="Subscriptions",
)
async def subscriptions(request: Request) -> dict[str, Any]:
    """Every subscription (without secrets)."""
    log = _log(request)
    return {"subscriptions": await run_in_threadpool(log.subscriptions)}


@router.delete(
    "/subscriptions/{subscription_id}",
    status_code=204,
    tags=["subscriptions"],
    summary="Remove a subscription",
)
async def unsubscribe(request: Request, subscription_id: str) -> Response:
    """Stops deliveries, including pending ones."""
    log = _log(request)
    await run_in_threadpool(lambda: log.unsubscribe(subscription_id))
    return Response(status_code=204)
