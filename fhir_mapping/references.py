"""Parse FHIR reference strings; rewrite and index references without touching anything else."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import parse_qsl

from fhir_mapping.resource_types import PATIENT_ONLY_PARAMS, REFERENCE_PARAMS

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE = r"[A-Z][A-Za-z]{1,63}"
_RELATIVE = re.compile(
    rf"(?:(?P<base>https?://.+)/)?(?P<type>{_TYPE})/(?P<id>[A-Za-z0-9\-.]{{1,64}})(?:/_history/(?P<vid>[A-Za-z0-9\-.]{{1,64}}))?"
)
_CONDITIONAL = re.compile(rf"(?P<type>{_TYPE})\?(?P<query>.*)")

RefKind = Literal["literal", "absolute", "urn", "conditional", "contained", "other"]


@dataclass(frozen=True, slots=True)
class ParsedReference:
    """A reference string taken apart: what kind it is and what it points at."""

    kind: RefKind
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    query: tuple[tuple[str, str], ...] = ()


def is_valid_id(value: str) -> bool:
    """FHIR id: 1–64 of [A-Za-z0-9-.]."""
    return ID_RE.fullmatch(value) is not None


@lru_cache(maxsize=4096)
def parse_reference(ref: str) -> ParsedReference:
    """Classify a Reference.reference value (memoised: a Bundle names the same targets often)."""
    if ref.startswith("#"):
        return ParsedReference("contained", resource_id=ref[1:])
    if ref.startswith(("urn:uuid:", "urn:oid:")):
        return ParsedReference("urn")
    cond = _CONDITIONAL.fullmatch(ref)
    if cond:
        query = tuple(parse_qsl(cond["query"], keep_blank_values=True))
        return ParsedReference("conditional", cond["type"], query=query)
    m = _RELATIVE.fullmatch(ref)
    if m:
        kind: RefKind = "absolute" if m["base"] else "literal"
        return ParsedReference(kind, m["type"], m["id"], m["vid"])
    return ParsedReference("other")


def local_target(ref: str, base_url: str | None = None) -> tuple[str, str] | None:
    """(type, id) when the reference points into this server (relative, or our own base URL)."""
    parsed = parse_reference(ref)
    if parsed.kind == "literal" or (
        parsed.kind == "absolute" and base_url and ref.startswith(base_url.rstrip("/") + "/")
    ):
        assert parsed.resource_type is not None
        assert parsed.resource_id is not None
        return parsed.resource_type, parsed.resource_id
    return None


def reference_index(
    resource_type: str, resource: dict[str, Any], base_url: str | None = None
) -> list[tuple[str, str, str]]:
    """(param, target type, target id) rows for the reference search parameters we index."""
    rows: set[tuple[str, str, str]] = set()
    for param, elements in REFERENCE_PARAMS.get(resource_type, {}).items():
        for element in elements:
            value = resource.get(element)
            for ref in value if isinstance(value, list) else [value]:
                if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
                    continue
                target = local_target(ref["reference"], base_url)
                if target is None or (param in PATIENT_ONLY_PARAMS and target[0] != "Patient"):
                    continue
                rows.add((param, target[0], target[1]))
    return sorted(rows)


# Longer identifier systems/values are stored with the resource but not indexed for search.
INDEXED_TEXT_MAX = 1024


def identifier_index(resource: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(system, value) of each top-level identifier that has a value short enough to index."""
    value = resource.get("identifier")
    rows: set[tuple[str | None, str]] = set()
    for ident in value if isinstance(value, list) else [value]:
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            system = ident.get("system")
            system = system if isinstance(system, str) else None
            if len(ident["value"]) <= INDEXED_TEXT_MAX and len(system or "") <= INDEXED_TEXT_MAX:
                rows.add((system, ident["value"]))
    return sorted(rows, key=lambda r: (r[0] or "", r[1]))
