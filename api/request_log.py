"""Request ids and the access log: one JSON line per request, with nothing that identifies a patient.

An access line names the route template (`/fhir/{resource_type}/{resource_id}`), never the path
or the query string, whose ids and search values (an MRN, a name) are patient data. The request
id comes from a well-formed `X-Request-Id` or is made here, is echoed in the response, and is on
every log line written while the request runs, so one request's lines can be found together.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.infra.metrics import observe_request

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{1,64}")
access = logging.getLogger("trialbridge.access")


class JsonFormatter(logging.Formatter):
    """Every log record as one JSON object: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            body["request_id"] = request_id
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def _with_request_id(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.request_id = REQUEST_ID.get()  # taken when the line is written, in its context
        return record

    make_record.request_ids = True  # type: ignore[attr-defined]
    return make_record


def configure(level: str) -> None:
    """JSON lines on stderr, once per process (a host that configured logging keeps its own)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "request_ids", False):
        logging.setLogRecordFactory(_with_request_id(factory))
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level)


def route_of(scope: Scope) -> str:
    """The matched route's template, or a placeholder that carries no part of the path."""
    route = scope.get("route")
    template = getattr(route, "path", None) if route is not None else None
    return template if isinstance(template, str) else "(no route)"


def route_path(scope: Scope) -> str:
    """The path the app routes on: without the root path a proxy or a mount put in front."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


class RequestLog:
    """ASGI middleware: a request id on every line and in `X-Request-Id`, then the access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        request_id = sent if _WELL_FORMED.fullmatch(sent) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500  # what the client gets if the app dies before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_of(scope)
            observe_request(scope.get("method"), route, status, elapsed)
            client = scope.get("state", {}).get("client")
            access.info(
                "request",
                extra={
                    "fields": {
                        "method": scope.get("method"),
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 1),
                        "client": client,
                    }
                },
            )
            REQUEST_ID.reset(token)
