"""What every protocol file shares: strict models, the study header and membership, loading."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fhir_mapping.terminology import Terminology


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DayWindow(Strict):
    """An inclusive range of study days."""

    start: int
    end: int

    @model_validator(mode="after")
    def _ordered(self) -> DayWindow:
        if self.start > self.end:
            raise ValueError(f"start ({self.start}) must not be after end ({self.end})")
        return self


class CountRange(Strict):
    """An inclusive range of counts."""

    min: int = Field(ge=0)
    max: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> CountRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class StudyProtocol(Strict):
    """The header every study kind's protocol has; each kind subclasses it with its own settings.

    A kind's subclass narrows `kind` to its name and declares `membership` (how a patient becomes
    a subject) with its own model, then its settings.
    """

    # Keys below these dotted prefixes name value sets though their names do not say so.
    VALUESET_PREFIXES: ClassVar[tuple[str, ...]] = ()

    kind: str
    id: str = Field(min_length=1)
    version: str = Field(min_length=1)
    title: str = Field(min_length=1)
    sources: tuple[str, ...] = ()


ProtocolModels = Mapping[str, type[StudyProtocol]]


class ProtocolError(ValueError):
    """A protocol file that cannot be used; the message names the file and the key."""


def _valuesets_named(
    value: Any, prefixes: tuple[str, ...], key: str = ""
) -> Iterable[tuple[str, str]]:
    """(dotted key, value-set id) for every field naming a value set."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _valuesets_named(
                getattr(value, name), prefixes, f"{key}.{name}" if key else name
            )
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            yield from _valuesets_named(item, prefixes, f"{key}.{i}")
    elif isinstance(value, str) and (
        key.endswith("valueset")
        or key.rpartition(".")[0].endswith("valuesets")
        or key.startswith(prefixes)
    ):
        yield key, value


def parse_protocol(
    text: str, where: str, terminology: Terminology, models: ProtocolModels
) -> StudyProtocol:
    """Validate one protocol file against its kind's model; every error names the file and key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{where}: not valid TOML: {exc}") from exc
    kind = raw.get("kind")
    model = models.get(kind) if isinstance(kind, str) else None
    if model is None:  # worded as pydantic words a discriminated union's refusal
        if kind is None:
            problem = "Unable to extract tag using discriminator 'kind'"
        else:
            tags = ", ".join(repr(k) for k in models)
            problem = (
                f"Input tag '{kind}' found using 'kind' does not match any of the expected "
                f"tags: {tags}"
            )
        raise ProtocolError(f"{where}: (top level): {problem}")
    try:
        protocol = model.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors()[:5]:
            loc = [str(p) for p in err["loc"]]
            lines.append(f"{'.'.join(loc) or '(top level)'}: {err['msg']}")
        raise ProtocolError(f"{where}: " + "; ".join(lines)) from exc
    for key, valueset in _valuesets_named(protocol, protocol.VALUESET_PREFIXES):
        if valueset not in terminology:
            raise ProtocolError(f"{where}: {key}: unknown value set {valueset!r}")
    return protocol


def load_protocols(
    terminology: Terminology, models: ProtocolModels, directory: Path | None = None
) -> dict[str, StudyProtocol]:
    """The packaged protocols, then a site's files (same id replaces, new id adds)."""
    found: dict[str, StudyProtocol] = {}
    package = resources.files("service.protocol.files").joinpath("studies")
    for item in sorted(package.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".toml"):
            where = f"service/protocol/files/studies/{item.name}"
            p = parse_protocol(item.read_text("utf-8"), where, terminology, models)
            found[p.id] = p
    if directory is not None:
        if not directory.is_dir():
            raise ProtocolError(f"{directory}: protocol directory does not exist")
        for path in sorted(directory.glob("*.toml")):
            p = parse_protocol(path.read_text("utf-8"), str(path), terminology, models)
            found[p.id] = p
    return found
