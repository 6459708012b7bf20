"""Study-level outcomes under /api/v1: cohort statistics as JSON, figures as PNG/SVG, the report
as HTML and PDF."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api import report_html, views
from api.auth import PrincipalDep, readable_study, require
from api.deps import ReportsDep, SettingsDep, reject_nul
from api.fhir_http import if_none_match
from api.schemas import (
    ERRORS,
    CohortOutcomesOut,
    ErrorBody,
    ExcludedPageOut,
    ListingPageOut,
    SwimmerPageOut,
)
from service.access.tokens import Principal
from service.infra.settings import Settings
from service.reads.cohort_reports import CohortReports
from service.reads.results import CohortDocument
from service.studies.kind import ListingName

FreshQuery = Annotated[
    bool, Query(description="Wait (bounded) for a snapshot reflecting every change; admin only")
]
SNAPSHOT_RESPONSES: dict[int | str, dict[str, object]] = {
    304: {"description": "Unchanged since the ETag sent in If-None-Match"},
    503: {
        "model": ErrorBody,
        "description": "`cohort_not_ready`: no snapshot computed yet; `cohort_not_fresh`: "
        "`fresh=true` timed out (both with Retry-After); `database_unavailable`",
    },
}


def _check_fresh(who: Principal, fresh: bool) -> None:
    if fresh:
        require(who, who.scopes.admin, "admin")


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
    responses=SNAPSHOT_RESPONSES,
)
async def study_outcomes(
    request: Request,
    reports: ReportsDep,
    who: PrincipalDep,
    study_id: str,
    fresh: FreshQuery = False,
) -> Response:
    """The last snapshot computed in the background, with `computed_at`, `data_as_of` and
    `stale`; never waits for a computation unless an admin asks for `fresh=true`."""
    _check_fresh(who, fresh)
    sent = request.headers.get("if-none-match")
    found = await run_in_threadpool(
        lambda: reports.outcomes(
            study_id, fresh=fresh, unchanged=lambda etag: if_none_match(sent, etag)
        )
    )
    headers = {"ETag": found.etag, "Cache-Control": "no-cache"}
    if found.body is None:
        return Response(status_code=304, headers=headers)
    return Response(views.cohort_outcomes(found), media_type="application/json", headers=headers)


CursorQuery = Annotated[str | None, Query(description="`next_cursor` of the previous page")]
LimitQuery = Annotated[int | None, Query(ge=1, description="Page size")]


def _listing_route(name: ListingName, page: type[BaseModel], summary: str, doc: str) -> None:
    """GET …/outcomes/{name}: one endpoint for each listing, which differ only in their rows."""

    async def endpoint(
        request: Request,
        reports: ReportsDep,
        who: PrincipalDep,
        settings: SettingsDep,
        study_id: str,
        cursor: CursorQuery = None,
        limit: LimitQuery = None,
        fresh: FreshQuery = False,
    ) -> Response:
        return await _listing(request, reports, who, settings, study_id, cursor, limit, fresh, name)

    endpoint.__doc__ = doc
    router.add_api_route(
        f"/studies/{{study_id}}/outcomes/{name}",
        endpoint,
        methods=["GET"],
        name="study_listing" if name == "subjects" else f"study_{name}",
        response_model=page,
        summary=summary,
        responses=SNAPSHOT_RESPONSES,
    )


_listing_route(
    "subjects",
    ListingPageOut,
    "The per-subject analysis listing behind the cohort outcomes, a page at a time",
    "Pseudonymous rows in subject-id order, stored with the same snapshot as the outcomes.",
)
_listing_route(
    "swimmer",
    SwimmerPageOut,
    "The swimmer plot's rows (one per dosed subject), a page at a time",
    "Days since Day 1 in subject-id order, from the snapshot the outcomes and the swimmer plot "
    "come from; 404 `not_applicable` for a study kind without a swimmer plot.",
)
_listing_route(
    "excluded",
    ExcludedPageOut,
    "The subjects the analysis leaves out, with why, a page at a time",
    "Pseudonymous ids and reasons in subject-id order (the outcomes count them by reason); 404 "
    "`not_applicable` for a study kind without this listing (NCT06088771 names the subjects its "
    "survival curves leave out in the outcomes, under `efs.excluded` and `os.excluded`).",
)


async def _listing(
    request: Request,
    reports: CohortReports,
    who: Principal,
    settings: Settings,
    study_id: str,
    cursor: str | None,
    limit: int | None,
    fresh: bool,
    name: ListingName,
) -> Response:
    """A page of one of the snapshot's listings, with the snapshot's ETag (304 when unchanged)."""
    _check_fresh(who, fresh)
    size = min(limit or settings.api_default_limit, settings.api_max_limit)
    sent = request.headers.get("if-none-match")
    page = await run_in_threadpool(
        lambda: reports.listing(
            study_id,
            cursor=cursor,
            limit=size,
            fresh=fresh,
            unchanged=lambda etag: if_none_match(sent, etag),
            name=name,
        )
    )
    headers = {"ETag": page.etag, "Cache-Control": "no-cache"}
    if page.rows is None:
        return Response(status_code=304, headers=headers)
    return Response(views.listing_page(page), media_type="application/json", headers=headers)


async def _report_document(
    request: Request, reports: ReportsDep, who: PrincipalDep, study_id: str, fresh: bool, fmt: str
) -> tuple[CohortDocument, dict[str, str]]:
    """The snapshot's document for report.html (SVG figures) or report.pdf (PNG figures), with
    the headers both share; the document is None for a 304."""
    _check_fresh(who, fresh)
    sent = request.headers.get("if-none-match")
    found = await run_in_threadpool(
        lambda: reports.document(
            study_id,
            fresh=fresh,
            unchanged=lambda etag: if_none_match(sent, etag),
            figure_format=fmt,
        )
    )
    return found, {"ETag": found.etag, "Cache-Control": "no-cache"}


@router.get(
    "/studies/{study_id}/outcomes/report.html",
    summary="The outcomes as a self-contained HTML report (flow, Table 1, models, KM figures)",
    response_class=Response,  # errors stay JSON bodies in the OpenAPI document
    responses={
        200: {"content": {"text/html": {}}, "description": "The report"},
        **SNAPSHOT_RESPONSES,
    },
)
async def study_report(
    request: Request,
    reports: ReportsDep,
    who: PrincipalDep,
    study_id: str,
    fresh: FreshQuery = False,
) -> Response:
    """The last snapshot's report document: inline CSS and figures, no script or external asset;
    aggregates only, no identifiers; the data cut-off is the snapshot's."""
    found, headers = await _report_document(request, reports, who, study_id, fresh, "svg")
    headers["Content-Security-Policy"] = report_html.POLICY
    if found.document is None:
        return Response(status_code=304, headers=headers)
    page = await run_in_threadpool(lambda: report_html.render(found))
    return Response(page, media_type="text/html; charset=utf-8", headers=headers)


