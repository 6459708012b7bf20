"""MedicationRequest / MedicationStatement → drug_exposure: orders and reported use of a drug.

An order or a statement is evidence of exposure over a period (prohibited medication, prior
immunosuppression, glucocorticoid covariate), not of a dose given on a day: that is what
MedicationAdministration maps to.
"""

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
    route_class,
    status_of,
)
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import PartialDate, first_date, parse_partial_date, period_bounds

# Orders withdrawn before anything happened, and statements that the drug was not taken.
_NO_EXPOSURE = frozenset({"cancelled", "not-taken", "entered-in-error"})


def _dosages(resource: dict[str, Any], element: str) -> list[dict[str, Any]]:
    """The Dosage elements of the resource (malformed items dropped)."""
    items = resource.get(element)
    return [d for d in items if isinstance(d, dict)] if isinstance(items, list) else []


def _bounds(dosages: list[dict[str, Any]]) -> tuple[PartialDate | None, PartialDate | None]:
    """Earliest start and latest end of the dosages' timing bounds (end None if any is open)."""
    starts: list[PartialDate] = []
    ends: list[PartialDate] = []
    open_ended = False
    for dosage in dosages:
        repeat = as_dict(as_dict(dosage.get("timing")).get("repeat"))
        if not isinstance(repeat.get("boundsPeriod"), dict):
            continue
        start, end = period_bounds(repeat["boundsPeriod"])
        if start is not None:
            starts.append(start)
        if end is None:
            open_ended = True
        else:
            ends.append(end)
    first = min(starts, key=PartialDate.sort_key) if starts else None
    last = None if open_ended or not ends else max(ends, key=lambda d: (d.last, d.sort_key()))
    return first, last


def _first_dose(dosages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first dosage's first dose quantity, normalised to mg when its unit allows."""
    if not dosages:
        return None
    dose_and_rate = dosages[0].get("doseAndRate")
    if not isinstance(dose_and_rate, list) or not dose_and_rate:
        return None
    return dose_in_mg(as_dict(dose_and_rate[0]).get("doseQuantity"))


def _exposure(
    resource: dict[str, Any],
    source: SourceRef,
    ctx: MappingContext,
    *,
    dosages: list[dict[str, Any]],
    date: PartialDate | None,
    end: PartialDate | None,
    intent: str | None,
) -> list[TrialEvent]:
    """The single drug_exposure event both resource types share once dates are known."""
    medication = medication_concept(resource, ctx)
    route = dosages[0].get("route") if dosages else None
    route_cls, route_match = route_class(route, medication, ctx)
    matches = drug_matches(medication, ctx)
    if route_match:
        matches.append(route_match)
    values: dict[str, Any] = {
        "resource_type": source.resource_type,
        "medication": medication_text(medication),
        "medication_code": concept_json(medication),
        "status": status_of(resource),
        "intent": intent,
        "route_class": route_cls,
        "dose": _first_dose(dosages),
    }
    return [
        TrialEvent(
            kind=EventKind.DRUG_EXPOSURE,
            patient_id=ctx.patient_id(resource.get("subject"), resource),
            source=source,
            date=date,
            end=end,
            values=values,
            concepts=tuple(matches),
        )
    ]


def _excluded(resource: dict[str, Any]) -> bool:
    """Void records, exposures that did not happen, and requests not to give the drug."""
    return (
        is_void(resource)
        or status_of(resource) in _NO_EXPOSURE
        or resource.get("doNotPerform") is True
    )


def map_medication_request(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """An order is exposure from its dosing bounds (else from when it was written)."""
    if _excluded(resource):
        return []
    dosages = _dosages(resource, "dosageInstruction")
    start, end = _bounds(dosages)
    intent = resource.get("intent")
    return _exposure(
        resource,
        source,
        ctx,
        dosages=dosages,
        date=start or parse_partial_date(resource.get("authoredOn")),
        end=end,
        intent=intent if isinstance(intent, str) else None,
    )


def map_medication_statement(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """A statement is exposure at its effective time or over its effective period."""
    if _excluded(resource):
        return []
    start, end = period_bounds(resource.get("effectivePeriod"))
    when = first_date(resource.get("effectiveDateTime")) or start
    return _exposure(
        resource,
        source,
        ctx,
        dosages=_dosages(resource, "dosage"),
        date=when,
        end=end if when is start else None,
        intent=None,
    )
