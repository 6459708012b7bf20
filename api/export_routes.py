"""SDTM export under /api/v1: each dataset as Dataset-JSON, SAS XPORT or CSV, and define.xml."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from starlette.concurrency import run_in_threadpool

from api.auth import readable_study
from api.deps import SdtmDep, reject_nul
from api.schemas import ERRORS
from service.export.sdtm.export import ExportFile

router = APIRouter(
    prefix="/api/v1",
    tags=["export"],
    responses=ERRORS,
    dependencies=[Depends(reject_nul), Depends(readable_study)],
)


def _answer(file: ExportFile) -> Response:
    """The file as a download; it is patient-level data, never cached."""
    return Response(
        file.body,
        media_type=file.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{file.name}"',
            "Cache-Control": "no-store",
        },
    )


@router.get(
    "/studies/{study_id}/export/sdtm/define.xml",
    summary="define.xml (Define-XML 2.1) describing the study's SDTM datasets",
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}, "description": "define.xml"}},
)
async def sdtm_define(sdtm: SdtmDep, study_id: str) -> Response:
    """Datasets, variables (SDTMIG 3.4 order), codelists and derivation methods of the export."""
    return _answer(await run_in_threadpool(lambda: sdtm.define(study_id)))


@router.get(
    "/studies/{study_id}/export/sdtm/{file}",
    summary="One SDTM dataset: {domain}.json (Dataset-JSON v1.1), .xpt (SAS XPORT v5) or .csv",
    response_class=Response,
    responses={
        200: {
            "content": {"application/json": {}, "application/octet-stream": {}, "text/csv": {}},
            "description": "The dataset",
        }
    },
)
async def sdtm_dataset(sdtm: SdtmDep, study_id: str, file: str) -> Response:
    """DM, EX, CM, PR, AE, DS, MH, TU, TR, SUPPDM or SUPPAE, made from the current trial events."""
    return _answer(await run_in_threadpool(lambda: sdtm.dataset_file(study_id, file)))
