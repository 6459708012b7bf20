"""Expected wire JSON of mapped events, written once instead of as dict literals in every test."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


def day_json(value: str, precision: str, first: str, last: str | None = None) -> Json:
    """An event date as sent: the text, its precision and the local days it covers."""
    return {"value": value, "precision": precision, "first_day": first, "last_day": last or first}


def source_json(resource_type: str, resource_id: str, version: int = 1) -> Json:
    """The source version an event (or evidence) cites, with its versioned reference."""
    return {
        "resource_type": resource_type,
        "id": resource_id,
        "version": str(version),
        "reference": f"{resource_type}/{resource_id}/_history/{version}",
    }


def match_json(
    concept: str, matched_by: str, text: str, *, system: str | None = None, code: str | None = None
) -> Json:
    """A concept match as events show it: which concept, how, and the coding or text it matched."""
    return {
        "concept": concept,
        "matched_by": matched_by,
        "system": system,
        "code": code,
        "text": text,
    }
