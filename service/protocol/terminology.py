"""Load the packaged value sets plus a site's additions (files, or FHIR ValueSets in the store)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fhir_mapping.terminology import (
    CodeEntry,
    Terminology,
    ValueSetDefinition,
    merge_definitions,
)

# A FHIR ValueSet with this canonical url prefix extends the value set named by the rest of the url.
VALUESET_URL_PREFIX = "urn:trialbridge:valueset:"


class TerminologyError(ValueError):
    """A value-set file that cannot be used; the message names the file and the key."""


def _parse(text: str, where: str) -> dict[str, ValueSetDefinition]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TerminologyError(f"{where}: not valid TOML: {exc}") from exc
    out: dict[str, ValueSetDefinition] = {}
    for key, body in raw.items():
        try:
            out[key] = ValueSetDefinition.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in (key, *first["loc"]))
            raise TerminologyError(f"{where}: {loc}: {first['msg']}") from exc
    return out


def packaged_definitions() -> dict[str, ValueSetDefinition]:
    """The value sets shipped with the service."""
    text = resources.files("service.protocol.files").joinpath("valuesets.toml").read_text("utf-8")
    return _parse(text, "service/protocol/files/valuesets.toml")


def site_definitions(directory: Path | None) -> dict[str, ValueSetDefinition]:
    """A site's value-set files (*.toml in one folder, read in name order)."""
    merged: dict[str, ValueSetDefinition] = {}
    if directory is None:
        return merged
    if not directory.is_dir():
        raise TerminologyError(f"{directory}: terminology directory does not exist")
    for path in sorted(directory.glob("*.toml")):
        merged = merge_definitions(merged, _parse(path.read_text("utf-8"), str(path)))
    return merged


def valueset_additions(valuesets: Iterable[dict[str, Any]]) -> dict[str, ValueSetDefinition]:
    """Codes from FHIR ValueSet resources whose url names one of our value sets."""
    out: dict[str, ValueSetDefinition] = {}
    for vs in valuesets:
        url = vs.get("url")
        if not isinstance(url, str) or not url.startswith(VALUESET_URL_PREFIX):
            continue
        if vs.get("status") == "retired":
            continue
        concept_id = url[len(VALUESET_URL_PREFIX) :]
        codes: list[CodeEntry] = []
        compose = vs.get("compose")
        compose = compose if isinstance(compose, dict) else {}
        for include in compose.get("include") or ():
            system = include.get("system") if isinstance(include, dict) else None
            if not isinstance(system, str):
                continue
            for concept in include.get("concept") or ():
                if isinstance(concept, dict) and isinstance(concept.get("code"), str):
                    display = concept.get("display")
                    codes.append(
                        CodeEntry(
                            system=system,
                            code=concept["code"],
                            display=display if isinstance(display, str) else None,
                            status="site",
                        )
                    )
        title = vs.get("title") or vs.get("name") or concept_id
        addition = ValueSetDefinition(title=str(title), codes=tuple(codes))
        out = merge_definitions(out, {concept_id: addition})
    return out


def build_terminology(
    directory: Path | None = None, valuesets: Iterable[dict[str, Any]] = ()
) -> Terminology:
    """Packaged value sets, extended by a site's files and FHIR ValueSets."""
    merged = merge_definitions(packaged_definitions(), site_definitions(directory))
    return Terminology(merge_definitions(merged, valueset_additions(valuesets)))
