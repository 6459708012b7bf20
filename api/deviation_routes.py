"""Deviation log and webhook subscriptions under /api/v1."""

from __future__ import annotations

import csv
import io
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api import views
from api.audit import for_write
from api.auth import PrincipalDep, readable_study, require, study_scope
from api.deps import DeviationLogDep, SealDep, SettingsDep, reject_nul
from api.schemas import (
    ERRORS,
    DeviationDetail,
    DeviationPage,
    DeviationPatch,
    ErrorBody,
    IsoDay,
    SubscriptionIn,
    SubscriptionList,
    SubscriptionOut,
)
from service.errors import ApiError
from service.reads.deviation_log import etag

router = APIRouter(
    prefix="/api/v1", responses=ERRORS, dependencies=[Depends(reject_nul), Depends(readable_study)]
)
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
    "acknowledged_at",
    "resolved_at",
    "resolution",
)


JSON = "application/json"
CSV = "text/csv"
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")


def _media_ranges(accept: str) -> list[tuple[str, str, float]]:
    """(type, subtype, q) of each well-formed media range; a malformed one is skipped."""
    ranges: list[tuple[str, str, float]] = []
    for part in accept.split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        main, slash, sub = kind.lower().partition("/")
        if not slash or not main or not sub or (main == "*" and sub != "*"):
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.fullmatch(value) else -1.0
        if q >= 0:
            ranges.append((main, sub, q))
    return ranges


def _quality(ranges: list[tuple[str, str, float]], offer: str) -> float:
    """The q the most specific matching range gives `offer` (RFC 9110 12.5.1); 0 when none."""
    main, _, sub = offer.partition("/")
    best = (-1, 0.0)
    for r_main, r_sub, q in ranges:
        if (r_main, r_sub) == (main, sub):
            specificity = 2
        elif (r_main, r_sub) == (main, "*"):
            specificity = 1
        elif (r_main, r_sub) == ("*", "*"):
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]


def negotiate(accept: str | None) -> str | None:
    """JSON or CSV for an Accept header: CSV only when preferred over JSON; None if neither fits."""
    if accept is None or not accept.strip():
        return JSON
    ranges = _media_ranges(accept)
    if not ranges:  # nothing readable in it: answer the default rather than refuse
        return JSON
    json_q, csv_q = _quality(ranges, JSON), _quality(ranges, CSV)
    if json_q <= 0 and csv_q <= 0:
        return None
    return CSV if csv_q > json_q else JSON


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
        row = {**d, "evidence": " ".join(e["evidence_id"] for e in d["evidence"])}
        writer.writerow([_cell(row[c]) for c in CSV_COLUMNS])
    return out.getvalue()


