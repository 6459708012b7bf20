"""Browsers may call the API only from the origins a deployment names; by default from none."""

from __future__ import annotations

from typing import Any

import httpx

from service.infra.settings import Settings
from tests.kit.live import served

CTMS = "https://ctms.hospital.org"
PREFLIGHT = {
    "origin": CTMS,
    "access-control-request-method": "GET",
    "access-control-request-headers": "authorization",
}


def test_without_origins_no_browser_may_call(backend: str, new_database: Any) -> None:
    settings = Settings(database_url=str(new_database(backend)), webhook_interval_seconds=0)
    with served(settings) as running:
        plain = httpx.get(f"{running.url}/api/v1/studies", headers={"origin": CTMS}, timeout=30)
        assert plain.status_code == 200
        assert "access-control-allow-origin" not in plain.headers
        preflight = httpx.options(f"{running.url}/api/v1/studies", headers=PREFLIGHT, timeout=30)
        assert "access-control-allow-origin" not in preflight.headers


def test_a_named_origin_may_call_and_no_other(backend: str, new_database: Any) -> None:
    settings = Settings(
        database_url=str(new_database(backend)), webhook_interval_seconds=0, cors_origins=CTMS
    )
    with served(settings) as running:
        preflight = httpx.options(f"{running.url}/api/v1/studies", headers=PREFLIGHT, timeout=30)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == CTMS
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        simple = httpx.get(f"{running.url}/api/v1/studies", headers={"origin": CTMS}, timeout=30)
        assert simple.headers["access-control-allow-origin"] == CTMS
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        other = httpx.options(
            f"{running.url}/api/v1/studies",
            headers={**PREFLIGHT, "origin": "https://evil.example"},
            timeout=30,
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
