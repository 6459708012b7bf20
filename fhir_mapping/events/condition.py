"""Condition → condition: diagnoses for eligibility (NSCLC, metastases, autoimmunity), cirAEs, Charlson."""

from __future__ import annotations

import re
from typing import Any

from fhir_mapping.events.adverse_event import graded_by, has_grade_extension, skin_qualified
from fhir_mapping.events.common import as_dict, concept_json, is_void
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import first_date, parse_partial_date, period_bounds
from fhir_mapping.terminology import ICD10, ICD10CM, codings

# The value sets a Condition's code is tested against, in the order events list them.
CONDITION_CONCEPTS = (
    "nsclc",
    "small_cell_lung_cancer",
    "lung_cancer",
    "metastatic_disease",
    "regional_nodal_disease",
    "distant_metastasis",
    "autoimmune_disease",
    "cutaneous_irae",
    "cutaneous_irae_excluded",
    "immune_related_ae",
)
_ICD10_SYSTEMS = frozenset({ICD10CM, ICD10})
_ADVERSE_EVENT = re.compile(r"(?<![a-z0-9])adverse[\s\-_]*events?(?![a-z0-9])", re.IGNORECASE)
# An Age quantity's unit (UCUM code, else the unit text) in years.
_AGE_UNIT_YEARS = {
    "a": 1.0,
    "y": 1.0,
    "yr": 1.0,
    "yrs": 1.0,
    "year": 1.0,
    "years": 1.0,
    "mo": 1 / 12,
    "month": 1 / 12,
    "months": 1 / 12,
    "wk": 7 / 365.25,
    "week": 7 / 365.25,
    "weeks": 7 / 365.25,
    "d": 1 / 365.25,
    "day": 1 / 365.25,
    "days": 1 / 365.25,
}
# onsetString naming childhood ("since childhood", "infancy"): an onset before age 18.
_CHILDHOOD_YEARS = (0.0, 18.0)


def _items(value: Any) -> list[Any]:
    """The value when it is a JSON array, else an empty one (malformed input maps to nothing)."""
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    """A string element as written, else None."""
    return value if isinstance(value, str) else None


def _code_of(concept: Any) -> str | None:
    """The first code of a status-like CodeableConcept (clinicalStatus, verificationStatus)."""
    for coding in codings(concept):
        if isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None


def _category_codes(resource: dict[str, Any]) -> list[str]:
    """Every category code, in the order written."""
    return [
        str(coding["code"])
        for category in _items(resource.get("category"))
        for coding in codings(category)
        if isinstance(coding.get("code"), str)
    ]


def _icd10_codes(code: Any) -> list[str]:
    """ICD-10(-CM) codes exactly as written, for the Charlson index downstream."""
    return [
        str(coding["code"])
        for coding in codings(code)
        if coding.get("system") in _ICD10_SYSTEMS and isinstance(coding.get("code"), str)
    ]


def _category_says_adverse_event(resource: dict[str, Any]) -> bool:
    """A category code, display or text names an adverse event ('adverse-event', 'Adverse event')."""
    for category in _items(resource.get("category")):
        category = as_dict(category)
        texts = [category.get("text")]
        for coding in codings(category):
            texts += [coding.get("code"), coding.get("display")]
        if any(isinstance(t, str) and _ADVERSE_EVENT.search(t) for t in texts):
            return True
    return False


def _age(quantity: Any) -> tuple[float, float] | None:
    """An Age as [years, years + one unit): "5 a" is any day from the 5th to the 6th birthday."""
    quantity = as_dict(quantity)
    value = quantity.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        return None
    for unit in (quantity.get("code"), quantity.get("unit")):
        if isinstance(unit, str) and (per := _AGE_UNIT_YEARS.get(unit.strip().lower())):
            return float(value) * per, (float(value) + 1) * per
    return None


def _onset(resource: dict[str, Any], ctx: MappingContext) -> dict[str, Any] | None:
    """Which onset[x] the Condition states and what it says, or None when it states none.

    The event's date falls back to recordedDate when onset[x] carries no date; this keeps the
    onset itself, so a study can tell a charted date from an onset (an onsetAge, an onset in
    childhood, a Period with an end only) and place the onset on the patient's own calendar.
    """
    if isinstance(resource.get("onsetDateTime"), str):
        return {"type": "dateTime", "start": resource["onsetDateTime"]}
    if isinstance(resource.get("onsetPeriod"), dict):
        period = resource["onsetPeriod"]
        return {"type": "Period", "start": period.get("start"), "end": period.get("end")}
    if isinstance(resource.get("onsetAge"), dict):
        age = _age(resource["onsetAge"])
        return {"type": "Age", "age_years": list(age) if age is not None else None}
    if isinstance(resource.get("onsetRange"), dict):
        low = _age(resource["onsetRange"].get("low"))
        high = _age(resource["onsetRange"].get("high"))
        ages = [low[0] if low else None, high[1] if high else None]
        return {"type": "Range", "age_years": ages if any(a is not None for a in ages) else None}
    text = resource.get("onsetString")
    if isinstance(text, str):
        childhood = ctx.terminology.match("childhood_onset", {"text": text}) is not None
        return {
            "type": "String",
            "text": text,
            "start": text.strip() if parse_partial_date(text.strip()) else None,
            "age_years": list(_CHILDHOOD_YEARS) if childhood else None,
        }
    return None


def _patient_id(resource: dict[str, Any], ctx: MappingContext) -> str | None:
    """The subject's Patient id; a subject typed as a Group has none."""
    subject = resource.get("subject")
    declared = as_dict(subject).get("type")
    if isinstance(declared, str) and declared != "Patient":
        return None
    return ctx.patient_id(subject, resource)


def map_condition(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """One event per asserted condition (not void, not refuted), with the value sets it is in."""
    verification = _code_of(resource.get("verificationStatus"))
    if is_void(resource) or verification == "refuted":
        return []
    code = resource.get("code")
    onset_start, _ = period_bounds(resource.get("onsetPeriod"))
    _, abatement_end = period_bounds(resource.get("abatementPeriod"))
    graded = has_grade_extension(resource)
    grade, grade_source = graded_by(resource, ctx) if graded else (None, None)
    values: dict[str, Any] = {
        "code": concept_json(code),
        "clinical_status": _code_of(resource.get("clinicalStatus")),
        "verification_status": verification,
        "categories": _category_codes(resource),
        "icd10": _icd10_codes(code),
        "is_adverse_event": graded or _category_says_adverse_event(resource),
        "grade": grade,
        "grade_source": grade_source,  # the extension url the grade was read from
        "stage": [
            summary
            for stage in _items(resource.get("stage"))
            if (summary := concept_json(as_dict(stage).get("summary"))) is not None
        ],
        "onset": _onset(resource, ctx),
        "recorded_date": _text(resource.get("recordedDate")),
    }
    return [
        TrialEvent(
            kind=EventKind.CONDITION,
            patient_id=_patient_id(resource, ctx),
            source=source,
            date=first_date(resource.get("onsetDateTime"))
            or onset_start
            or first_date(resource.get("recordedDate")),
            end=first_date(resource.get("abatementDateTime")) or abatement_end,
            values=values,
            concepts=skin_qualified(ctx.terminology.matches(code, CONDITION_CONCEPTS)),
        )
    ]
