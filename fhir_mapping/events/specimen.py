"""Specimen → specimen_collection: screening stool samples and fresh tissue (biopsy) specimens."""

from __future__ import annotations

from typing import Any

from fhir_mapping.events.common import as_dict, concept_json, is_void, status_of
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import first_date, period_bounds
from fhir_mapping.terminology import ConceptMatch

# Collection method or site wording that makes an untyped specimen a tissue (biopsy) specimen.
_TISSUE_HINTS = ("tissue_specimen", "core_needle_biopsy", "lung_biopsy")
# R4 has no Specimen → Procedure element: R5's Specimen.collection.procedure, as its cross-version
# extension (on Specimen.collection; a feed that puts it on the Specimen itself is read too).
COLLECTION_PROCEDURE_URL = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Specimen.collection.procedure"
)


def _specimen_type(resource: dict[str, Any], ctx: MappingContext) -> tuple[str, list[ConceptMatch]]:
    """'stool' | 'tissue' | 'other' from the specimen type, else from how/where it was collected."""
    specimen_type = resource.get("type")
    stool = ctx.terminology.match("stool_specimen", specimen_type)
    if stool is not None:
        return "stool", [stool]
    tissue = ctx.terminology.match("tissue_specimen", specimen_type)
    if tissue is not None:
        return "tissue", [tissue]
    collection = as_dict(resource.get("collection"))
    for element in ("method", "bodySite"):
        hint = ctx.terminology.first(collection.get(element), _TISSUE_HINTS)
        if hint is not None:
            return "tissue", [hint]
    return "other", []


def _patient_id(resource: dict[str, Any], ctx: MappingContext) -> str | None:
    """The subject's Patient id; a subject typed as a Group, Device, Location… has none."""
    subject = resource.get("subject")
    declared = as_dict(subject).get("type")
    if isinstance(declared, str) and declared != "Patient":
        return None
    return ctx.patient_id(subject, resource)


def _collected_by(resource: dict[str, Any], ctx: MappingContext) -> str | None:
    """The id of the Procedure that collected the specimen (a biopsy's cores), when linked."""
    for element in (as_dict(resource.get("collection")), resource):
        items = element.get("extension")
        for ext in items if isinstance(items, list) else ():
            if isinstance(ext, dict) and ext.get("url") == COLLECTION_PROCEDURE_URL:
                found = ctx.resolve(
                    ext.get("valueReference"), resource, ("Procedure",), fetch=False
                )
                if found is not None and found.resource_id is not None:
                    return found.resource_id
    return None


def map_specimen(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """One collection event per specimen that is not void, dated when it was collected."""
    if is_void(resource):
        return []
    collection = as_dict(resource.get("collection"))
    start, end = period_bounds(collection.get("collectedPeriod"))
    when = first_date(collection.get("collectedDateTime")) or start
    kind, matches = _specimen_type(resource, ctx)
    parents = resource.get("parent")
    values: dict[str, Any] = {
        "specimen_type": kind,
        "type": concept_json(resource.get("type")),
        "status": status_of(resource),
        "parent": [
            p["reference"]
            for p in (parents if isinstance(parents, list) else ())
            if isinstance(p, dict) and isinstance(p.get("reference"), str)
        ],
        "procedure": _collected_by(resource, ctx),
    }
    return [
        TrialEvent(
            kind=EventKind.SPECIMEN_COLLECTION,
            patient_id=_patient_id(resource, ctx),
            source=source,
            date=when,
            end=end if when is start else None,
            values=values,
            concepts=tuple(matches),
        )
    ]
