"""A Host header shapes no URL unless the deployment allows it (issue: `Host: evil.example` came
back in `Location` and `fullUrl`)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from api.host_guard import allowed, host_of
from service.infra.settings import Settings
from tests.conftest import FHIR_JSON, counts
from tests.kit import fhir as kit
from tests.kit.live import served

EVIL = {"host": "evil.example"}


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("api.hospital.org", "api.hospital.org"),
    ],
)
def test_host_of(header: str, host: str) -> None:
    assert host_of(header) == host


def test_allowed_names_and_wildcards() -> None:
    allow = ["localhost", "*.hospital.org"]
    assert [allowed(h, allow) for h in ("localhost", "api.hospital.org", "hospital.org")] == [
        True,
        True,
        False,
    ]
    assert allowed("evilhospital.org", allow) is False


def _settings(backend: str, new_database: Any, **extra: Any) -> Settings:
    return Settings(database_url=str(new_database(backend)), webhook_interval_seconds=0, **extra)


def test_without_a_base_url_a_foreign_host_is_refused_and_writes_nothing(
    backend: str, new_database: Any
) -> None:
    with served(_settings(backend, new_database)) as running:
        before = counts(running.engine)
        posted = httpx.post(
            f"{running.url}/fhir/Patient",
            json=kit.patient(mrn="h-1"),
            headers={**FHIR_JSON, **EVIL},
            timeout=30,
        )
        assert posted.status_code == 400
        assert posted.json()["issue"][0]["code"] == "invalid"
        assert "evil.example" not in posted.headers.get("location", "")
        assert counts(running.engine) == before
        api = httpx.get(f"{running.url}/api/v1/studies", headers=EVIL, timeout=30)
        assert (api.status_code, api.json()["error"]["code"]) == (400, "invalid_host")
        assert httpx.get(f"{running.url}/healthz", headers=EVIL, timeout=30).status_code == 200
        ours = httpx.post(
            f"{running.url}/fhir/Patient",
            json=kit.patient(mrn="h-2"),
            headers=FHIR_JSON,
            timeout=30,
        )
        assert ours.status_code == 201
        assert ours.headers["location"].startswith(f"{running.url}/fhir/Patient/")


def test_with_a_base_url_urls_come_from_it_whatever_the_host(
    backend: str, new_database: Any
) -> None:
    base = "https://trialbridge.hospital.org/fhir"
    with served(_settings(backend, new_database, base_url=base)) as running:
        posted = httpx.post(
            f"{running.url}/fhir/Patient",
            json=kit.patient(mrn="h-3"),
            headers={**FHIR_JSON, **EVIL},
            timeout=30,
        )
        assert posted.status_code == 201
        assert posted.headers["location"].startswith(f"{base}/Patient/")


def test_an_allow_list_admits_its_names_only(backend: str, new_database: Any) -> None:
    settings = _settings(backend, new_database, allowed_hosts="*.hospital.org, 127.0.0.1")
    with served(settings) as running:
        named = httpx.post(
            f"{running.url}/fhir/Patient",
            json=kit.patient(mrn="h-4"),
            headers={**FHIR_JSON, "host": "api.hospital.org:8443"},
            timeout=30,
        )
        assert named.status_code == 201
        assert named.headers["location"].startswith("http://api.hospital.org:8443/fhir/Patient/")
        other = httpx.get(
            f"{running.url}/api/v1/studies", headers={"host": "localhost"}, timeout=30
        )
        assert other.status_code == 400  # the list replaces the default, localhost included
