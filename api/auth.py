"""Authentication at the edge: bearer tokens on every route, the token endpoint, SMART discovery."""

from __future__ import annotations

import ipaddress
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool

from api.rate_limit import charge_client
from service.access.clients import ADMIN_SCOPES
from service.access.scopes import PLAIN, Interaction, Scopes, StudyAction
from service.access.tokens import ASSERTION_ALGORITHMS, Principal, TokenService
from service.errors import ApiError, AuthError, OAuthError
from service.infra.settings import Settings

TOKEN_PATH = "/auth/token"
MAX_TOKEN_REQUEST_BYTES = 64 * 1024  # an assertion is a few kilobytes
# Loopback without authentication (TRIALBRIDGE_AUTH_DISABLED): everything is allowed.
_EVERYTHING = Scopes.of(ADMIN_SCOPES)
# Declares the scheme in the OpenAPI document so /docs can authorize; checking is ours.
_BEARER = HTTPBearer(auto_error=False, description="An access token from POST /auth/token")

router = APIRouter(tags=["auth"])


def public_base(request: Request) -> str:
    """The service's public base URL: configured, or as the client reached us."""
    settings: Settings = request.app.state.settings
    if settings.base_url:
        return settings.base_url.removesuffix("/fhir").rstrip("/")
    return str(request.base_url).rstrip("/")


async def principal(request: Request, _: Annotated[object, Depends(_BEARER)] = None) -> Principal:
    """Who is asking: the verified bearer token's client and scopes, else 401 invalid_token."""
    settings: Settings = request.app.state.settings
    if settings.auth_disabled:  # `serve` refuses this beyond loopback; each request is checked too
        peer = request.client.host if request.client else ""
        if not _loopback(peer):
            raise AuthError(401, "invalid_token", "authentication is off: loopback clients only")
        request.state.client = "local"
        charge_client(request, "local")
        return Principal("local", _EVERYTHING)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "invalid_token", "an access token is required (Authorization: Bearer)")
    tokens: TokenService = request.app.state.tokens
    token = token.strip()
    # a token verified before needs no thread: the signature check is what the thread is for
    who = tokens.cached(token)
    if who is None:
        who = await run_in_threadpool(tokens.verify, token)
    request.state.client = who.client  # for the access log
    charge_client(request, who.client)  # keyed on the verified client: no one spends another's
    return who


PrincipalDep = Annotated[Principal, Depends(principal)]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_fhir(who: Principal, resource_type: str, interaction: Interaction) -> None:
    """403 insufficient_scope unless the token's system scopes allow this interaction."""
    if not who.scopes.fhir(resource_type, interaction):
        raise AuthError(
            403,
            "insufficient_scope",
            f"the token's scopes do not allow {interaction!r} on {resource_type}",
        )


def require(who: Principal, allowed: bool, scope: str) -> None:
    """403 insufficient_scope naming the scope the request needs."""
    if not allowed:
        raise AuthError(403, "insufficient_scope", f"this needs the scope {scope}")


def visible_studies(who: Principal, study_ids: list[str]) -> list[str]:
    """The studies a token may read; the others do not exist for it."""
    return sorted(s for s in study_ids if who.scopes.study(s, "read"))


async def readable_study(request: Request, who: PrincipalDep) -> None:
    """404 study_not_found for a study the token may not read, exactly as for an unknown one."""
    study_id = request.path_params.get("study_id")
    if study_id is None:  # not a study's route
        return
    known = visible_studies(who, list(request.app.state.studies.protocols))
    if study_id not in known:
        raise ApiError(404, "study_not_found", f"no study {study_id!r}; known: {', '.join(known)}")


def study_scope(who: Principal, study_id: str, action: StudyAction) -> None:
    """403 insufficient_scope unless the token may do `action` in this (readable) study."""
    require(who, who.scopes.study(study_id, action), f"study/{study_id}.{action}")


@router.post(TOKEN_PATH, summary="Access token (SMART Backend Services: client_credentials)")
async def token(request: Request) -> JSONResponse:
    """Exchange a client assertion (RS384/ES384, signed with a registered key) for a token."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "send application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_TOKEN_REQUEST_BYTES:
            raise OAuthError("invalid_request", "the token request is too large", 413)
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True)
    except UnicodeDecodeError as exc:
        raise OAuthError("invalid_request", "the form must be ASCII (percent-encoded)") from exc
    form = dict(pairs)
    if len(form) != len(pairs):  # RFC 6749 §3.2: a parameter must not be repeated
        raise OAuthError("invalid_request", "a parameter is repeated")
    tokens: TokenService = request.app.state.tokens
    url = public_base(request) + TOKEN_PATH
    grant = await run_in_threadpool(tokens.exchange, form, url)
    request.state.client = grant.client  # the audit trail's agent of this login
    return JSONResponse(
        {
            "access_token": grant.access_token,
            "token_type": "bearer",
            "expires_in": grant.expires_in,
            "scope": grant.scope,
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


@router.get("/.well-known/smart-configuration", summary="SMART configuration (discovery)")
async def smart_configuration(request: Request) -> JSONResponse:
    """Where the token endpoint is and what it accepts (SMART App Launch 2.x, Backend Services)."""
    return JSONResponse(
        {
            "token_endpoint": public_base(request) + TOKEN_PATH,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
            "scopes_supported": [
                "system/*.cruds",
                "system/*.rs",
                "system/*.read",
                "system/*.write",
                "study/*.read",
                "study/*.deviations.write",
                *sorted(PLAIN),
            ],
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        }
    )
