"""Study-level outcomes under /api/v1: cohort statistics as JSON and figures as PNG/SVG."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from api import report_html, views
from api.auth import readable_study
from api.deps import ReportsDep, SealDep, SettingsDep, reject_nul
from api.fhir_http import if_none_match
from api.schemas import ERRORS, CohortOutcomesOut, ListingPageOut

router = APIRouter(
    prefix="/api/v1",
    tags=["outcomes"],
    responses=ERRORS,
    dependencies=[Depends(reject_nul), Depends(readable_study)],
)


@router.get(
    "/studies/{study_id}/outcomes",
    response_model=CohortOutcomesOut,
    summary="Cohort outcomes: rates with exact CIs, Kaplan–Meier, Cox models",
)
async def study_outcomes(
    request: Request, reports: ReportsDep, seal: SealDep, study_id: str
) -> dict[str, Any]:
    """Computed from every subject's current events; cached until the data changes."""
    found = await run_in_threadpool(lambda: reports.outcomes(study_id))
    return views.cohort_outcomes(found, seal)


@router.get(
    "/studies/{study_id}/outcomes/subjects",
    response_model=ListingPageOut,
    summary="The per-subject analysis listing behind the cohort outcomes, a page at a time",
)
async def study_listing(
    reports: ReportsDep,
    seal: SealDep,
    settings: SettingsDep,
    study_id: str,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int | None, Query(ge=1, description="Page size")] = None,
) -> dict[str, Any]:
    """Pseudonymous rows in subject-id order, from the same cached computation as the outcomes."""
    size = min(limit or settings.api_default_limit, settings.api_max_limit)
    page = await run_in_threadpool(lambda: reports.listing(study_id, cursor=cursor, limit=size))
    return views.listing_page(page, seal)


@router.get(
    "/studies/{study_id}/outcomes/report.html",
    summary="The outcomes as a self-contained HTML report (flow, Table 1, models, KM figures)",
    response_class=Response,  # errors stay JSON bodies in the OpenAPI document
    responses={200: {"content": {"text/html": {}}, "description": "The report"}},
)
async def study_report(reports: ReportsDep, study_id: str) -> HTMLResponse:
    """Inline CSS and figures, no script or external asset; aggregates only, no identifiers."""
    found = await run_in_threadpool(lambda: reports.document(study_id))
    page = await run_in_threadpool(lambda: report_html.render(found))
    return HTMLResponse(page, headers={"Content-Security-Policy": report_html.POLICY})


@router.get(
    "/studies/{study_id}/outcomes/plots/{plot}",
    summary="A figure of the study's outcomes: {name}.png or {name}.svg",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The figure"},
        304: {"description": "Unchanged since the ETag sent in If-None-Match"},
    },
)
async def study_plot(request: Request, reports: ReportsDep, study_id: str, plot: str) -> Response:
    """KM curves (efs, os) with CI band, censor marks and numbers at risk; the swimmer plot."""
    name, _, fmt = plot.rpartition(".")
    figure = await run_in_threadpool(lambda: reports.plot(study_id, name, fmt))
    headers = {"ETag": figure.etag, "Cache-Control": "no-cache"}
    if if_none_match(request.headers.get("if-none-match"), figure.etag):  # weak, lists, `*`
        return Response(status_code=304, headers=headers)
    return Response(figure.body, media_type=figure.media_type, headers=headers)
