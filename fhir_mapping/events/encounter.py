"""Encounter → encounter: contacts that took place (follow-up visit, last data point)."""

from __future__ import annotations

from typing import Any

from fhir_mapping.events.common import as_dict, is_void, status_of
from fhir_mapping.events.common import medication_text as concept_label
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import period_bounds

# Statuses of a contact that actually happened (or is happening); planned, cancelled, void and
# unknown encounters are not evidence of contact.
HAPPENED = frozenset({"finished", "in-progress", "arrived", "triaged", "onleave"})


def map_encounter(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """One event per contact that took place, over its period."""
    status = status_of(resource)
    if is_void(resource) or status not in HAPPENED:
        return []
    start, end = period_bounds(resource.get("period"))
    types = resource.get("type")
    class_code = as_dict(resource.get("class")).get("code")
    values: dict[str, Any] = {
        "class": class_code if isinstance(class_code, str) else None,
        "type": [
            label
            for label in (
                concept_label(t)
                for t in (types if isinstance(types, list) else ())
                if isinstance(t, dict)
            )
            if label is not None
        ],
        "status": status,
        "service_type": concept_label(as_dict(resource.get("serviceType")) or None),
    }
    return [
        TrialEvent(
            kind=EventKind.ENCOUNTER,
            patient_id=ctx.patient_id(resource.get("subject"), resource),
            source=source,
            date=start,
            end=end,
            values=values,
        )
    ]
