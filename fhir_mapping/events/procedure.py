"""Procedure / ServiceRequest → lung resection, biopsy (screening and surgical-candidate evidence)."""

from __future__ import annotations

from typing import Any

from fhir_mapping.events.common import (
    concept_json,
    is_void,
    status_of,
)
from fhir_mapping.events.common import (
    medication_text as concept_label,
)
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import first_date, period_bounds
from fhir_mapping.terminology import ConceptMatch

# Checked in this order: the first that matches names the resection (partial before plain lobectomy).
RESECTION_TYPES = (
    "partial_lobectomy",
    "pneumonectomy",
    "segmentectomy",
    "wedge_resection",
    "lobectomy",
)
BIOPSY_CONCEPTS = ("core_needle_biopsy", "lung_biopsy")

_PROCEDURE_NOT_DONE = frozenset({"not-done", "entered-in-error"})
_PROCEDURE_PLANNED = frozenset({"preparation", "in-progress"})
_REQUEST_WITHDRAWN = frozenset({"revoked", "entered-in-error"})


def _body_sites(resource: dict[str, Any]) -> list[str]:
    """Readable labels of the body sites (text, else first display, else code)."""
    sites = resource.get("bodySite")
    if not isinstance(sites, list):
        return []
    labels = (concept_label(s) for s in sites if isinstance(s, dict))
    return [label for label in labels if label is not None]


def _classify(
    code: Any, body_sites: list[str], ctx: MappingContext
) -> tuple[EventKind | None, dict[str, Any], list[ConceptMatch]]:
    """Which trial-relevant kind the code names, its kind-specific values, and the matches."""
    resection = ctx.terminology.match("lung_resection", code)
    if resection is not None:
        subtype = ctx.terminology.first(code, RESECTION_TYPES)
        matches = [resection] if subtype is None else [resection, subtype]
        return (
            EventKind.LUNG_RESECTION,
            {"resection_type": subtype.concept if subtype else "other"},
            matches,
        )
    biopsy = ctx.terminology.matches(code, BIOPSY_CONCEPTS)
    if biopsy:
        return (
            EventKind.BIOPSY,
            {
                "core_needle": any(m.concept == "core_needle_biopsy" for m in biopsy),
                "site": body_sites[0] if body_sites else None,
            },
            biopsy,
        )
    return None, {}, []


def map_procedure(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """A performed (or in-preparation) procedure: resection, biopsy, or a generic procedure."""
    status = status_of(resource)
    if is_void(resource) or status in _PROCEDURE_NOT_DONE:
        return []
    code = resource.get("code")
    body_sites = _body_sites(resource)
    kind, specific, matches = _classify(code, body_sites, ctx)
    start, end = period_bounds(resource.get("performedPeriod"))
    when = first_date(resource.get("performedDateTime")) or start
    values: dict[str, Any] = {
        "code": concept_json(code),
        "status": status,
        "planned": status in _PROCEDURE_PLANNED,
        "body_site": body_sites,
        **specific,
    }
    return [
        TrialEvent(
            kind=kind or EventKind.PROCEDURE,
            patient_id=ctx.patient_id(resource.get("subject"), resource),
            source=source,
            date=when,
            end=end if when is start else None,
            values=values,
            concepts=tuple(matches),
        )
    ]


def map_service_request(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """A request for a resection or biopsy is evidence it is planned; other requests say nothing."""
    status = status_of(resource)
    if is_void(resource) or status in _REQUEST_WITHDRAWN or resource.get("doNotPerform") is True:
        return []
    code = resource.get("code")
    body_sites = _body_sites(resource)
    kind, specific, matches = _classify(code, body_sites, ctx)
    if kind is None:
        return []
    start, end = period_bounds(resource.get("occurrencePeriod"))
    when = first_date(resource.get("occurrenceDateTime")) or start
    if when is None:
        when = first_date(resource.get("authoredOn"))
    intent = resource.get("intent")
    authored = first_date(resource.get("authoredOn"))
    values: dict[str, Any] = {
        "code": concept_json(code),
        "status": status,
        "planned": True,
        "body_site": body_sites,
        "intent": intent if isinstance(intent, str) else None,
        "authored_on": authored.text if authored else None,
        **specific,
    }
    return [
        TrialEvent(
            kind=kind,
            patient_id=ctx.patient_id(resource.get("subject"), resource),
            source=source,
            date=when,
            end=end if start is not None and when is start else None,
            values=values,
            concepts=tuple(matches),
        )
    ]
