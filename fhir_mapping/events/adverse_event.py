"""AdverseEvent → adverse_event: the term, its CTCAE grade, MedDRA code, outcome and suspects."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fhir_mapping.events.common import (
    DRUG_CONCEPTS,
    as_dict,
    concept_json,
    is_void,
    medication_concept,
    medication_text,
)
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import first_date, parse_partial_date
from fhir_mapping.references import parse_reference
from fhir_mapping.terminology import ConceptMatch, codings, concept_texts

# CLINICAL.md: all three MedDRA system spellings are accepted (plus any system ending in MDRAE).
MEDDRA_SYSTEMS = frozenset({"https://www.meddra.org", "http://terminology.hl7.org/CodeSystem/mdr"})

# Extension urls (matched by their last segment) that carry a CTCAE grade: the AE research
# backport IG's `ae-grade` and the legacy `ctcae-grade`.
GRADE_URL_SUFFIXES = ("ae-grade", "ctcae-grade")
# The backport IG's severity-or-grade may hold a grade too; read only when it parses as one.
_SEVERITY_OR_GRADE = ("severity-or-grade",)
_RESOLVE_DATE_SUFFIXES = ("resolveDate", "resolution-date", "resolve-date")
_GRADE_CONCEPTS = tuple(f"ctcae_grade_{n}" for n in range(1, 6))

_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5}
_BARE_GRADE = re.compile(r"\s*(?:grade|gr\.?|g)?\s*([1-5])\s*", re.IGNORECASE)
_GRADE_IN_TEXT = re.compile(
    r"(?<![a-z0-9])(?:ctcae\s+)?grade\s*(?P<n>[1-5]|IV|V|I{1,3})(?![a-z0-9])", re.IGNORECASE
)

# Suspect entities that are medicines (a Procedure or Device suspect is not a medication).
_MEDICINE_TYPES = (
    "Medication",
    "MedicationAdministration",
    "MedicationStatement",
    "MedicationRequest",
    "Substance",
    "Immunization",
)


def _items(value: Any) -> list[Any]:
    """The value when it is a JSON array, else an empty one (malformed input maps to nothing)."""
    return value if isinstance(value, list) else []


def _extensions(element: dict[str, Any], key: str = "extension") -> Iterator[dict[str, Any]]:
    """The well-formed extensions of an element (each a dict with a string url)."""
    for ext in _items(element.get(key)):
        if isinstance(ext, dict) and isinstance(ext.get("url"), str):
            yield ext


def _url_ends(ext: dict[str, Any], suffixes: tuple[str, ...]) -> bool:
    """Whether an extension's url ends with one of the suffixes (after a `/` or as the whole url)."""
    url = str(ext["url"])
    return any(url == s or url.endswith("/" + s) for s in suffixes)


def grade_from_text(text: str) -> int | None:
    """A CTCAE grade 1–5 written as '3', 'Grade 3', 'G3' or 'Grade III'; None otherwise."""
    bare = _BARE_GRADE.fullmatch(text)
    if bare:
        return int(bare[1])
    found = _GRADE_IN_TEXT.search(text)
    if found is None:
        return None
    n = found["n"].upper()
    return int(n) if n.isdigit() else _ROMAN[n]


def _grade_from_value(ext: dict[str, Any], ctx: MappingContext) -> int | None:
    """The grade an extension value states (integer, string, Coding or CodeableConcept)."""
    integer = ext.get("valueInteger", ext.get("valuePositiveInt"))
    if isinstance(integer, int) and not isinstance(integer, bool):
        return integer if 1 <= integer <= 5 else None
    if isinstance(ext.get("valueString"), str):
        return grade_from_text(ext["valueString"])
    concept = ext.get("valueCodeableConcept", ext.get("valueCoding"))
    if not isinstance(concept, dict):
        return None
    coded = ctx.terminology.first(concept, _GRADE_CONCEPTS)
    if coded is not None and coded.matched_by == "code":
        return int(coded.concept.rsplit("_", 1)[1])
    for coding in codings(concept):
        if isinstance(coding.get("code"), str):
            grade = grade_from_text(coding["code"])
            if grade is not None:
                return grade
    for text in concept_texts(concept):
        grade = grade_from_text(text)
        if grade is not None:
            return grade
    return None


def has_grade_extension(resource: dict[str, Any]) -> bool:
    """Whether the resource carries an `ae-grade` / `ctcae-grade` extension (it is graded as an AE)."""
    return any(_url_ends(ext, GRADE_URL_SUFFIXES) for ext in _extensions(resource))


