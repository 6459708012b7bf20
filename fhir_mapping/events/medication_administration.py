"""MedicationAdministration → drug_administration: study drug, ICB and immunosuppression doses."""

from __future__ import annotations

from typing import Any

from fhir_mapping.events.common import (
    as_dict,
    concept_json,
    dose_in_mg,
    drug_matches,
    is_void,
    medication_concept,
    medication_text,
    reasons,
    route_class,
    route_matches,
    status_of,
)
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import first_date, period_bounds

# Administrations that did not happen are not exposure.
_NOT_GIVEN = frozenset({"not-done", "entered-in-error"})


def map_medication_administration(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """One event per administration that happened, with its dose in mg when the unit allows."""
    if is_void(resource) or status_of(resource) in _NOT_GIVEN:
        return []
    medication = medication_concept(resource, ctx)
    start, end = period_bounds(resource.get("effectivePeriod"))
    when = first_date(resource.get("effectiveDateTime")) or start
    dosage = as_dict(resource.get("dosage"))
    route, route_match = route_class(dosage.get("route"), medication, ctx)
    matches = drug_matches(medication, ctx)
    if route_match:
        matches.append(route_match)
    matches += route_matches(dosage.get("route"), ctx)
    values: dict[str, Any] = {
        "medication": medication_text(medication),
        "medication_code": concept_json(medication),
        "status": status_of(resource),
        "dose": dose_in_mg(dosage.get("dose")),
        "route": concept_json(dosage.get("route")),
        "route_class": route,
        "reasons": reasons(resource, ctx),
    }
    return [
        TrialEvent(
            kind=EventKind.DRUG_ADMINISTRATION,
            patient_id=ctx.patient_id(resource.get("subject"), resource),
            source=source,
            date=when,
            end=end if when is start else None,
            values=values,
            concepts=tuple(matches),
        )
    ]
