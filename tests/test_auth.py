"""Access control over real HTTP on both backends: SMART Backend Services tokens and scopes.

The app runs with authentication on (the default). Clients are registered as `trialbridge client
add` registers them; every token comes from POST /auth/token, except the forged ones below, which
are signed with the service's own key (read from the database) or none to prove the verifier
checks what it must.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from sqlalchemy import Engine, text

from service.access.clients import add_client, bootstrap_admin, list_clients, revoke_client
from service.access.tokens import AUDIENCE, ISSUER, REVOCATION_CHECK_SECONDS
from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON, counts
from tests.kit import fhir as kit
from tests.kit.auth import (
    access_token,
    assertion,
    bearer,
    ec_key,
    jwks,
    rsa_key,
    signed,
    token_request,
    unsigned,
)
from tests.kit.live import served

NCT = "NCT06088771"
CIRAE = "cirae-dupilumab"
NAME = "Zyxwvut Qwerty"
MRN = "MRN-ZQ-777"
BIN = Path(sys.executable).parent
EHR_KEY, MONITOR_KEY, STATS_KEY = ec_key("ehr-1"), rsa_key("monitor-1"), ec_key("stats-1")
OBSERVER_KEY, ADMIN_KEY, GONE_KEY = ec_key("obs-1"), ec_key("adm-1"), ec_key("gone-1")
CLIENTS: dict[str, tuple[ECKey | RSAKey, list[str]]] = {
    "ehr": (EHR_KEY, ["system/*.cruds"]),
    "monitor": (MONITOR_KEY, [f"study/{NCT}.read", f"study/{NCT}.deviations.write"]),
    "stats": (STATS_KEY, [f"study/{CIRAE}.read"]),
    "observer": (OBSERVER_KEY, ["system/Observation.c", "system/Patient.rs"]),
    "ops": (ADMIN_KEY, ["admin"]),
    "gone": (GONE_KEY, ["system/*.rs"]),
}


@dataclass
class Secured:
    """A running app with authentication on, its engine, and a token per client."""

    url: str
    engine: Engine
    tokens: dict[str, str]

    def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        """GET with an optional bearer token."""
        headers = bearer(token) if token is not None else {}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def secured(backend: str, new_database: Any) -> Iterator[Secured]:
    """The app with authentication on, six registered clients, and one enrolled patient."""
    settings = Settings(
        database_url=str(new_database(backend)), auth_disabled=False, webhook_interval_seconds=0
    )
    with served(settings) as running:
        yield _secure(running.url, running.engine)


def _secure(url: str, engine: Engine) -> Secured:
    """Register the clients, get their tokens, revoke one, and store the patient."""
    for name, (key, scopes) in CLIENTS.items():
        add_client(engine, name, scopes, jwks=jwks(key))
    tokens = {
        name: access_token(url, key, name, " ".join(scopes))
        for name, (key, scopes) in CLIENTS.items()
    }
    revoke_client(engine, "gone")
    patient = kit.patient(id="zq", name=[{"family": "Qwerty", "given": ["Zyxwvut"]}], mrn=MRN)
    posted = httpx.put(
        f"{url}/fhir/Patient/zq",
        json=patient,
        headers={**FHIR_JSON, **bearer(tokens["ehr"])},
        timeout=30,
    )
    assert posted.status_code == 201, posted.text
    return Secured(url, engine, tokens)


def _server_key(engine: Engine) -> ECKey:
    with engine.connect() as conn:
        (raw,) = conn.execute(text("SELECT private_jwk FROM signing_key")).one()
    return ECKey.import_key(json.loads(raw))


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "ehr",
        "scope": "system/*.cruds study/*.read",
        "iat": now,
        "nbf": now,
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
        **changes,
    }
    return {k: v for k, v in body.items() if v is not None}


def _forged(engine: Engine) -> dict[str, str]:
    """Tokens a verifier must refuse, each wrong in one way."""
    key = _server_key(engine)
    other = ec_key(str(key.kid))  # a second issuer's key under the same kid
    public_as_secret = OctKey.import_key(json.dumps(key.as_dict(private=False)).encode())
    hs256 = jwt.encode(
        {"alg": "HS256", "kid": key.kid}, _claims(), public_as_secret, algorithms=["HS256"]
    )
    return {
        "malformed": "not-a-jwt",
        "expired": signed(key, _claims(exp=int(time.time()) - 3600), alg="ES384"),
        "not yet valid": signed(key, _claims(nbf=int(time.time()) + 3600), alg="ES384"),
        "wrong audience": signed(key, _claims(aud="https://elsewhere.example"), alg="ES384"),
        "wrong issuer": signed(key, _claims(iss="https://idp.example"), alg="ES384"),
        "unknown kid": signed(ec_key("nobody"), _claims(), alg="ES384"),
        "alg none": unsigned(_claims(), kid=key.kid),
        "HS256 with the public key": hs256,
        "second issuer, same kid": signed(other, _claims(), alg="ES384"),
    }


PROTECTED = [f"/fhir/Patient?identifier={MRN}", f"/api/v1/studies/{NCT}/subjects"]


@pytest.mark.parametrize("path", PROTECTED)
def test_no_token_is_401_with_a_bearer_challenge(secured: Secured, path: str) -> None:
    answer = secured.get(path)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    body = answer.json()
    if path.startswith("/fhir"):
        assert [i["code"] for i in body["issue"]] == ["login"]
    else:
        assert body["error"]["code"] == "invalid_token"
    assert MRN not in answer.text
    assert "Zyxwvut" not in answer.text


@pytest.mark.parametrize("path", PROTECTED)
def test_every_forged_token_is_refused_alike(secured: Secured, path: str) -> None:
    for why, token in _forged(secured.engine).items():
        answer = secured.get(path, token)
        assert answer.status_code == 401, why
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"', why
        assert MRN not in answer.text, why
        assert "Zyxwvut" not in answer.text, why
        assert why not in answer.text  # the reason is logged, never told


def test_a_revoked_clients_tokens_stop_working(secured: Secured) -> None:
    engine = secured.engine
    key, scopes = EHR_KEY, ["system/*.rs", f"study/{NCT}.read"]
    add_client(engine, "temp", scopes, jwks=jwks(key))
    token = access_token(secured.url, key, "temp", " ".join(scopes))
    for path in PROTECTED:
        assert secured.get(path, token).status_code == 200, path
    revoke_client(engine, "temp")
    time.sleep(REVOCATION_CHECK_SECONDS + 0.2)  # how long a replica may trust its last look
    for path in PROTECTED:
        refused = secured.get(path, token)
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"', path
    assert secured.get(PROTECTED[0], secured.tokens["gone"]).status_code == 401


def test_a_valid_token_reads_and_its_scopes_limit_it(secured: Secured) -> None:
    found = secured.get(f"/fhir/Patient?identifier={MRN}", secured.tokens["ehr"])
    assert found.status_code == 200
    assert [e["resource"]["id"] for e in found.json()["entry"]] == ["zq"]
    refused = secured.get("/fhir/Patient/zq", secured.tokens["monitor"])  # no system scopes
    assert refused.status_code == 403
    assert refused.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
    assert [i["code"] for i in refused.json()["issue"]] == ["forbidden"]
    assert "Zyxwvut" not in refused.text
    reads = secured.get("/fhir/Patient/zq", secured.tokens["observer"])  # Patient.rs
    assert reads.status_code == 200
    writes = httpx.put(
        f"{secured.url}/fhir/Patient/zq",
        json=kit.patient(id="zq"),
        headers={**FHIR_JSON, **bearer(secured.tokens["observer"])},
        timeout=30,
    )
    assert writes.status_code == 403


def test_a_study_token_sees_its_study_only(secured: Secured) -> None:
    listed = secured.get("/api/v1/studies", secured.tokens["stats"])
    assert [s["id"] for s in listed.json()["studies"]] == [CIRAE]
    for path in (
        f"/api/v1/studies/{NCT}",
        f"/api/v1/studies/{NCT}/subjects",
        f"/api/v1/studies/{NCT}/deviations",
        f"/api/v1/studies/{NCT}/outcomes",
        f"/api/v1/studies/{NCT}/outcomes/subjects",
        f"/api/v1/studies/{NCT}/outcomes/report.html",
        f"/api/v1/studies/{NCT}/outcomes/report.pdf",
        f"/api/v1/studies/{NCT}/export/sdtm/dm.json",
        f"/api/v1/studies/{NCT}/export/sdtm/define.xml",
    ):
        hidden = secured.get(path, secured.tokens["stats"])
        assert hidden.status_code == 404, path
        assert hidden.json()["error"] == {
            "status": 404,
            "code": "study_not_found",
            "message": f"no study '{NCT}'; known: {CIRAE}",
            "details": [],
        }
    assert (
        secured.get(f"/api/v1/studies/{CIRAE}/subjects", secured.tokens["stats"]).status_code == 200
    )
    mine = secured.get(f"/api/v1/studies/{NCT}/subjects", secured.tokens["monitor"])
    assert mine.status_code == 200
    export = secured.get(f"/api/v1/studies/{NCT}/export/sdtm/dm.json", secured.tokens["monitor"])
    assert (export.status_code, export.json()["name"]) == (200, "DM")
    assert secured.get(f"/api/v1/studies/{NCT}/export/sdtm/dm.json").status_code == 401
    assert secured.get("/api/v1/studies", secured.tokens["ehr"]).json() == {"studies": []}


def test_writes_of_the_study_api_need_their_scopes(secured: Secured) -> None:
    patch = httpx.patch(
        f"{secured.url}/api/v1/studies/{NCT}/deviations/DEV-NONE",
        json={"by": "monitor@site", "status": "acknowledged"},
        headers={**bearer(secured.tokens["stats"]), "if-match": 'W/"1"'},
        timeout=30,
    )
    assert patch.status_code == 404  # the study is not the stats client's to see
    subscribe = httpx.post(
        f"{secured.url}/api/v1/subscriptions",
        json={"url": "https://ctms.example.org/hook", "events": ["deviation.opened"]},
        headers=bearer(secured.tokens["monitor"]),
        timeout=30,
    )
    assert subscribe.status_code == 403
    assert subscribe.json()["error"]["code"] == "insufficient_scope"
    listed = secured.get("/api/v1/subscriptions", secured.tokens["ops"])
    assert listed.json() == {"subscriptions": []}


def test_a_transaction_with_one_entry_out_of_scope_writes_nothing(secured: Secured) -> None:
    before = counts(secured.engine)
    entries = (
        kit.post_entry(kit.observation(code="weight", patient="zq")),
        kit.put_entry(kit.patient(id="zq2")),
    )
    answer = httpx.post(
        f"{secured.url}/fhir",
        content=kit.transaction(*entries),
        headers={**FHIR_JSON, **bearer(secured.tokens["observer"])},
        timeout=30,
    )
    assert answer.status_code == 403
    (issue,) = answer.json()["issue"]
    assert (issue["code"], issue["expression"]) == ("forbidden", ["Bundle.entry[1]"])
    assert counts(secured.engine) == before  # every table
    answered = httpx.post(
        f"{secured.url}/fhir",
        content=kit.transaction(*entries, type="batch"),
        headers={**FHIR_JSON, **bearer(secured.tokens["observer"])},
        timeout=30,
    )
    assert answered.status_code == 200
    statuses = [e["response"]["status"] for e in answered.json()["entry"]]
    assert statuses == ["201 Created", "403 Forbidden"]


def test_the_token_endpoint_refuses_what_smart_refuses(secured: Secured) -> None:
    url = f"{secured.url}/auth/token"
    good = assertion(EHR_KEY, "ehr", url)
    assert token_request(secured.url, good, "system/*.rs").status_code == 200
    replay = token_request(secured.url, good, "system/*.rs")
    assert (replay.status_code, replay.json()["error"]) == (401, "invalid_client")
    cases = {
        "revoked client": (assertion(GONE_KEY, "gone", url), "system/*.rs", "invalid_client"),
        "wrong aud": (
            assertion(EHR_KEY, "ehr", "https://x/auth/token"),
            "system/*.rs",
            "invalid_client",
        ),
        "exp too far": (
            assertion(EHR_KEY, "ehr", url, exp=int(time.time()) + 3600),
            "system/*.rs",
            "invalid_client",
        ),
        "no jti": (assertion(EHR_KEY, "ehr", url, jti=None), "system/*.rs", "invalid_client"),
        "issued in the future": (
            assertion(EHR_KEY, "ehr", url, iat=int(time.time()) + 3600),
            "system/*.rs",
            "invalid_client",
        ),
        "another's key": (assertion(STATS_KEY, "ehr", url), "system/*.rs", "invalid_client"),
        "sub is not iss": (
            assertion(EHR_KEY, "ehr", url, sub="admin"),
            "system/*.rs",
            "invalid_client",
        ),
        "scope not granted": (assertion(EHR_KEY, "ehr", url), "admin", "invalid_scope"),
        "unknown scope": (assertion(EHR_KEY, "ehr", url), "everything", "invalid_scope"),
    }
    for why, (signed_assertion, scope, error) in cases.items():
        answer = token_request(secured.url, signed_assertion, scope)
        assert answer.json()["error"] == error, why
        assert answer.status_code == (400 if error == "invalid_scope" else 401), why
        assert answer.headers["cache-control"] == "no-store"
    grant = token_request(
        secured.url, assertion(EHR_KEY, "ehr", url), "system/*.rs", grant_type="password"
    )
    assert (grant.status_code, grant.json()["error"]) == (400, "unsupported_grant_type")


def test_an_issued_token_is_short_lived_and_carries_the_granted_scopes(secured: Secured) -> None:
    answer = token_request(
        secured.url,
        assertion(MONITOR_KEY, "monitor", f"{secured.url}/auth/token"),
        f"study/{NCT}.read",
    )
    body = answer.json()
    assert (body["token_type"], body["expires_in"], body["scope"]) == (
        "bearer",
        300,
        f"study/{NCT}.read",
    )
    claims = jwt.decode(
        body["access_token"], _server_key(secured.engine), algorithms=["ES384"]
    ).claims
    assert claims["exp"] - claims["iat"] == 300
    assert (claims["sub"], claims["iss"], claims["aud"]) == ("monitor", ISSUER, AUDIENCE)


def test_discovery_and_health_need_no_token(secured: Secured) -> None:
    smart = secured.get("/.well-known/smart-configuration").json()
    assert smart["token_endpoint"] == f"{secured.url}/auth/token"
    assert smart["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200
    metadata = secured.get("/fhir/metadata").json()
    security = metadata["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert security["extension"][0]["extension"] == [
        {"url": "token", "valueUri": f"{secured.url}/auth/token"}
    ]
    schemes = secured.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes == {
        "HTTPBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An access token from POST /auth/token",
        }
    }


def test_the_first_start_registers_a_local_admin_with_a_private_key(
    tmp_path: Path, new_database: Any
) -> None:
    engine = make_engine(Settings(database_url=new_database("sqlite")))
    migrate.upgrade(engine)
    key_file = tmp_path / "var" / "admin-key.jwk"
    assert bootstrap_admin(engine, key_file) is True
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = ECKey.import_key(json.loads(key_file.read_text()))
    (admin,) = list_clients(engine)
    assert (admin.name, admin.key_ids, admin.revoked) == ("admin", (key.kid,), False)
    assert set(admin.scopes) >= {"admin", "audit", "system/*.cruds", "study/*.read"}
    assert bootstrap_admin(engine, tmp_path / "other.jwk") is False  # only on an empty install
    assert not (tmp_path / "other.jwk").exists()
    engine.dispose()


def test_authentication_off_is_refused_beyond_loopback(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TRIALBRIDGE_AUTH_DISABLED": "true",
        "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    refused = subprocess.run(
        [str(BIN / "trialbridge"), "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "TRIALBRIDGE_AUTH_DISABLED=true is allowed only on a loopback address" in refused.stderr
    assert not (tmp_path / "x.db").exists()  # refused before touching anything


def test_the_client_commands_round_trip(tmp_path: Path, new_database: Any) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "TRIALBRIDGE_AUTH_DISABLED"},
        "DATABASE_URL": str(new_database("sqlite")),
    }
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(jwks(ec_key("ctms-1"))))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "trialbridge"), *args], env=env, capture_output=True, text=True, timeout=60
        )

    added = cli("client", "add", "ctms", "--scope", f"study/{NCT}.read", "--jwks", str(keys))
    assert (added.returncode, added.stdout) == (0, f"client ctms: study/{NCT}.read\n")
    assert cli("client", "add", "bad", "--scope", "all", "--jwks", str(keys)).returncode == 1
    listed = cli("client", "list")
    assert listed.stdout == f"ctms\tactive\tstudy/{NCT}.read\tkeys: ctms-1\n"
    assert cli("client", "revoke", "ctms").stdout == "client ctms revoked\n"
    assert cli("client", "list").stdout.startswith("ctms\trevoked\t")
    assert cli("client", "revoke", "ctms").returncode == 1


CONDITIONAL_CLIENTS: dict[str, tuple[ECKey | RSAKey, list[str]]] = {
    "creator": (ec_key("cr-1"), ["system/Patient.c", "system/Observation.c"]),
    "updater": (ec_key("up-1"), ["system/Patient.u"]),
    "feed": (ec_key("fd-1"), ["system/Patient.crs", "system/Observation.c"]),
}


def _tokens_for(
    secured: Secured, clients: dict[str, tuple[ECKey | RSAKey, list[str]]]
) -> dict[str, str]:
    tokens = {}
    for name, (key, scopes) in clients.items():
        if not any(c.name == name for c in list_clients(secured.engine)):
            add_client(secured.engine, name, scopes, jwks=jwks(key))
        tokens[name] = access_token(secured.url, key, name, " ".join(scopes))
    return tokens


def test_conditional_operations_need_the_search_and_read_they_perform(secured: Secured) -> None:
    tokens = _tokens_for(secured, CONDITIONAL_CLIENTS)

    def call(method: str, path: str, token: str, body: Any, **headers: str) -> httpx.Response:
        return httpx.request(
            method,
            f"{secured.url}{path}",
            json=body,
            headers={**FHIR_JSON, **bearer(token), **headers},
            timeout=30,
        )

    before = counts(secured.engine)
    probe = {"If-None-Exist": f"identifier={MRN}"}
    leaked = call("POST", "/fhir/Patient", tokens["creator"], kit.patient(), **probe)
    assert leaked.status_code == 403  # a create-only token may not learn what matches
    assert "Zyxwvut" not in leaked.text
    matched = call("POST", "/fhir/Patient", tokens["feed"], kit.patient(), **probe)
    assert (matched.status_code, matched.json()["id"]) == (200, "zq")
    by_reference = kit.observation(
        code="weight", patient=None, subject={"reference": f"Patient?identifier={MRN}"}
    )
    refused = call("POST", "/fhir/Observation", tokens["creator"], by_reference)
    assert refused.status_code == 403
    assert "Patient/zq" not in refused.text
    assert call("POST", "/fhir/Observation", tokens["feed"], by_reference).status_code == 201
    created_by_update = call(
        "PUT", "/fhir/Patient/new-1", tokens["updater"], kit.patient(id="new-1")
    )
    assert created_by_update.status_code == 403  # an update that creates is a create
    conditional = call(
        "PUT", f"/fhir/Patient?identifier={MRN}", tokens["updater"], kit.patient(mrn=MRN)
    )
    assert conditional.status_code == 403  # it searches first
    grown = counts(secured.engine)
    assert grown["fhir_resource"] == before["fhir_resource"] + 1  # the feed's Observation only


def test_token_requests_are_small_and_never_repeat_a_parameter(secured: Secured) -> None:
    url = f"{secured.url}/auth/token"
    good = assertion(EHR_KEY, "ehr", url)
    repeated = httpx.post(
        url,
        content=(
            "grant_type=client_credentials&grant_type=client_credentials"
            "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
            f"&client_assertion={good}&scope=system%2F%2A.rs"
        ),
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert (repeated.status_code, repeated.json()["error"]) == (400, "invalid_request")
    huge = httpx.post(
        url,
        content=b"scope=" + b"a" * (70 * 1024),
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert (huge.status_code, huge.json()["error"]) == (413, "invalid_request")
    unknown = token_request(secured.url, assertion(EHR_KEY, "nobody", url), "system/*.rs")
    wrong_key = token_request(secured.url, assertion(STATS_KEY, "ehr", url), "system/*.rs")
    assert unknown.json() == wrong_key.json()  # client names cannot be probed
