"""/docs (Swagger UI) and /redoc from files installed with the service, not a CDN: hospital
networks are air-gapped, and a strict Content-Security-Policy lets the pages run only
same-origin script files."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

# Swagger UI and ReDoc as published on npm (byte for byte) in the `fastapi-offline` wheel.
_VENDOR = Path(str(files("fastapi_offline") / "static"))
# Our pages and the init scripts that replace FastAPI's inline ones.
_OWN = Path(__file__).with_name("docs_assets")

_JS, _CSS, _HTML = "text/javascript", "text/css", "text/html"
_COMMON = (
    "default-src 'self'",  # scripts, styles, fonts and fetches (the OpenAPI document, "Try it out")
    "img-src 'self' data:",  # both UIs draw their icons as data: URLs
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",  # Swagger UI's forms are handled by script, never submitted
    "frame-ancestors 'none'",
)
# No inline script anywhere (each page loads same-origin files only).
SWAGGER_POLICY = "; ".join(("script-src 'self'", *_COMMON))
# ReDoc's styled-components insert <style> elements: without inline styles it draws no menu
# and no search box. Its search Worker (a blob: URL) is refused: ReDoc then searches in the page.
REDOC_POLICY = "; ".join(("script-src 'self'", "style-src 'self' 'unsafe-inline'", *_COMMON))


@dataclass(frozen=True)
class _File:
    """One answer, read once at start-up: the pages are the same for every request."""

    body: bytes
    media_type: str
    headers: dict[str, str]


def _load(path: Path, media_type: str, policy: str | None = None) -> _File:
    body = path.read_bytes()
    # a content hash, so every replica and every restart answers the same ETag
    headers = {"etag": f'"{hashlib.sha256(body).hexdigest()[:32]}"', "cache-control": "no-cache"}
    if policy is not None:
        headers["content-security-policy"] = policy
    return _File(body, media_type, headers)


def _fresh(request: Request, etag: str) -> bool:
    """The client's copy is current (If-None-Match, weak comparison as RFC 9110 asks)."""
    sent = request.headers.get("if-none-match", "")
    return any(tag.strip().removeprefix("W/") in (etag, "*") for tag in sent.split(",") if tag)


def _endpoint(file: _File) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        """Answer the file, or 304 when the client's copy is current."""
        if _fresh(request, file.headers["etag"]):
            return Response(status_code=304, headers=file.headers)
        return Response(file.body, media_type=file.media_type, headers=file.headers)

    return serve


def docs_router() -> APIRouter:
    """The two pages and every file they load; a missing file stops start-up, naming it."""
    served = {
        "/docs": _load(_OWN / "swagger.html", _HTML, SWAGGER_POLICY),
        "/docs/swagger-ui-bundle.js": _load(_VENDOR / "swagger-ui-bundle.js", _JS),
        "/docs/swagger-ui.css": _load(_VENDOR / "swagger-ui.css", _CSS),
        "/docs/swagger-init.js": _load(_OWN / "swagger-init.js", _JS),
        "/docs/favicon.png": _load(_VENDOR / "favicon.png", "image/png"),
        "/redoc": _load(_OWN / "redoc.html", _HTML, REDOC_POLICY),
        "/redoc/redoc.standalone.js": _load(_VENDOR / "redoc.standalone.js", _JS),
        "/redoc/redoc-init.js": _load(_OWN / "redoc-init.js", _JS),
        "/redoc/redoc.css": _load(_OWN / "redoc.css", _CSS),
    }
    router = APIRouter(include_in_schema=False)
    for path, file in served.items():
        router.add_api_route(path, _endpoint(file), methods=["GET"])
    return router
