"""One place that turns every error into a FHIR OperationOutcome or the documented JSON error."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.fhir_http import outcome_response
from api.large_bodies import LargeBodiesBusy
from api.metrics import count_refusal
from api.request_log import route_of
from fhir_mapping.issues import InvalidContentError, Issue
from fhir_mapping.tokens import ascii_int
from service.errors import (
    ApiError,
    AuthError,
    DatabaseUnavailableError,
    FhirError,
    NotReadyError,
    OAuthError,
    RateLimitedError,
    TrialbridgeError,
)

log = logging.getLogger(__name__)

_HTTP_CODES = {
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    408: "timeout",
    415: "not-supported",
    503: "throttled",  # LargeBodiesBusy: load management, with Retry-After
}
# FastAPI's 400 when json.loads fails other than with JSONDecodeError (bytes that are not UTF-8,
# nesting deep enough for a RecursionError); malformed JSON itself is a 422 validation error.
_UNPARSEABLE_BODY = "There was an error parsing the body"
API_PREFIX = "/api/v1"


def is_fhir_path(path: str) -> bool:
    """Answered with OperationOutcomes (FHIR), not the JSON error body."""
    return path == "/fhir" or path.startswith("/fhir/")


def _is_fhir(request: Request) -> bool:
    return is_fhir_path(request.url.path)


def json_error(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, object]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON API's error body: {"error": {"status", "code", "message", "details"}}."""
    return JSONResponse(
        {"error": {"status": status, "code": code, "message": message, "details": details or []}},
        status_code=status,
        headers=headers,
    )


class BodyTooLarge(StarletteHTTPException):
    """Raised while reading a body past the limit; FastAPI passes HTTPExceptions on unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class BodyTimeout(StarletteHTTPException):
    """Raised while waiting for a body past TRIALBRIDGE_BODY_TIMEOUT_SECONDS (api/client_limits)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {seconds:g} s",
            # RFC 9110 §15.5.9: the rest of the body is not read, so the connection cannot go on
            headers={"Connection": "close"},
        )


class ApiBodyLimit:
    """TRIALBRIDGE_MAX_BODY_BYTES on /api/v1 (/fhir checks it in read_body): never read it all."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == API_PREFIX or path.startswith(API_PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        limit: int = scope["app"].state.settings.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            size = ascii_int(declared.decode("latin-1"))
            refusal = None
            if size is None:
                refusal = json_error(
                    422,
                    "invalid_request",
                    "the request is not valid",
                    [{"loc": ["header", "content-length"], "msg": "must be ASCII digits"}],
                )
            elif size > limit:
                refusal = json_error(413, "body_too_large", BodyTooLarge(limit).detail)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def _template_pattern(path: str) -> re.Pattern[str]:
    """A route template (`/fhir/{resource_type}/{resource_id}`) as the paths it matches."""
    parts = re.split(r"(\{[^/}]+\})", path)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


def allowed_methods(request: Request) -> list[str]:
    """The methods any route serves at this request's path, from the app's OpenAPI paths."""
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(
        request.app.state, "allowed_methods", None
    )
    if table is None:
        paths = request.app.openapi()["paths"]
        table = [(_template_pattern(p), [m.upper() for m in ops]) for p, ops in paths.items()]
        request.app.state.allowed_methods = table
    path = request.url.path.removesuffix("/") or "/"
    return sorted({m for pattern, methods in table if pattern.match(path) for m in methods})


def render(exc: TrialbridgeError, *, fhir: bool) -> Response:
    """A refusal as the endpoint's error shape: OperationOutcome under /fhir, else JSON."""
    if isinstance(exc, OAuthError):  # RFC 6749 §5.2, whatever the path
        return JSONResponse(
            {"error": exc.error, "error_description": exc.description},
            status_code=exc.status,
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )
    if isinstance(exc, AuthError):
        challenge = f'Bearer error="{exc.code}"'
        if exc.status == 401 and exc.code == "invalid_token" and "required" in exc.message:
            challenge = "Bearer"  # RFC 6750 §3.1: no error code when no token was sent
        headers = {"WWW-Authenticate": challenge}
        if fhir:
            code = "login" if exc.status == 401 else "forbidden"
            return outcome_response(exc.status, [Issue(code, exc.message)], headers)
        return json_error(exc.status, exc.code, exc.message, headers=headers)
    if isinstance(exc, RateLimitedError):  # RFC 6585 §4; FHIR's issue type for it: throttled
        headers = {"Retry-After": str(exc.retry_after)}
        if fhir:
            return outcome_response(exc.status, [Issue("throttled", str(exc))], headers)
        return json_error(exc.status, "rate_limited", str(exc), headers=headers)
    if isinstance(exc, DatabaseUnavailableError) and not fhir:
        return json_error(exc.status, "database_unavailable", "the database is unavailable")
    if isinstance(exc, FhirError):
        if fhir:
            return outcome_response(exc.status, exc.issues)
        return json_error(exc.status, exc.issues[0].code, str(exc))
    if isinstance(exc, NotReadyError):
        headers = {"Retry-After": str(exc.retry_after)}
        return json_error(exc.status, exc.code, exc.message, exc.details, headers=headers)
    if isinstance(exc, ApiError):
        return json_error(exc.status, exc.code, exc.message, exc.details)
    if fhir:
        return outcome_response(exc.status, [Issue("processing", str(exc))])
    return json_error(exc.status, "refused", str(exc))


