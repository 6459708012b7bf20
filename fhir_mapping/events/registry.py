"""The explicit registry: which mapper handles which resource type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.medication_administration import map_medication_administration
from fhir_mapping.events.model import SourceRef, TrialEvent

Mapper = Callable[[dict[str, Any], SourceRef, MappingContext], list[TrialEvent]]

MAPPERS: dict[str, Mapper] = {
    "MedicationAdministration": map_medication_administration,
}


def map_resource(
    resource_type: str, resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """Every trial event one resource version yields (none for types no study reads)."""
    mapper = MAPPERS.get(resource_type)
    return mapper(resource, source, ctx) if mapper else []