@router.get(
    "/studies/{study_id}/outcomes/report.pdf",
    summary="The same report as a PDF (flow, Table 1, models, KM figures)",
    response_class=Response,
    responses={
        200: {"content": {"application/pdf": {}}, "description": "The report, as an attachment"},
        **SNAPSHOT_RESPONSES,
    },
)
async def study_report_pdf(
    request: Request,
    reports: ReportsDep,
    who: PrincipalDep,
    study_id: str,
    fresh: FreshQuery = False,
) -> Response:
    """The document of report.html as a PDF to download (named by study and data cut-off);
    aggregates only, no identifiers; the figures are the snapshot's PNGs."""
    found, headers = await _report_document(request, reports, who, study_id, fresh, "png")
    if found.document is None:
        return Response(status_code=304, headers=headers)
    from api import report_pdf  # where used: fpdf2 and its fonts stay out of start-up

    headers["Content-Disposition"] = f'attachment; filename="{report_pdf.filename(found)}"'
    body = await run_in_threadpool(lambda: report_pdf.render(found))
    return Response(body, media_type="application/pdf", headers=headers)


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
    """KM curves (efs, os) with CI band, censor marks and numbers at risk; the swimmer plot,
    as rendered with the study's last snapshot."""
    name, _, fmt = plot.rpartition(".")
    figure = await run_in_threadpool(lambda: reports.plot(study_id, name, fmt))
    headers = {"ETag": figure.etag, "Cache-Control": "no-cache"}
    if if_none_match(request.headers.get("if-none-match"), figure.etag):  # weak, lists, `*`
        return Response(status_code=304, headers=headers)
    return Response(figure.body, media_type=figure.media_type, headers=headers)
