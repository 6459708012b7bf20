"""ResearchSubject → enrollment: which study, when, in which status and arm."""

from __future__ import annotations

from typing import Any

from fhir_mapping.events.common import as_dict, is_void, status_of
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import period_bounds


def _identifier_json(identifier: Any) -> dict[str, str | None] | None:
    """An Identifier as {system, value}; None without a value (nothing to match a study by)."""
    if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
        return None
    system = identifier.get("system")
    return {"system": system if isinstance(system, str) else None, "value": identifier["value"]}


def _identifiers(items: Any) -> list[dict[str, str | None]]:
    """The usable identifiers of a list of Identifier elements, in order."""
    if not isinstance(items, list):
        return []
    found = (_identifier_json(i) for i in items)
    return [i for i in found if i is not None]


def _study_identifiers(
    resource: dict[str, Any], ctx: MappingContext
) -> list[dict[str, str | None]]:
    """Every identifier naming the study: the stored ResearchStudy's, then the reference's own."""
    study = resource.get("study")
    out: list[dict[str, str | None]] = []
    found = ctx.resolve(study, resource, ("ResearchStudy",))
    if found is not None and found.resource is not None:
        out.extend(_identifiers(found.resource.get("identifier")))
    own = _identifier_json(as_dict(study).get("identifier"))
    if own is not None:
        out.append(own)
    unique: list[dict[str, str | None]] = []
    for ident in out:
        if ident not in unique:
            unique.append(ident)
    return unique


def _text(value: Any) -> str | None:
    """A FHIR string element, or None when absent or not a string."""
    return value if isinstance(value, str) else None


def map_research_subject(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """One enrollment event carrying every identifier the study could be recognised by."""
    if is_void(resource):
        return []
    study = as_dict(resource.get("study"))
    start, end = period_bounds(resource.get("period"))
    values: dict[str, Any] = {
        "status": status_of(resource),
        "study_identifiers": _study_identifiers(resource, ctx),
        "study_display": _text(study.get("display")),
        "study_reference": _text(study.get("reference")),
        "subject_numbers": _identifiers(resource.get("identifier")),
        "assigned_arm": _text(resource.get("assignedArm")),
        "actual_arm": _text(resource.get("actualArm")),
    }
    return [
        TrialEvent(
            kind=EventKind.ENROLLMENT,
            patient_id=ctx.patient_id(resource.get("individual"), resource),
            source=source,
            date=start,
            end=end,
            values=values,
        )
    ]
