"""One place that turns every error into a FHIR OperationOutcome or the documented JSON error."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.fhir_http import outcome_response
from fhir_mapping.issues import InvalidContentError, Issue
from service.errors import ApiError, FhirError

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not-found", 405: "not-supported", 406: "not-supported", 415: "not-supported"}


def _is_fhir(request: Request) -> bool:
    return request.url.path == "/fhir" or request.url.path.startswith("/fhir/")


def json_error(
    status: int, code: str, message: str, details: list[dict[str, object]] | None = None
) -> JSONResponse:
    """The JSON API's error body: {"error": {"status", "code", "message", "details"}}."""
    return JSONResponse(
        {"error": {"status": status, "code": code, "message": message, "details": details or []}},
        status_code=status,
    )


def install(app: FastAPI) -> None:
    """Register the handlers on the app."""

    @app.exception_handler(FhirError)
    async def _fhir_error(request: Request, exc: FhirError) -> Response:
        if _is_fhir(request):
            return outcome_response(exc.status, exc.issues)
        return json_error(exc.status, exc.issues[0].code, str(exc))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return json_error(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(InvalidContentError)
    async def _invalid(request: Request, exc: InvalidContentError) -> Response:
        err = FhirError.from_invalid(exc)
        return outcome_response(err.status, err.issues)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_fhir(request):
            code = _HTTP_CODES.get(exc.status_code, "processing")
            text = "no such FHIR endpoint" if exc.status_code == 404 else str(exc.detail)
            return outcome_response(
                exc.status_code, [Issue(code, f"{request.method} {request.url.path}: {text}")]
            )
        return json_error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        if _is_fhir(request):
            issues = [
                Issue("invalid", f"{'.'.join(map(str, p['loc']))}: {p['msg']}") for p in problems
            ]
            return outcome_response(400, issues)
        return json_error(422, "invalid_request", "the request is not valid", problems)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if _is_fhir(request):
            return outcome_response(
                500, [Issue("exception", "internal error; nothing was written")]
            )
        return json_error(500, "internal_error", "internal error")
