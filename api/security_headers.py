"""Headers every answer carries so a browser never misreads, caches or frames patient data."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_ALWAYS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
# An API answer is data, never a page: no scripts, no framing. The documentation pages
# (api/docs_pages.py) send a policy of their own, which is kept.
_API_POLICY = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")


def _patient_data(path: str) -> bool:
    return (
        path.startswith(("/fhir", "/api/v1")) and path != "/fhir/metadata"
    ) or path == "/auth/token"


class SecurityHeaders:
    """ASGI middleware: nosniff, no referrer, no framing; `no-store` on patient data unless the
    route chose its own caching (a figure's ETag revalidation)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = [h for h in _ALWAYS if h[0] not in present]
                if _API_POLICY[0] not in present:
                    extra.append(_API_POLICY)
                if _patient_data(path) and b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = headers + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)
