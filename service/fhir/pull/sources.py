"""The hospital sources a deployment pulls from, read from the file TRIALBRIDGE_SOURCES_FILE names."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from joserfc.jwk import ECKey, RSAKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fhir_mapping.resource_types import SUPPORTED_TYPES

# What a pull asks for when a source names no types: the types our mappers turn into trial events.
DEFAULT_TYPES = (
    "Patient",
    "ResearchSubject",
    "Condition",
    "Observation",
    "Procedure",
    "MedicationAdministration",
    "MedicationStatement",
    "MedicationRequest",
    "AdverseEvent",
    "Encounter",
    "Specimen",
)
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")


def duration_seconds(text: str) -> int:
    """Seconds of an ISO 8601 duration in days, hours, minutes and seconds ("PT6H", "P1DT12H")."""
    found = _DURATION.fullmatch(text)
    if found is None or text.endswith("T") or not any(found.groups()):
        raise ValueError('schedule must be an ISO 8601 duration such as "PT6H", "PT30M" or "P1D"')
    days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if not 1 <= total <= 31 * 86400:
        raise ValueError("schedule must be between 1 second and 31 days")
    return total


class SourceConfigError(ValueError):
    """The sources file is missing, malformed, or names a source wrongly."""


def _absolute(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{what} must carry no credentials, query or fragment")
    return url.rstrip("/")


class HospitalSource(BaseModel):
    """One hospital FHIR server and how to pull from it (SMART Backend Services + Bulk Data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="the source's name in `trialbridge pull ID` and the API")
    base_url: str = Field(description="FHIR base URL, e.g. https://fhir.hospital.org/r4")
    client_id: str = Field(min_length=1, description="our client id at the hospital")
    private_key_file: Path | None = Field(default=None, description="PEM or JWK JSON file")
    private_key_jwk: dict[str, Any] | None = Field(default=None, description="the JWK inline")
    key_id: str | None = Field(default=None, description="`kid` of the assertion header")
    token_url: str | None = Field(
        default=None, description="default: from {base_url}/.well-known/smart-configuration"
    )
    scope: str = "system/*.rs"
    group_id: str | None = None
    patients: tuple[str, ...] = ()
    types: tuple[str, ...] = DEFAULT_TYPES
    file_host: str | None = Field(
        default=None, description="origin NDJSON files may be downloaded from besides base_url"
    )
    every_seconds: int | None = Field(
        default=None,
        ge=0,
        le=31 * 86400,
        description="pull this often in the background (0: never); default "
        "TRIALBRIDGE_PULL_INTERVAL_SECONDS",
    )
    schedule: str | None = Field(
        default=None, description='the same as an ISO 8601 duration, e.g. "PT6H" or "P1D"'
    )

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.fullmatch(value):
            raise ValueError("id must be 1-64 of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("base_url")
    @classmethod
    def _base(cls, value: str) -> str:
        return _absolute(value, "base_url")

    @field_validator("token_url")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value, "token_url")

    @field_validator("file_host")
    @classmethod
    def _file_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(_absolute(value, "file_host"))
        if parts.path not in ("", "/"):
            raise ValueError("file_host is an origin (scheme://host[:port]), without a path")
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None:
            duration_seconds(value)
        return value

    @field_validator("types")
    @classmethod
    def _types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - SUPPORTED_TYPES)
        if unknown:
            raise ValueError(f"types not served here: {', '.join(unknown)}")
        if not value:
            raise ValueError("types must name at least one resource type")
        return value

    @model_validator(mode="after")
    def _complete(self) -> HospitalSource:
        if (self.private_key_file is None) == (self.private_key_jwk is None):
            raise ValueError("give exactly one of private_key_file and private_key_jwk")
        if self.group_id is None and not self.patients:
            raise ValueError("give group_id or patients")
        if self.every_seconds is not None and self.schedule is not None:
            raise ValueError("give at most one of every_seconds and schedule")
        self.signing_key()  # an unreadable key is a configuration error, found at load time
        return self

    def signing_key(self) -> RSAKey | ECKey:
        """The private key that signs our client assertions (RSA for RS384, P-384 for ES384)."""
        if self.private_key_jwk is not None:
            data: Any = self.private_key_jwk
        else:
            assert self.private_key_file is not None
            try:
                raw = self.private_key_file.read_bytes()
            except OSError as exc:
                raise ValueError(f"private_key_file: {exc.strerror}") from None
            data = json.loads(raw) if raw.lstrip().startswith(b"{") else raw
        kty = data.get("kty") if isinstance(data, dict) else None
        loaders: list[type[RSAKey] | type[ECKey]] = (
            [RSAKey] if kty == "RSA" else [ECKey] if kty == "EC" else [RSAKey, ECKey]
        )
        for loader in loaders:
            try:
                key = loader.import_key(data)
            except Exception:  # joserfc raises several types for "not this kind of key"
                continue
            if not key.is_private:
                raise ValueError("the key must be a private key")
            if isinstance(key, ECKey) and key.curve_name != "P-384":
                raise ValueError("an EC key must be on P-384 (ES384)")
            return key
        raise ValueError("the private key is neither an RSA nor a P-384 EC key (PEM or JWK)")

    def interval_seconds(self, default: float) -> float:
        """How often the scheduler pulls this source (0: never): its own setting, else `default`."""
        if self.schedule is not None:
            return float(duration_seconds(self.schedule))
        if self.every_seconds is not None:
            return float(self.every_seconds)
        return default

    @property
    def algorithm(self) -> str:
        """RS384 for an RSA key, ES384 for a P-384 key (what SMART Backend Services asks for)."""
        return "RS384" if isinstance(self.signing_key(), RSAKey) else "ES384"


def load_sources(path: Path) -> dict[str, HospitalSource]:
    """Every source in the file (`[[source]]` tables in TOML, or `{"source": [...]}` in JSON)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceConfigError(f"{path}: {exc.strerror}") from None
    try:
        doc = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceConfigError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}"
        ) from None
    entries = doc.get("source") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise SourceConfigError(f"{path}: expected a list `source` of sources")
    found: dict[str, HospitalSource] = {}
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get("private_key_file"), str):
            entry = {**entry, "private_key_file": path.parent / entry["private_key_file"]}
        try:
            source = HospitalSource.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SourceConfigError(
                f"{path}: source[{i}]{'.' + where if where else ''}: {first['msg']}"
            ) from None
        if source.id in found:
            raise SourceConfigError(f"{path}: source id {source.id!r} appears twice")
        found[source.id] = source
    return found
