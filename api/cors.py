"""CORS for the browser origins a deployment names (`TRIALBRIDGE_CORS_ORIGINS`); off otherwise.

Starlette's CORSMiddleware does the work; this only builds it from the settings the app starts
with (they are read at start-up, after the middleware stack is declared).
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

_HEADERS = [
    "authorization",
    "content-type",
    "if-match",
    "if-none-match",
    "if-none-exist",
    "prefer",
    "x-request-id",
]
_EXPOSED = [
    "location",
    "etag",
    "last-modified",
    "x-request-id",
    "www-authenticate",
    "link",
    "retry-after",
]


class Cors:
    """ASGI middleware: CORS answers for the configured origins only; without any, none at all."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._cors: CORSMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origins = scope["app"].state.settings.cors_allow_list() if scope["type"] == "http" else []
        if not origins:
            await self.app(scope, receive, send)
            return
        if self._cors is None:
            self._cors = CORSMiddleware(
                self.app,
                allow_origins=origins,
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=_HEADERS,
                expose_headers=_EXPOSED,
                max_age=600,
            )
        await self._cors(scope, receive, send)
