"""Helpers every mapper shares: status filters, medications, doses in mg, routes."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_mapping.events.context import MappingContext
from fhir_mapping.terminology import UCUM, ConceptMatch

# Statuses that mean "this record is void": its events disappear.
VOID_STATUSES = frozenset({"entered-in-error"})

DRUG_CONCEPTS = (
    "dupilumab",
    "cemiplimab",
    "pd1_inhibitor",
    "pdl1_inhibitor",
    "ctla4_inhibitor",
    "systemic_glucocorticoid",
    "immunosuppressant",
    "biologic_immunomodulator",
    "dexamethasone",  # a peri-operative dose is a protocol choice (NCT06088771)
)

# Routes read from the route element itself (never from the dose form): the peri-operative
# dexamethasone choice names the intravenous route.
ROUTE_CONCEPTS = ("route_intravenous",)
# What a drug record may name as the reason it was given: the adverse event it treats.
REASON_TYPES = ("AdverseEvent", "Condition")

# UCUM mass units → factor to milligrams (exact decimals; the lexical dose is kept alongside).
_MG_FACTORS: dict[str, Decimal] = {
    "g": Decimal(1000),
    "mg": Decimal(1),
    "ug": Decimal("0.001"),
    "ng": Decimal("0.000001"),
    "kg": Decimal(1000000),
}


def as_dict(value: Any) -> dict[str, Any]:
    """The value when it is a JSON object, else an empty one (malformed input maps to nothing)."""
    return value if isinstance(value, dict) else {}


def status_of(resource: dict[str, Any]) -> str | None:
    """The resource's status code, when it has one."""
    status = resource.get("status")
    return status if isinstance(status, str) else None


def is_void(resource: dict[str, Any]) -> bool:
    """Entered-in-error records carry no facts (Condition says so in verificationStatus)."""
    if status_of(resource) in VOID_STATUSES:
        return True
    verification = resource.get("verificationStatus")
    if isinstance(verification, dict):
        for coding in verification.get("coding") or ():
            if isinstance(coding, dict) and coding.get("code") == "entered-in-error":
                return True
    return False


def medication_concept(resource: dict[str, Any], ctx: MappingContext) -> dict[str, Any] | None:
    """The medication as a CodeableConcept, inline or from the referenced Medication."""
    inline = resource.get("medicationCodeableConcept")
    if isinstance(inline, dict):
        return inline
    found = ctx.resolve(resource.get("medicationReference"), resource, ("Medication",))
    if found and found.resource and isinstance(found.resource.get("code"), dict):
        code: dict[str, Any] = found.resource["code"]
        return code
    ref = resource.get("medicationReference")
    if isinstance(ref, dict) and isinstance(ref.get("display"), str):
        return {"text": ref["display"]}
    return None


def medication_text(concept: dict[str, Any] | None) -> str | None:
    """A readable name for the medication: text, else the first display, else the first code."""
    if not concept:
        return None
    if isinstance(concept.get("text"), str):
        return str(concept["text"])
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict):
            for key in ("display", "code"):
                if isinstance(coding.get(key), str):
                    return str(coding[key])
    return None


def drug_matches(concept: dict[str, Any] | None, ctx: MappingContext) -> list[ConceptMatch]:
    """Which drug value sets (study drugs, ICB classes, immunosuppression) the medication is in."""
    return ctx.terminology.matches(concept, DRUG_CONCEPTS) if concept else []


def dose_in_mg(quantity: Any) -> dict[str, Any] | None:
    """A dose normalised to mg from its UCUM code; non-UCUM or non-mass units kept raw and flagged."""
    if not isinstance(quantity, dict) or quantity.get("value") is None:
        return None
    raw = quantity.get("value")
    unit = quantity.get("unit") if isinstance(quantity.get("unit"), str) else None
    code = quantity.get("code") if isinstance(quantity.get("code"), str) else None
    text = getattr(raw, "text", None) or str(raw)  # the number as it was written
    out: dict[str, Any] = {"value": text, "unit": unit, "code": code, "mg": None, "flag": None}
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        out["flag"] = "unreadable value"
        return out
    if quantity.get("system") != UCUM or code is None:
        out["flag"] = "not a UCUM unit: kept as sent, not converted"
        return out
    factor = _MG_FACTORS.get(code)
    if factor is None:
        out["flag"] = f"UCUM unit {code!r} is not a mass: not converted"
        return out
    out["mg"] = format((value * factor).normalize(), "f") if value else "0"
    return out


def route_class(
    route: Any, medication: dict[str, Any] | None, ctx: MappingContext
) -> tuple[str | None, ConceptMatch | None]:
    """('systemic' | 'local' | None, match): from the route, else from the dose form in the name."""
    for concept in (route, medication):
        if not isinstance(concept, dict):
            continue
        local = ctx.terminology.match("route_local", concept)
        if local:
            return "local", local
        systemic = ctx.terminology.match("route_systemic", concept)
        if systemic:
            return "systemic", systemic
    return None, None


def route_matches(route: Any, ctx: MappingContext) -> list[ConceptMatch]:
    """The route value sets the route element itself is in (intravenous …)."""
    return ctx.terminology.matches(route, ROUTE_CONCEPTS) if isinstance(route, dict) else []


def reasons(resource: dict[str, Any], ctx: MappingContext) -> list[str]:
    """`Type/id` of the AdverseEvents and Conditions the record names in `reasonReference`."""
    found: list[str] = []
    items = resource.get("reasonReference")
    for ref in items if isinstance(items, list) else ():
        target = ctx.resolve(ref, resource, REASON_TYPES, fetch=False)
        if target is not None and target.resource_id is not None:
            found.append(f"{target.resource_type}/{target.resource_id}")
    return list(dict.fromkeys(found))


def concept_json(concept: Any) -> dict[str, Any] | None:
    """A CodeableConcept reduced to its codings and text, for event values."""
    if not isinstance(concept, dict):
        return None
    coded = [
        {k: c.get(k) for k in ("system", "code", "display") if isinstance(c.get(k), str)}
        for c in concept.get("coding") or ()
        if isinstance(c, dict)
    ]
    out: dict[str, Any] = {"coding": coded}
    if isinstance(concept.get("text"), str):
        out["text"] = concept["text"]
    return out


def first_code(concept: Any, system: str) -> str | None:
    """The first code of a given system in a CodeableConcept."""
    if isinstance(concept, dict):
        for coding in concept.get("coding") or ():
            if (
                isinstance(coding, dict)
                and coding.get("system") == system
                and isinstance(coding.get("code"), str)
            ):
                return str(coding["code"])
    return None
