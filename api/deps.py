"""Typed dependencies: the store and settings the app was started with."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.fhir_store import FhirStore
from service.settings import Settings


def _store(request: Request) -> FhirStore:
    store: FhirStore = request.app.state.store
    return store


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def fhir_base(request: Request) -> str:
    """Public base URL of /fhir: configured, or as the client reached us."""
    settings: Settings = request.app.state.settings
    return settings.base_url or str(request.base_url).rstrip("/") + "/fhir"


StoreDep = Annotated[FhirStore, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
BaseDep = Annotated[str, Depends(fhir_base)]
