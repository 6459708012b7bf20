"""Every answer tells a browser not to sniff, frame, refer or (for patient data) store it."""

from __future__ import annotations

import httpx

from api.docs_pages import SWAGGER_POLICY
from tests.conftest import LiveServer

ALWAYS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
API_POLICY = "default-src 'none'; frame-ancestors 'none'"


def _get(server: LiveServer, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers=headers, timeout=30)


def test_patient_data_is_never_stored_sniffed_or_framed(server: LiveServer) -> None:
    for path, status in (
        ("/fhir/Patient?identifier=none", 200),
        ("/fhir/Patient/nobody", 404),  # refusals too
        ("/api/v1/studies", 200),
    ):
        answer = _get(server, path)
        assert answer.status_code == status, path
        assert {k: answer.headers.get(k) for k in ALWAYS} == ALWAYS, path
        assert answer.headers["content-security-policy"] == API_POLICY, path
        assert answer.headers["cache-control"] == "no-store", path


def test_a_refused_host_and_the_capability_statement_carry_them_too(server: LiveServer) -> None:
    refused = _get(server, "/api/v1/studies", host="evil.example")
    assert refused.status_code == 400
    assert {k: refused.headers.get(k) for k in ALWAYS} == ALWAYS
    metadata = _get(server, "/fhir/metadata")  # not patient data: caching is the client's call
    assert metadata.headers["x-content-type-options"] == "nosniff"
    assert "cache-control" not in metadata.headers


def test_the_api_docs_page_keeps_its_own_policy(server: LiveServer) -> None:
    docs = _get(server, "/docs")
    assert docs.status_code == 200
    assert docs.headers["x-content-type-options"] == "nosniff"
    # a page that runs its own script files, not an API answer (tests/test_docs_pages.py)
    assert docs.headers["content-security-policy"] == SWAGGER_POLICY
