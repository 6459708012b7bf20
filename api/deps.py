"""Typed dependencies: every service object the app was started with, for routes to declare."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from service.errors import ApiError
from service.export.sdtm.export import SdtmExporter
from service.fhir.interactions import FhirService
from service.infra.settings import Settings
from service.privacy.evidence import Cited, EvidenceCodec
from service.reads.audit_log import AuditLog
from service.reads.cohort_reports import CohortReports
from service.reads.deviation_log import DeviationLog
from service.reads.study_reader import StudyReader

T = TypeVar("T")

# A path id with U+0000 names nothing we could have stored: the resource's own 404.
_NOT_FOUND = {
    "study_id": ("study_not_found", "study"),
    "subject_id": ("subject_not_found", "subject"),
    "deviation_id": ("deviation_not_found", "deviation"),
    "subscription_id": ("subscription_not_found", "subscription"),
    "plot": ("plot_not_found", "plot"),
}


def _state(name: str, kind: type[T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency handing out the `app.state.<name>` that the lifespan built at start-up."""

    async def get(request: Request) -> T:
        found = getattr(request.app.state, name)
        assert isinstance(found, kind)
        return found

    get.__name__ = f"state_{name}"
    return get


def fhir_base(request: Request) -> str:
    """Public base URL of /fhir: configured, or as the client reached us."""
    settings: Settings = request.app.state.settings
    return settings.base_url or str(request.base_url).rstrip("/") + "/fhir"


async def _fhir_base(request: Request) -> str:
    """`fhir_base` as a dependency: `async`, or FastAPI would hand every FHIR request to a worker
    thread and back for it (~0.1 ms of a one-patient transaction's latency)."""
    return fhir_base(request)


async def reject_nul(request: Request) -> None:
    """PostgreSQL cannot hold or compare U+0000: refuse it before any query sees it (not a 500).

    `async` though it awaits nothing: FastAPI runs a plain `def` dependency in a worker thread,
    a thread hand-off per request that costs more than the check."""
    for name, value in request.path_params.items():
        if "\x00" in str(value):
            code, what = _NOT_FOUND.get(name, ("http_error", "resource"))
            raise ApiError(404, code, f"no {what} {str(value)[:100]!r}")
    bad: list[dict[str, object]] = [
        {"loc": ["query", key], "msg": "must not contain U+0000"}
        for key, value in request.query_params.multi_items()
        if "\x00" in key or "\x00" in value
    ]
    if bad:
        raise ApiError(422, "invalid_request", "the request is not valid", bad)


StoreDep = Annotated[FhirService, Depends(_state("store", FhirService))]
SettingsDep = Annotated[Settings, Depends(_state("settings", Settings))]
ReaderDep = Annotated[StudyReader, Depends(_state("studies", StudyReader))]
ReportsDep = Annotated[CohortReports, Depends(_state("reports", CohortReports))]
DeviationLogDep = Annotated[DeviationLog, Depends(_state("deviations", DeviationLog))]
AuditLogDep = Annotated[AuditLog, Depends(_state("audit_log", AuditLog))]
SdtmDep = Annotated[SdtmExporter, Depends(_state("sdtm", SdtmExporter))]
BaseDep = Annotated[str, Depends(_fhir_base)]


async def evidence_seal(request: Request, study_id: str) -> Callable[[Cited], str]:
    """The path's study's evidence ids: answers cite evidence through these, never FHIR ids."""
    codec: EvidenceCodec = request.app.state.evidence
    return lambda cited: codec.seal(study_id, cited)


SealDep = Annotated[Callable[[Cited], str], Depends(evidence_seal)]
EvidenceDep = Annotated[EvidenceCodec, Depends(_state("evidence", EvidenceCodec))]
