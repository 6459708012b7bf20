"""Only hosts on an allow-list may shape the URLs this service writes (Location, fullUrl, links).

Without `TRIALBRIDGE_BASE_URL` the service builds its URLs from the request's Host header, so an
attacker's `Host: evil.example` would come back in `Location` and Bundle `fullUrl`s (and be
cached, or followed by a client). A request naming another host gets 400 before any route runs;
health checks and metrics are exempt (probes and scrapers name the pod's address).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import is_fhir_path, json_error
from api.fhir_http import outcome_response
from fhir_mapping.issues import Issue

_EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})


def host_of(header: str) -> str:
    """The host name of a Host header, without its port (IPv6 literals without brackets)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed(host: str, allow: list[str]) -> bool:
    """Exact names, or `*.example.org` for any subdomain."""
    return any(
        host == a or (a.startswith("*.") and host.endswith(a[1:]) and host != a[2:]) for a in allow
    )


class HostGuard:
    """ASGI middleware: 400 for a Host that is not on the deployment's allow-list."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        allow = (
            scope["app"].state.settings.host_allow_list()
            if scope["type"] == "http" and scope.get("path") not in _EXEMPT
            else None
        )
        if allow is None:
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
        if allowed(host_of(sent), allow):
            await self.app(scope, receive, send)
            return
        message = (
            f"Host {sent[:100]!r} is not one this service answers to; set TRIALBRIDGE_BASE_URL "
            "(or TRIALBRIDGE_ALLOWED_HOSTS) to the name clients use"
        )
        if is_fhir_path(str(scope.get("path", ""))):
            refusal = outcome_response(400, [Issue("invalid", message)])
        else:
            refusal = json_error(400, "invalid_host", message)
        await refusal(scope, receive, send)
