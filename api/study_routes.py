"""The study API under /api/v1: studies, subjects, timelines (JSON for trial software)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api import views
from api.audit import audit_note
from api.auth import PrincipalDep, readable_study, require, visible_studies
from api.deps import EvidenceDep, ReaderDep, SealDep, SettingsDep, fhir_base, reject_nul
from api.schemas import (
    ERRORS,
    EligibilityOut,
    EvidenceOut,
    ScreeningPage,
    StudyDetail,
    StudyList,
    SubjectOutcomesOut,
    SubjectPage,
    Timeline,
)
from service.audit.events import Entity
from service.errors import ApiError
from service.infra.clock import utcnow

router = APIRouter(
    prefix="/api/v1",
    tags=["studies"],
    responses=ERRORS,
    dependencies=[Depends(reject_nul), Depends(readable_study)],
)


@router.get("/studies", response_model=StudyList, summary="Studies this deployment serves")
async def list_studies(reader: ReaderDep, who: PrincipalDep) -> dict[str, Any]:
    """Every loaded protocol the token may read: id, version, title, kind."""
    visible = visible_studies(who, list(reader.protocols))
    return {"studies": [views.study_summary(reader.protocols[s]) for s in visible]}


@router.get(
    "/studies/{study_id}", response_model=StudyDetail, summary="A study and its protocol settings"
)
async def get_study(reader: ReaderDep, study_id: str) -> dict[str, Any]:
    """The protocol file as loaded: schedule, eligibility, deviation rules, outcomes, choices."""
    return views.study_detail(reader.protocol(study_id))


@router.get(
    "/studies/{study_id}/subjects", response_model=SubjectPage, summary="Subjects of a study"
)
async def list_subjects(
    reader: ReaderDep,
    settings: SettingsDep,
    study_id: str,
    status: Annotated[str | None, Query(description="e.g. on-study, candidate, included")] = None,
    subject_number: Annotated[str | None, Query(description="The study's own number")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int | None, Query(ge=1, description="Page size")] = None,
) -> dict[str, Any]:
    """Subjects in a stable order, filtered, a page at a time."""
    size = min(limit or settings.api_default_limit, settings.api_max_limit)
    page = await run_in_threadpool(
        lambda: reader.subjects(
            study_id, cursor=cursor, limit=size, status=status, subject_number=subject_number
        )
    )
    return views.subject_page(page)


@router.get(
    "/studies/{study_id}/subjects/{subject_id}/timeline",
    response_model=Timeline,
    summary="A subject's trial events in study-day order",
)
async def subject_timeline(
    reader: ReaderDep, seal: SealDep, study_id: str, subject_id: str
) -> Response:
    """Every event with its date (and precision), study day, values and evidence id."""
    # a kept answer whose read token is current needs no worker thread
    answer: views.Stamped | None = await reader.timeline_kept(study_id, subject_id)
    if answer is None:
        answer = await run_in_threadpool(
            lambda: reader.timeline_answer(
                study_id, subject_id, lambda found: views.timeline_answer(found, seal)
            )
        )
    return Response(answer.at(utcnow()), media_type="application/json")


@router.get(
    "/studies/{study_id}/eligibility",
    response_model=ScreeningPage,
    summary="Screening list: every candidate's eligibility",
)
async def screening_list(
    reader: ReaderDep,
    settings: SettingsDep,
    study_id: str,
    status: Annotated[
        Literal["eligible", "ineligible", "indeterminate"] | None,
        Query(description="Only candidates with this overall status"),
    ] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int | None, Query(ge=1, description="Page size")] = None,
) -> dict[str, Any]:
    """Candidates (a lung-cancer condition or a ResearchSubject), kept current on ingest."""
    size = min(limit or settings.api_default_limit, settings.api_max_limit)
    page = await run_in_threadpool(
        lambda: reader.screening(study_id, cursor=cursor, limit=size, overall=status)
    )
    return views.screening_page(page)


@router.get(
    "/studies/{study_id}/subjects/{subject_id}/eligibility",
    response_model=EligibilityOut,
    summary="A candidate's criteria, verdicts and evidence, as of a day",
)
async def subject_eligibility(
    reader: ReaderDep,
    seal: SealDep,
    study_id: str,
    subject_id: str,
    as_of: Annotated[
        str | None,
        Query(description="A day (2025-03-15) or zoned dateTime; data dated later is ignored"),
    ] = None,
) -> dict[str, Any] | Response:
    """Stored result (kept current on ingest) by default; computed on demand for a given as_of."""
    if as_of is None:
        # as above
        stored: bytes | None = await reader.stored_eligibility_kept(study_id, subject_id)
        if stored is None:
            stored = await run_in_threadpool(
                lambda: reader.stored_eligibility_answer(
                    study_id, subject_id, lambda found: views.eligibility_answer(found, seal)
                )
            )
        return Response(stored, media_type="application/json")
    found = await run_in_threadpool(lambda: reader.subject_eligibility(study_id, subject_id, as_of))
    return views.candidate_eligibility(found, seal)


@router.get(
    "/studies/{study_id}/subjects/{subject_id}/outcomes",
    response_model=SubjectOutcomesOut,
    summary="A subject's endpoints: time to surgery, MPR, pCR, EFS, OS, safety",
)
async def subject_outcomes(
    reader: ReaderDep, seal: SealDep, study_id: str, subject_id: str
) -> Response:
    """Computed from the subject's current events, with the evidence of each endpoint."""
    answer: views.Stamped | None = await reader.outcomes_kept(study_id, subject_id)  # as above
    if answer is None:
        answer = await run_in_threadpool(
            lambda: reader.outcomes_answer(
                study_id, subject_id, lambda found: views.endpoints_answer(found, seal)
            )
        )
    return Response(answer.at(utcnow()), media_type="application/json")


@router.get(
    "/studies/{study_id}/evidence/{evidence_id}",
    response_model=EvidenceOut,
    summary="The FHIR resource version an evidence id cites (source-data verification)",
)
async def resolve_evidence(
    request: Request, codec: EvidenceDep, who: PrincipalDep, study_id: str, evidence_id: str
) -> dict[str, Any]:
    """Only for a token that may read that resource under /fhir (else 403); audited."""
    cited = codec.open(study_id, evidence_id)
    if cited is None:
        raise ApiError(
            404, "evidence_not_found", f"no evidence {evidence_id[:100]!r} in {study_id}"
        )
    require(
        who,
        who.scopes.fhir(cited.resource_type, "r"),
        f"system/{cited.resource_type}.r (to read the resource under /fhir)",
    )
    note = audit_note(request)
    if note is not None:  # a re-identification: the audit trail names the resource
        note.entities.append(Entity(cited.reference))
    return {
        "evidence_id": evidence_id,
        "resource_type": cited.resource_type,
        "reference": cited.reference,
        "url": f"{fhir_base(request)}/{cited.reference}",
    }