def graded_by(
    resource: dict[str, Any], ctx: MappingContext, *, fallback_severity: bool = False
) -> tuple[int | None, str | None]:
    """The CTCAE grade from the grade extensions (first readable one) and that extension's url."""
    suffix_groups: list[tuple[str, ...]] = [GRADE_URL_SUFFIXES]
    if fallback_severity:
        suffix_groups.append(_SEVERITY_OR_GRADE)
    for suffixes in suffix_groups:
        for ext in _extensions(resource):
            if _url_ends(ext, suffixes):
                grade = _grade_from_value(ext, ctx)
                if grade is not None:
                    return grade, str(ext["url"])
    return None, None


def meddra_code(concept: Any) -> str | None:
    """The MedDRA code of a CodeableConcept, under any of the accepted system urls."""
    for coding in codings(concept):
        system, code = coding.get("system"), coding.get("code")
        if (
            isinstance(system, str)
            and isinstance(code, str)
            and (system in MEDDRA_SYSTEMS or system.rstrip("/").endswith("MDRAE"))
        ):
            return code
    return None


def _first_code(concept: Any) -> str | None:
    """The first code of a CodeableConcept, whatever its system (status-like elements)."""
    for coding in codings(concept):
        if isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None


def _term_text(concept: Any) -> str | None:
    """The readable AE term: CodeableConcept.text, else the first coding display."""
    return next(concept_texts(concept), None)


def _backport_voided(resource: dict[str, Any]) -> bool:
    """The backport IG's status modifierExtension says entered-in-error: the record is void."""
    return any(
        _url_ends(ext, ("status",)) and ext.get("valueCode") == "entered-in-error"
        for ext in _extensions(resource, "modifierExtension")
    )


def _resolution_text(resource: dict[str, Any]) -> str | None:
    """The lexical date of a resolve-date extension, when the feed sends one."""
    for ext in _extensions(resource):
        if _url_ends(ext, _RESOLVE_DATE_SUFFIXES):
            for key in ("valueDateTime", "valueDate", "valueString"):
                if isinstance(ext.get(key), str):
                    return str(ext[key])
    return None


def _suspect_concept(
    reference: Any, resource: dict[str, Any], ctx: MappingContext
) -> dict[str, Any] | None:
    """A medicine a suspect reference names, as a CodeableConcept: its display, else the resolved
    resource's code; None for a suspect that is not a medicine (a Procedure, a Device)."""
    ref = as_dict(reference)
    target = ref.get("reference")
    declared = ref.get("type")
    rtype = parse_reference(target).resource_type if isinstance(target, str) else None
    if isinstance(declared, str):
        rtype = rtype or declared
    if rtype is not None and rtype not in _MEDICINE_TYPES:
        return None
    if isinstance(ref.get("display"), str):
        return {"text": ref["display"]}
    found = ctx.resolve(ref, resource, _MEDICINE_TYPES)
    if found is None or found.resource is None:
        return None
    content = found.resource
    if found.resource_type in ("Medication", "Substance"):
        return as_dict(content.get("code")) or None
    if found.resource_type == "Immunization":
        return as_dict(content.get("vaccineCode")) or None
    return medication_concept(content, ctx)


def _causality_related(assessments: list[Any], ctx: MappingContext) -> bool:
    """Whether any causality assessment (coded, or a relatedness text) says related."""
    return any(
        ctx.terminology.match("causality_related", a) is not None
        for a in assessments
        if isinstance(a, dict)
    )


def _r4_assessments(entity: dict[str, Any]) -> list[Any]:
    """R4 suspectEntity.causality: each assessment, and productRelatedness as a text."""
    out: list[Any] = []
    for causality in _items(entity.get("causality")):
        causality = as_dict(causality)
        out.append(causality.get("assessment"))
        if isinstance(causality.get("productRelatedness"), str):
            out.append({"text": causality["productRelatedness"]})
    return out


def _backport_assessments(ext: dict[str, Any]) -> list[Any]:
    """The backport IG's suspect-entity causality parts (entityRelatedness, assessment …)."""
    out: list[Any] = []
    for part in _extensions(ext):
        if part["url"] != "causality":
            continue
        for item in _extensions(part):
            if isinstance(item.get("valueCodeableConcept"), dict):
                out.append(item["valueCodeableConcept"])
            elif isinstance(item.get("valueString"), str):
                out.append({"text": item["valueString"]})
    return out


