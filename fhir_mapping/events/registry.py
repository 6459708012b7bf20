"""The explicit registry: which mapper handles which resource type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_mapping.events.adverse_event import map_adverse_event
from fhir_mapping.events.condition import map_condition
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.data_point import map_diagnostic_report, map_observation_or_data_point
from fhir_mapping.events.encounter import map_encounter
from fhir_mapping.events.medication_administration import map_medication_administration
from fhir_mapping.events.medication_exposure import (
    map_medication_request,
    map_medication_statement,
)
from fhir_mapping.events.model import SourceRef, TrialEvent
from fhir_mapping.events.patient import map_patient
from fhir_mapping.events.procedure import map_procedure, map_service_request
from fhir_mapping.events.research_subject import map_research_subject
from fhir_mapping.events.specimen import map_specimen

Mapper = Callable[[dict[str, Any], SourceRef, MappingContext], list[TrialEvent]]

MAPPERS: dict[str, Mapper] = {
    "AdverseEvent": map_adverse_event,
    "Condition": map_condition,
    "DiagnosticReport": map_diagnostic_report,
    "Encounter": map_encounter,
    "MedicationAdministration": map_medication_administration,
    "MedicationRequest": map_medication_request,
    "MedicationStatement": map_medication_statement,
    "Observation": map_observation_or_data_point,
    "Patient": map_patient,
    "Procedure": map_procedure,
    "ResearchSubject": map_research_subject,
    "ServiceRequest": map_service_request,
    "Specimen": map_specimen,
}


def map_resource(
    resource_type: str, resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """Every trial event one resource version yields (none for types no study reads)."""
    mapper = MAPPERS.get(resource_type)
    return mapper(resource, source, ctx) if mapper else []