@router.get(
    "/studies/{study_id}/deviations",
    response_model=DeviationPage,
    tags=["deviations"],
    summary="The deviation log (JSON, or CSV with Accept: text/csv)",
    responses={
        200: {"content": {"text/csv": {}}},
        406: {"model": ErrorBody, "description": "Accept allows neither JSON nor CSV"},
    },
)
async def list_deviations(
    request: Request,
    log: DeviationLogDep,
    response: Response,
    settings: SettingsDep,
    seal: SealDep,
    study_id: str,
    subject: Annotated[str | None, Query(description="subject_id")] = None,
    rule: Annotated[str | None, Query()] = None,
    severity: Annotated[Literal["major", "minor"] | None, Query()] = None,
    status: Annotated[Literal["open", "acknowledged", "resolved"] | None, Query()] = None,
    date_from: Annotated[
        IsoDay | None, Query(description="deviation date on or after (YYYY-MM-DD)")
    ] = None,
    date_to: Annotated[
        IsoDay | None, Query(description="deviation date on or before (YYYY-MM-DD)")
    ] = None,
    cursor: Annotated[str | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    """Filter by subject, rule, severity, status and date; page with `cursor`."""
    accept = ", ".join(request.headers.getlist("accept")) or None  # repeated headers are one list
    wanted = negotiate(accept)
    if wanted is None:
        shown = accept if accept is None or len(accept) <= 100 else accept[:100] + "…"
        raise ApiError(
            406,
            "not_acceptable",
            f"Accept: {shown} cannot be served; this list is application/json or text/csv",
        )
    size = min(limit or settings.api_default_limit, settings.api_max_limit)
    filters = {
        "subject_id": subject,
        "rule": rule,
        "severity": severity,
        "status": status,
        "date_from": date_from,
        "date_to": date_to,
    }
    page = views.deviation_page(
        await run_in_threadpool(
            lambda: log.page(study_id, cursor=cursor, limit=size, filters=filters)
        ),
        seal,
    )
    if wanted == CSV:
        headers = {"Vary": "Accept"}
        if page["next_cursor"]:
            # the same query (filters, limit) with the next cursor: `?cursor=` alone would drop them
            query = request.url.include_query_params(cursor=page["next_cursor"]).query
            headers["Link"] = f'<?{query}>; rel="next"'
        return Response(_csv(page), media_type="text/csv; charset=utf-8", headers=headers)
    response.headers["Vary"] = "Accept"
    return page


@router.get(
    "/studies/{study_id}/deviations/{deviation_id}",
    response_model=DeviationDetail,
    tags=["deviations"],
    summary="One deviation with its history (ETag for PATCH)",
)
async def get_deviation(
    request: Request, log: DeviationLogDep, seal: SealDep, study_id: str, deviation_id: str
) -> Response:
    """The deviation, every change to it, and its ETag."""
    detail = await run_in_threadpool(lambda: log.get(study_id, deviation_id))
    body = views.deviation_detail(detail, seal)
    return JSONResponse(body, headers={"ETag": etag(detail.version)})


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
    log: DeviationLogDep,
    study_id: str,
    deviation_id: str,
    patch: DeviationPatch,
    who: PrincipalDep,
    seal: SealDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Staff handling survives recomputation; every change is kept in the history."""
    study_scope(who, study_id, "deviations.write")
    detail = await run_in_threadpool(
        lambda: log.annotate(
            study_id,
            deviation_id,
            if_match=if_match,
            by=patch.by,
            status=patch.status,
            comment=patch.comment,
            audit=for_write(request, who.client),
        )
    )
    body = views.deviation_detail(detail, seal)
    return JSONResponse(body, headers={"ETag": etag(detail.version)})


@router.post(
    "/subscriptions",
    response_model=SubscriptionOut,
    status_code=201,
    tags=["subscriptions"],
    summary="Subscribe a webhook receiver",
)
async def subscribe(
    request: Request, log: DeviationLogDep, body: SubscriptionIn, who: PrincipalDep
) -> dict[str, Any]:
    """Deliveries are POSTs signed with HMAC-SHA256 (see the README), retried with backoff."""
    require(who, who.scopes.admin, "admin")
    created = await run_in_threadpool(
        lambda: log.subscribe(url=body.url, events=body.events, secret=body.secret)
    )
    return views.subscription(created)


@router.get(
    "/subscriptions",
    response_model=SubscriptionList,
    tags=["subscriptions"],
    summary="Subscriptions",
)
async def subscriptions(
    request: Request, log: DeviationLogDep, who: PrincipalDep
) -> dict[str, Any]:
    """Every subscription (without secrets)."""
    require(who, who.scopes.admin, "admin")
    found = await run_in_threadpool(log.subscriptions)
    return {"subscriptions": [views.subscription(s) for s in found]}


@router.delete(
    "/subscriptions/{subscription_id}",
    status_code=204,
    tags=["subscriptions"],
    summary="Remove a subscription",
)
async def unsubscribe(
    request: Request, log: DeviationLogDep, subscription_id: str, who: PrincipalDep
) -> Response:
    """Stops deliveries, including pending ones."""
    require(who, who.scopes.admin, "admin")
    await run_in_threadpool(lambda: log.unsubscribe(subscription_id))
    return Response(status_code=204)