def _suspects(resource: dict[str, Any], ctx: MappingContext) -> list[tuple[dict[str, Any], bool]]:
    """Each suspected medicine and whether its causality is assessed as related: R4
    suspectEntity and the backport suspect-entity extension."""
    found: list[tuple[dict[str, Any], bool]] = []
    for entity in _items(resource.get("suspectEntity")):
        entity = as_dict(entity)
        concept = _suspect_concept(entity.get("instance"), resource, ctx)
        if concept is not None:
            found.append((concept, _causality_related(_r4_assessments(entity), ctx)))
    for ext in _extensions(resource):
        if not _url_ends(ext, ("suspect-entity",)):
            continue
        for part in _extensions(ext):
            if part["url"] != "instance":
                continue
            if isinstance(part.get("valueReference"), dict):
                concept = _suspect_concept(part["valueReference"], resource, ctx)
            else:
                concept = as_dict(part.get("valueCodeableConcept")) or None
            if concept is not None:
                found.append((concept, _causality_related(_backport_assessments(ext), ctx)))
    return found


def _related_suspects(
    suspects: list[tuple[dict[str, Any], bool]], ctx: MappingContext
) -> list[dict[str, Any]]:
    """The suspects assessed as related, with the drug value sets they are in (study drugs …)."""
    out: list[dict[str, Any]] = []
    for concept, related in suspects:
        if related:
            drugs = [m.concept for m in ctx.terminology.matches(concept, DRUG_CONCEPTS)]
            out.append({"medication": medication_text(concept), "drugs": drugs})
    return out


def _immune_related(resource: dict[str, Any], ctx: MappingContext) -> ConceptMatch | None:
    """The irAE value set, matched on the event term, else on a category."""
    found = ctx.terminology.match("immune_related_ae", resource.get("event"))
    for category in _items(resource.get("category")):
        found = found or ctx.terminology.match("immune_related_ae", category)
    return found


def skin_qualified(matches: list[ConceptMatch]) -> tuple[ConceptMatch, ...]:
    """The matches, keeping the cirAE exclusion set only where it qualifies a cirAE term.

    "Radiation dermatitis" is a skin term that is not a cirAE; a burn or a sepsis that is no skin
    term at all needs no such note.
    """
    found = {m.concept for m in matches}
    if "cutaneous_irae" in found:
        return tuple(matches)
    return tuple(m for m in matches if m.concept != "cutaneous_irae_excluded")


def _patient_id(resource: dict[str, Any], ctx: MappingContext) -> str | None:
    """The subject's Patient id; a subject typed as a Group, Practitioner… has none."""
    subject = resource.get("subject")
    declared = as_dict(subject).get("type")
    if isinstance(declared, str) and declared != "Patient":
        return None
    return ctx.patient_id(subject, resource)


def map_adverse_event(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """One event per actual adverse event: term, CTCAE grade and MedDRA code for safety tables."""
    if is_void(resource) or _backport_voided(resource):
        return []
    if resource.get("actuality") == "potential":
        return []
    event = resource.get("event")
    resolution = _resolution_text(resource)
    suspects = _suspects(resource, ctx)
    grade, grade_source = graded_by(resource, ctx, fallback_severity=True)
    values: dict[str, Any] = {
        "term": concept_json(event),
        "term_text": _term_text(event),
        "meddra": meddra_code(event),
        "grade": grade,
        "grade_source": grade_source,  # the extension url the grade was read from
        "severity": _first_code(resource.get("severity")),  # mild | moderate | severe
        "seriousness": _first_code(resource.get("seriousness")),
        "outcome": _first_code(resource.get("outcome")),
        "suspect_medications": list(
            dict.fromkeys(
                name for concept, _ in suspects if (name := medication_text(concept)) is not None
            )
        ),
        "related_suspects": _related_suspects(suspects, ctx),
        "resolution_date": resolution,
        "recorded_date": resource.get("recordedDate")
        if isinstance(resource.get("recordedDate"), str)
        else None,
    }
    skin = ctx.terminology.matches(event, ("cutaneous_irae", "cutaneous_irae_excluded"))
    immune = _immune_related(resource, ctx)
    return [
        TrialEvent(
            kind=EventKind.ADVERSE_EVENT,
            patient_id=_patient_id(resource, ctx),
            source=source,
            date=first_date(
                resource.get("date"), resource.get("detected"), resource.get("recordedDate")
            ),
            end=parse_partial_date(resolution),
            values=values,
            concepts=(*skin_qualified(skin), *((immune,) if immune is not None else ())),
        )
    ]
