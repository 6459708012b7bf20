"""The hospital of the pull tests: its SMART Backend Services token endpoint, Bulk Data `$export`
and NDJSON files as respx routes that check what a hospital would (tests/test_hospital_pull.py,
and tests/kit/hospital_worker.py for a `trialbridge worker` process)."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs

import httpx
import respx
from joserfc import jwt
from joserfc.jwk import RSAKey

from service.fhir.pull.client import ASSERTION_TYPE

BASE = "https://fhir.hospital.test/r4"
FILES = "https://files.hospital.test"
EVIL = "https://evil.example"
TOKEN_URL = f"{BASE}/auth/token"
CLIENT = "trialbridge-at-hospital"
T1 = "2027-01-01T02:00:00.000Z"
T2 = "2027-01-01T03:00:00.000Z"


def line(resource: dict[str, Any]) -> str:
    """A resource as one NDJSON line (no newline)."""
    return json.dumps(resource)


PATIENTS = [
    {"resourceType": "Patient", "id": f"hp{i}", "gender": "female", "birthDate": f"1960-01-0{i}"}
    for i in (1, 2)
]
CONDITIONS = [
    {
        "resourceType": "Condition",
        "id": f"hc{i}",
        "subject": {"reference": "Patient/hp1"},
        "code": {"text": "asthma"},
    }
    for i in (1, 2)
]
OBSERVATIONS = [
    {
        "resourceType": "Observation",
        "id": f"ho{i}",
        "status": "final",
        "code": {"text": "body weight"},
        "subject": {"reference": "Patient/hp2"},
    }
    for i in (1, 2)
]
MALFORMED = '{"resourceType": "Condition", "id": "hc9", '


class Hospital:
    """The hospital's FHIR and authorization servers, as respx routes with their own checks."""

    def __init__(self, public_key: RSAKey) -> None:
        self.public_key = public_key
        self.clock = time.time
        self.router = respx.Router(assert_all_called=False, assert_all_mocked=True)
        self.jtis: set[str] = set()
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self.kickoffs: list[dict[str, list[str]]] = []
        self.polls = 0
        self.manifest: dict[str, Any] = {}
        self.condition_attempts = 0
        self.observation_attempts = 0
        r = self.router
        r.get(f"{BASE}/.well-known/smart-configuration").respond(
            200, json={"token_endpoint": TOKEN_URL, "grant_types_supported": ["client_credentials"]}
        )
        r.post(TOKEN_URL).mock(side_effect=self.token)
        r.get(f"{BASE}/Group/trial-g1/$export").mock(side_effect=self.kickoff)
        r.get(f"{BASE}/$export-status/job").mock(side_effect=self.status)
        r.get(f"{FILES}/out/Patient.ndjson").mock(
            side_effect=self.authorized(lambda: "\n".join(map(line, PATIENTS)) + "\n")
        )
        r.get(f"{BASE}/files/Condition.ndjson").mock(side_effect=self.conditions)
        r.get(f"{FILES}/out/Observation.ndjson").mock(side_effect=self.observations)
        self.evil = r.get(url__startswith=EVIL).respond(200, text="")

    def token(self, request: httpx.Request) -> httpx.Response:
        """Checks the client assertion's signature and claims as a SMART server must."""
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        assert form["grant_type"] == "client_credentials"
        assert form["client_assertion_type"] == ASSERTION_TYPE
        assert form["scope"] == "system/*.rs"
        token = jwt.decode(form["client_assertion"], self.public_key, algorithms=["RS384"])
        assert token.header["alg"] == "RS384"
        assert token.header["kid"] == "hospital-key-1"
        claims = token.claims
        now = self.clock()
        assert claims["iss"] == claims["sub"] == CLIENT
        assert claims["aud"] == TOKEN_URL
        assert now - 5 < claims["exp"] <= now + 300
        assert claims["jti"] not in self.jtis
        self.jtis.add(claims["jti"])
        issued = f"tok-{len(self.issued) + 1}"
        self.issued.append(issued)
        return httpx.Response(
            200, json={"access_token": issued, "token_type": "bearer", "expires_in": 300}
        )

    def valid(self, request: httpx.Request) -> bool:
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        return auth.startswith("Bearer ") and token in self.issued and token not in self.revoked

    def authorized(self, body: Any) -> Any:
        def answer(request: httpx.Request) -> httpx.Response:
            if not self.valid(request):
                return httpx.Response(401)
            return httpx.Response(200, text=body())

        return answer

    def kickoff(self, request: httpx.Request) -> httpx.Response:
        assert self.valid(request)
        assert request.headers["prefer"] == "respond-async"
        self.kickoffs.append(parse_qs(request.url.query.decode()))
        self.polls = 0
        return httpx.Response(202, headers={"Content-Location": f"{BASE}/$export-status/job"})

    def status(self, request: httpx.Request) -> httpx.Response:
        assert self.valid(request)
        self.polls += 1
        if self.polls == 1:
            return httpx.Response(202, headers={"Retry-After": "2", "X-Progress": "10%"})
        if self.polls == 2:
            return httpx.Response(202, headers={"Retry-After": "1"})
        return httpx.Response(200, json=self.manifest)

    def conditions(self, request: httpx.Request) -> httpx.Response:
        assert self.valid(request)
        self.condition_attempts += 1
        if self.condition_attempts == 1:
            return httpx.Response(429, headers={"Retry-After": "1"})
        lines = [line(CONDITIONS[0]), MALFORMED, line(CONDITIONS[1])]
        # the token expires at the hospital once the Condition file is out
        self.revoked.update(self.issued)
        return httpx.Response(200, text="\n".join(lines) + "\n")

    def observations(self, request: httpx.Request) -> httpx.Response:
        self.observation_attempts += 1
        if not self.valid(request):
            return httpx.Response(401)
        return httpx.Response(200, text="\n".join(map(line, OBSERVATIONS)))


def manifest(transaction_time: str, outputs: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "transactionTime": transaction_time,
        "request": f"{BASE}/Group/trial-g1/$export",
        "requiresAccessToken": True,
        "output": [{"type": t, "url": u} for t, u in outputs],
        "error": [],
    }


def hospital_for_everyone(rsa: RSAKey) -> Hospital:
    """The hospital, exporting two Patients and three Condition lines (one malformed) at T1."""
    hospital = Hospital(RSAKey.import_key(rsa.as_dict(private=False)))
    hospital.manifest = manifest(
        T1,
        [
            ("Patient", f"{FILES}/out/Patient.ndjson"),
            ("Condition", f"{BASE}/files/Condition.ndjson"),
        ],
    )
    return hospital
