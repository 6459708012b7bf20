"""Patient → demographics (sex, birth date, US Core race/ethnicity) and death for survival."""

from __future__ import annotations

from typing import Any

from fhir_mapping.events.common import as_dict, is_void
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import parse_partial_date

US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"


def _omb_extension(resource: dict[str, Any], url: str) -> tuple[list[dict[str, Any]], str | None]:
    """The OMB category codings and the free text of a US Core race/ethnicity extension (matching)."""
    categories: list[dict[str, Any]] = []
    text: str | None = None
    for ext in resource.get("extension") or ():
        if not isinstance(ext, dict) or ext.get("url") != url:
            continue
        for sub in ext.get("extension") or ():
            if not isinstance(sub, dict):
                continue
            if sub.get("url") == "ombCategory":
                coding = as_dict(sub.get("valueCoding"))
                code, display = coding.get("code"), coding.get("display")
                if isinstance(code, str) or isinstance(display, str):
                    categories.append(
                        {
                            "code": code if isinstance(code, str) else None,
                            "display": display if isinstance(display, str) else None,
                        }
                    )
            elif sub.get("url") == "text" and isinstance(sub.get("valueString"), str):
                text = text or sub["valueString"]
    return categories, text


def map_patient(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """Demographics for matching and covariates; a death event when the record says deceased."""
    if is_void(resource):
        return []
    patient_id = source.resource_id
    birth_text = resource.get("birthDate") if isinstance(resource.get("birthDate"), str) else None
    deceased_at = resource.get("deceasedDateTime")
    has_death_date = isinstance(deceased_at, str) and bool(deceased_at)
    deceased_flag = resource.get("deceasedBoolean") is True
    race, race_text = _omb_extension(resource, US_CORE_RACE)
    ethnicity, ethnicity_text = _omb_extension(resource, US_CORE_ETHNICITY)
    gender = resource.get("gender")
    events = [
        TrialEvent(
            kind=EventKind.DEMOGRAPHICS,
            patient_id=patient_id,
            source=source,
            date=parse_partial_date(birth_text),
            values={
                "gender": gender if isinstance(gender, str) else None,
                "birth_date": birth_text,
                "race": race,
                "race_text": race_text,
                "ethnicity": ethnicity,
                "ethnicity_text": ethnicity_text,
                "deceased": has_death_date or deceased_flag,
            },
        )
    ]
    if has_death_date:
        events.append(
            TrialEvent(
                kind=EventKind.DEATH,
                patient_id=patient_id,
                source=source,
                date=parse_partial_date(deceased_at),
                values={"source": "deceasedDateTime"},
            )
        )
    elif deceased_flag:
        events.append(
            TrialEvent(
                kind=EventKind.DEATH,
                patient_id=patient_id,
                source=source,
                values={"source": "deceasedBoolean"},
            )
        )
    return events