def install(app: FastAPI) -> None:
    """Register the handlers on the app."""

    @app.exception_handler(TrialbridgeError)
    async def _refused(request: Request, exc: TrialbridgeError) -> Response:
        if isinstance(exc, FhirError):
            count_refusal(request, exc.status)
        return render(exc, fhir=_is_fhir(request))

    @app.exception_handler(InvalidContentError)
    async def _invalid(request: Request, exc: InvalidContentError) -> Response:
        err = FhirError.from_invalid(exc)
        count_refusal(request, err.status)
        return outcome_response(err.status, err.issues)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110: every method served at this path, not one route's
            headers["Allow"] = ", ".join(allowed_methods(request))
        if _is_fhir(request):
            code = _HTTP_CODES.get(exc.status_code, "processing")
            text = "no such FHIR endpoint" if exc.status_code == 404 else str(exc.detail)
            return outcome_response(
                exc.status_code,
                [Issue(code, f"{request.method} {request.url.path}: {text}")],
                headers or None,
            )
        if exc.status_code == 400 and exc.detail == _UNPARSEABLE_BODY:
            problem = "cannot be parsed as JSON (bytes that are not UTF-8, or nested too deeply)"
            return json_error(
                422,
                "invalid_request",
                "the request is not valid",
                [{"loc": ["body"], "msg": problem}],
            )
        if isinstance(exc, BodyTooLarge):
            return json_error(413, "body_too_large", str(exc.detail))
        if isinstance(exc, BodyTimeout):
            return json_error(408, "request_timeout", str(exc.detail), headers=headers)
        if isinstance(exc, LargeBodiesBusy):
            return json_error(503, "server_busy", str(exc.detail), headers=headers)
        return json_error(exc.status_code, "http_error", str(exc.detail), headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        if _is_fhir(request):
            issues = [
                Issue("invalid", f"{'.'.join(map(str, p['loc']))}: {p['msg']}") for p in problems
            ]
            return outcome_response(400, issues)
        return json_error(422, "invalid_request", "the request is not valid", problems)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # Not a server error: the client went away mid-body. One line, no traceback; the status
        # (nginx's 499) is what the access log and the audit trail record, nobody receives it.
        log.info(
            "client disconnected before its request body arrived (%s)", route_of(request.scope)
        )
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, route_of(request.scope))
        if _is_fhir(request):
            return outcome_response(
                500, [Issue("exception", "internal error; nothing was written")]
            )
        return json_error(500, "internal_error", "internal error")
