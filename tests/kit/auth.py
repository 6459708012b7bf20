"""Client keys, signed client assertions and tokens, as a hospital's backend service makes them."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from service.access.tokens import ASSERTION_TYPE, GRANT_TYPE


def ec_key(kid: str) -> ECKey:
    """A P-384 key for ES384."""
    return ECKey.import_key({**ECKey.generate_key("P-384").as_dict(private=True), "kid": kid})


def rsa_key(kid: str) -> RSAKey:
    """A 2048-bit RSA key for RS384."""
    return RSAKey.import_key({**RSAKey.generate_key(2048).as_dict(private=True), "kid": kid})


def jwks(*keys: ECKey | RSAKey) -> dict[str, Any]:
    """The public JWKS a client registers."""
    return {"keys": [k.as_dict(private=False) for k in keys]}


def signed(key: ECKey | RSAKey, claims: dict[str, Any], **header: Any) -> str:
    """A compact JWS of these claims (ES384 for EC keys, RS384 for RSA, unless `alg` says)."""
    alg = header.pop("alg", "ES384" if isinstance(key, ECKey) else "RS384")
    head = {"alg": alg, "kid": key.kid, "typ": "JWT", **header}
    return jwt.encode(head, claims, key, algorithms=[alg])


def unsigned(claims: dict[str, Any], **header: Any) -> str:
    """An `alg: none` token: what a careless verifier accepts."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', **header})}.{part(claims)}."


def assertion(key: ECKey | RSAKey, client: str, token_url: str, **claims: Any) -> str:
    """A SMART client assertion valid for 4 minutes; `claims` override or add claims."""
    body = {
        "iss": client,
        "sub": client,
        "aud": token_url,
        "exp": int(time.time()) + 240,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    return signed(key, {k: v for k, v in body.items() if v is not None})


def token_request(base: str, client_assertion: str, scope: str, **form: str) -> httpx.Response:
    """POST /auth/token with a client_credentials form."""
    data = {
        "grant_type": GRANT_TYPE,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion,
        "scope": scope,
        **form,
    }
    return httpx.post(f"{base}/auth/token", data=data, timeout=30)


def access_token(base: str, key: ECKey | RSAKey, client: str, scope: str) -> str:
    """A token for `client`, or the test fails saying why not."""
    answer = token_request(base, assertion(key, client, f"{base}/auth/token"), scope)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a token."""
    return {"authorization": f"Bearer {token}"}
