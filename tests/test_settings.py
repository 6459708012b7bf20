"""Settings are validated at start-up and name the bad key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.infra.settings import Settings


def test_defaults() -> None:
    settings = Settings(_env_file=None)
    assert settings.max_body_bytes == 50 * 1024 * 1024
    assert settings.is_sqlite
    # slow clients: 30 s for a request head, 120 s for its body, 5 s idle, 500 connections
    assert (
        settings.header_timeout_seconds,
        settings.body_timeout_seconds,
        settings.keep_alive_seconds,
        settings.max_connections,
    ) == (30.0, 120.0, 5, 500)


def test_postgres_urls_use_psycopg() -> None:
    assert (
        Settings(database_url="postgresql://u@h/db").database_url == "postgresql+psycopg://u@h/db"
    )
    assert Settings(database_url="postgres://u@h/db").database_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("database_url", "mysql://x/y", "DATABASE_URL scheme 'mysql'"),
        ("database_url", "sqlite://relative.db", "sqlite:///"),
        ("max_body_bytes", 0, "greater than 0"),
        ("base_url", "fhir.example.org", "absolute"),
        ("header_timeout_seconds", 0, "greater than 0"),
        ("body_timeout_seconds", -1, "greater than 0"),
        ("keep_alive_seconds", 0, "greater than or equal to 1"),
        ("max_connections", -1, "greater than or equal to 0"),
    ],
)
def test_bad_values_are_refused(field: str, value: object, needle: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({field: value})
    assert needle in str(caught.value)


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://env@host/db")
    monkeypatch.setenv("TRIALBRIDGE_MAX_BODY_BYTES", "1024")
    settings = Settings()
    assert (settings.database_url, settings.max_body_bytes) == (
        "postgresql+psycopg://env@host/db",
        1024,
    )
