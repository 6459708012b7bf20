"""Tokens of a hospital's own authorization server, and clients that publish their keys at a URL.

The app trusts two external issuers: one whose keys are in a file, one whose JWKS is fetched from
a URL (respx plays that server; DNS is stubbed so the outbound-URL rules can run). Each token is
accepted only with its issuer's keys, algorithms and audience.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import respx

from service.access import keysets
from service.access.clients import add_client
from service.access.keysets import KeySets, KeySetUnavailable
from service.errors import ApiError
from service.infra.settings import Settings, TrustedIssuer
from service.notifications import outbound
from tests.kit.auth import assertion, bearer, ec_key, jwks, rsa_key, signed, token_request
from tests.kit.live import served
from tests.kit.receiver import receiving

FILE_ISSUER = "https://idp.hospital.example"
URL_ISSUER = "https://login.partner.example"
KEYS_URL = "https://keys.partner.example/jwks.json"
CLIENT_KEYS_URL = "https://ctms.partner.example/.well-known/jwks.json"
AUDIENCE = "https://trialbridge.hospital.example"
FILE_KEY, URL_KEY, CLIENT_KEY = rsa_key("hosp-1"), ec_key("partner-1"), ec_key("ctms-1")
IMPOSTOR = rsa_key("hosp-1")  # same kid as the file issuer's key, another key
PUBLIC = {"keys.partner.example": ["93.184.215.14"], "ctms.partner.example": ["93.184.215.14"]}


@dataclass
class App:
    """The app trusting the two issuers."""

    url: str
    engine: Any

    def patients(self, token: str) -> httpx.Response:
        """A search a token with `system/Patient.rs` may do."""
        return httpx.get(f"{self.url}/fhir/Patient", headers=bearer(token), timeout=30)


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Public addresses for the partner's hosts; nothing else resolves."""

    def resolve(host: str) -> list[str]:
        if host not in PUBLIC:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return PUBLIC[host]

    monkeypatch.setattr(outbound, "resolve_host", resolve)


@pytest.fixture(scope="module")
def app(backend: str, new_database: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The app with authentication on and two trusted issuers."""
    keys_file = tmp_path_factory.mktemp("idp") / "jwks.json"
    keys_file.write_text(json.dumps(jwks(FILE_KEY)))
    settings = Settings(
        database_url=str(new_database(backend)),
        auth_disabled=False,
        webhook_interval_seconds=0,
        auth_issuers=(
            TrustedIssuer(
                issuer=FILE_ISSUER, audience=AUDIENCE, jwks_file=keys_file, algorithms=("RS256",)
            ),
            TrustedIssuer(issuer=URL_ISSUER, audience=AUDIENCE, jwks_url=KEYS_URL),
        ),
    )
    with served(settings) as running:
        yield App(running.url, running.engine)


def _claims(issuer: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "svc-ehr",
        "client_id": "svc-ehr",
        "scope": "system/Patient.rs",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        **changes,
    }
    return {k: v for k, v in body.items() if v is not None}


def test_a_file_issuers_token_is_accepted_with_its_keys_alone(app: App) -> None:
    good = signed(FILE_KEY, _claims(FILE_ISSUER), alg="RS256")
    assert app.patients(good).status_code == 200
    refused = {
        "wrong audience": signed(FILE_KEY, _claims(FILE_ISSUER, aud="https://other"), alg="RS256"),
        "expired": signed(FILE_KEY, _claims(FILE_ISSUER, exp=int(time.time()) - 600), alg="RS256"),
        "same kid, other key": signed(IMPOSTOR, _claims(FILE_ISSUER), alg="RS256"),
        "algorithm not pinned": signed(FILE_KEY, _claims(FILE_ISSUER), alg="RS384"),
        "no scope": signed(FILE_KEY, _claims(FILE_ISSUER, scope=None), alg="RS256"),
        "issued in the future": signed(
            FILE_KEY, _claims(FILE_ISSUER, iat=int(time.time()) + 3600), alg="RS256"
        ),
        "untrusted issuer": signed(FILE_KEY, _claims("https://evil.example"), alg="RS256"),
    }
    for why, token in refused.items():
        answer = app.patients(token)
        assert answer.status_code == 401, why
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"', why
    narrow = signed(FILE_KEY, _claims(FILE_ISSUER, scope="system/Observation.rs"), alg="RS256")
    assert app.patients(narrow).status_code == 403


def test_a_url_issuers_keys_are_fetched_once_and_checked(app: App) -> None:
    with respx.mock(assert_all_mocked=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        keys = mock.get(KEYS_URL).respond(200, json=jwks(URL_KEY))
        token = signed(URL_KEY, _claims(URL_ISSUER, scp=["system/*.rs"], scope=None))
        assert app.patients(token).status_code == 200
        assert app.patients(token).status_code == 200
        assert keys.call_count == 1  # kept, not fetched per request
        other = signed(FILE_KEY, _claims(URL_ISSUER), alg="RS256")  # the other issuer's key
        assert app.patients(other).status_code == 401


def test_a_client_may_publish_its_keys_at_a_url(app: App) -> None:
    add_client(app.engine, "ctms", ["system/Patient.rs"], jwks_url=CLIENT_KEYS_URL)
    with pytest.raises(ApiError) as internal:
        add_client(app.engine, "lan", ["system/*.rs"], jwks_url="https://10.0.0.8/jwks")
    assert internal.value.code == "url_not_allowed"
    token_url = f"{app.url}/auth/token"
    with respx.mock(assert_all_mocked=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        mock.get(CLIENT_KEYS_URL).respond(200, json=jwks(CLIENT_KEY))
        answer = token_request(
            app.url, assertion(CLIENT_KEY, "ctms", token_url), "system/Patient.rs"
        )
        assert answer.status_code == 200, answer.text
        assert app.patients(answer.json()["access_token"]).status_code == 200
        forged = token_request(
            app.url, assertion(ec_key("ctms-1"), "ctms", token_url), "system/Patient.rs"
        )
        assert (forged.status_code, forged.json()["error"]) == (401, "invalid_client")


def test_a_jwks_url_is_fetched_from_the_address_it_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key set's host is resolved once, by the check, and the fetch connects to that answer
    (this machine, internal addresses allowed) with the URL's name in `Host`; the HTTP client
    never resolves the name again (a second answer could be an internal address)."""
    asked: list[str] = []

    def resolve(host: str) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(outbound, "resolve_host", resolve)
    with receiving(answer=json.dumps(jwks(URL_KEY)).encode()) as here:
        keys = KeySets(allow_private=True).from_url(here.url("keys.partner.example", "/jwks.json"))
    assert [key.kid for key in keys] == ["partner-1"]
    assert asked == ["keys.partner.example"]
    [arrival] = here.arrivals
    assert (arrival.method, arrival.path) == ("GET", "/jwks.json")
    assert arrival.headers["host"] == f"keys.partner.example:{here.port}"


def test_a_jwks_url_answering_more_than_a_key_set_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key-set host that streams megabytes does not fill memory: the fetch stops at the cap."""
    monkeypatch.setattr(outbound, "resolve_host", lambda host: ["127.0.0.1"])
    padded = {**jwks(URL_KEY), "padding": "x" * (keysets.MAX_JWKS_BYTES + 1)}
    with (
        receiving(answer=json.dumps(padded).encode()) as here,
        pytest.raises(KeySetUnavailable, match="larger than"),
    ):
        KeySets(allow_private=True).from_url(here.url("keys.partner.example", "/jwks.json"))
