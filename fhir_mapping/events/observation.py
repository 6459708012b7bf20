"""Observation → one typed event: TNM category, genomic finding, smoking, viable tumour, disease status."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fhir_mapping.events.common import as_dict, concept_json, is_void, status_of
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.partial_dates import PartialDate, first_date, period_bounds
from fhir_mapping.terminology import ConceptMatch, codings, concept_texts

# Observation statuses whose result stands (an amended or corrected value replaces the earlier one).
KEPT_STATUSES = frozenset({"registered", "preliminary", "final", "amended", "corrected"})

_TNM_AXES = {"tnm_t": "T", "tnm_n": "N", "tnm_m": "M", "tnm_stage_group": "stage_group"}
_GENES = {"egfr_gene": "EGFR", "alk_gene": "ALK", "ros1_gene": "ROS1"}
_SMOKING = (("never_smoker", "never"), ("ever_smoker", "ever"), ("smoking_unknown", "unknown"))
_METHODS = (
    ("genomic_method_fish", "FISH"),
    ("genomic_method_ngs", "NGS"),
    ("genomic_method_pcr", "PCR"),
)

# Which value set decides the event kind. Any code match wins over every name match; among name
# matches the more specific wording goes first ("viable tumor in primary tumor bed" is not a T
# category, "EGFR mutation" is not a disease status).
_KIND_ORDER = (
    "viable_tumour",
    "smoking_status",
    "tnm_stage_group",
    "tnm_t",
    "tnm_n",
    "tnm_m",
    "genetic_variant_assessment",
    "egfr_gene",
    "alk_gene",
    "ros1_gene",
    "disease_status",
)
_GENOMIC_TRIGGERS = frozenset({"genetic_variant_assessment", *_GENES})

# The R4 core genetics profile names the gene in this extension (official example genetics-1).
_GENETICS_GENE_URL = "http://hl7.org/fhir/StructureDefinition/observation-geneticsGene"

# One TNM category token: optional AJCC/UICC prefix, axis letter, category. Boundaries are checked
# in code so that run-together strings ("T1bN0M0") still split into their categories.
_TNM_TOKEN = re.compile(
    r"(?P<prefix>yc|yp|rc|rp|ap|c|p|y|r|a|u)?(?P<axis>[TNM])(?P<cat>is|X|[0-4](?:mi|[a-d])?)",
    re.IGNORECASE,
)
_TNM_VALID = {
    "T": re.compile(r"X|is|0|1mi|[1-4][a-d]?", re.IGNORECASE),
    "N": re.compile(r"X|0|1mi|[1-3][a-c]?", re.IGNORECASE),
    "M": re.compile(r"X|0|1[a-d]?", re.IGNORECASE),
}
_STAGE_WORD = re.compile(
    r"(?<![a-z])(?P<prefix>yc|yp|c|p)?(?:stage|stadium|stade)\s*"
    r"(?P<g>IV|I{1,3}|[0-4])(?P<sub>[ABC]?)(?P<n>[1-3]?)(?![a-z0-9])",
    re.IGNORECASE,
)
_STAGE_CODE = re.compile(
    r"\s*(?P<prefix>yc|yp|c|p)?(?P<g>IV|I{1,3}|[0-4])(?P<sub>[ABC]?)(?P<n>[1-3]?)\s*"
)
_STAGE_BARE = re.compile(
    r"(?<![A-Za-z0-9])(?P<g>IV|I{1,3})(?P<sub>[ABC]?)(?P<n>[1-3]?)(?![A-Za-z0-9])"
)
_ROMAN = {"0": "0", "1": "I", "2": "II", "3": "III", "4": "IV"}
# The kidney-function lab eGFR is written with a lower-case e; the gene never is.
_KIDNEY_EGFR = re.compile(r"(?<![A-Za-z0-9])eGFR(?![A-Za-z0-9])")


def _items(value: Any) -> list[Any]:
    """The value when it is a JSON array, else an empty one (malformed input maps to nothing)."""
    return value if isinstance(value, list) else []


def _lexical(number: Any) -> str:
    """A JSON number as it was written (LexicalDecimal keeps its text; str() otherwise)."""
    text = getattr(number, "text", None)
    return text if isinstance(text, str) else str(number)


def effective_dates(resource: dict[str, Any]) -> tuple[PartialDate | None, PartialDate | None]:
    """(date, end): effectiveDateTime, effectivePeriod, effectiveInstant, else issued (an
    Observation's or a DiagnosticReport's)."""
    start, end = period_bounds(resource.get("effectivePeriod"))
    when = first_date(resource.get("effectiveDateTime"))
    if when is None and start is not None:
        return start, end
    return when or first_date(resource.get("effectiveInstant"), resource.get("issued")), None


def _value_texts(resource: dict[str, Any]) -> list[str]:
    """The value as text, in reading order: each coding's code and display, the text, valueString."""
    out: list[str] = []
    value = resource.get("valueCodeableConcept")
    for coding in codings(value):
        out += [coding[k] for k in ("code", "display") if isinstance(coding.get(k), str)]
    if isinstance(as_dict(value).get("text"), str):
        out.append(as_dict(value)["text"])
    if isinstance(resource.get("valueString"), str):
        out.append(resource["valueString"])
    return [t for t in out if t.strip()]


def _value_concept(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The value as a CodeableConcept to match (a valueString becomes its text)."""
    value = resource.get("valueCodeableConcept")
    if isinstance(value, dict):
        return value
    if isinstance(resource.get("valueString"), str):
        return {"text": resource["valueString"]}
    return None


def _readable(concept: Any) -> str | None:
    """A CodeableConcept's text, else its first display."""
    return next(concept_texts(concept), None)


# --- TNM ------------------------------------------------------------------------------------


def _tnm_tokens(text: str) -> Iterator[tuple[str | None, str, str]]:
    """(prefix, axis, category) for each TNM token standing on its own or run together with others."""
    prev_end = -1
    for m in _TNM_TOKEN.finditer(text):
        start, end = m.span()
        if start > 0 and text[start - 1].isalnum() and start != prev_end:
            continue
        if end < len(text) and text[end].isalnum() and not _TNM_TOKEN.match(text, end):
            continue
        axis = m["axis"].upper()
        cat = m["cat"]
        if not _TNM_VALID[axis].fullmatch(cat):
            continue
        prev_end = end
        norm = cat.upper() if cat.upper() == "X" else cat.lower()
        prefix = m["prefix"].lower() if m["prefix"] else None
        yield prefix, axis, f"{axis}{norm}"


def _stage_group(text: str) -> tuple[str | None, str] | None:
    """(prefix, group) from 'Stage IIIA', 'stage 3A', 'IV', an AJCC code '3A'; None if absent."""
    m = _STAGE_WORD.search(text) or _STAGE_CODE.fullmatch(text)
    if m is None:
        bare = _STAGE_BARE.search(text)
        if bare is None:
            return None
        return None, bare["g"] + bare["sub"] + bare["n"]
    group = m["g"].upper()
    group = _ROMAN.get(group, group)
    prefix = m["prefix"].lower() if m["prefix"] else None
    return prefix, group + m["sub"].upper() + m["n"]


def parse_tnm(text: str, axis: str) -> tuple[str | None, str] | None:
    """(prefix, category) of the wanted axis ('T'|'N'|'M'|'stage_group') read from one text."""
    if axis == "stage_group":
        return _stage_group(text)
    for prefix, found_axis, category in _tnm_tokens(text):
        if found_axis == axis:
            return prefix, category
    return None


def _tnm_values(
    resource: dict[str, Any], axis: str, ctx: MappingContext
) -> tuple[dict[str, Any], list[ConceptMatch]]:
    """Values of a TNM category event, and the pathological-setting match when there is one."""
    texts = _value_texts(resource)
    raw, prefix, category = (texts[0] if texts else None), None, None
    for text in texts:
        parsed = parse_tnm(text, axis)
        if parsed is not None:
            raw, (prefix, category) = text, parsed
            break
    pathological = ctx.terminology.match("tnm_pathological", resource.get("code"))
    by_prefix = prefix is not None and prefix.endswith("p")
    values = {
        "axis": axis,
        "setting": "pathological" if pathological or by_prefix else "clinical",
        "raw": raw,
        "category": category,
        "prefix": prefix,
        "value": concept_json(resource.get("valueCodeableConcept")),
    }
    return values, [pathological] if pathological else []


# --- genomic findings --------------------------------------------------------------------------


def _gene_matches(concept: Any, ctx: MappingContext) -> list[ConceptMatch]:
    """EGFR / ALK / ROS1 named by a concept (never the kidney lab 'eGFR')."""
    found = []
    for match in ctx.terminology.matches(concept, _GENES):
        if (
            match.concept == "egfr_gene"
            and match.matched_by == "name"
            and _KIDNEY_EGFR.search(match.text or "")
        ):
            continue
        found.append(match)
    return found


def _gene_sources(resource: dict[str, Any], ctx: MappingContext) -> Iterator[dict[str, Any]]:
    """Where a gene may be named: gene-studied components, the genetics-gene extension."""
    for component in _items(resource.get("component")):
        component = as_dict(component)
        if ctx.terminology.match("gene_studied", component.get("code")) is not None:
            value = component.get("valueCodeableConcept")
            if isinstance(value, dict):
                yield value
    for ext in _items(resource.get("extension")):
        if as_dict(ext).get("url") == _GENETICS_GENE_URL:
            value = as_dict(ext).get("valueCodeableConcept")
            if isinstance(value, dict):
                yield value


def _genes(resource: dict[str, Any], ctx: MappingContext) -> list[ConceptMatch]:
    """The first match for each gene named by a component, extension, the code, or the value."""
    sources = [*_gene_sources(resource, ctx), resource.get("code"), _value_concept(resource)]
    found: dict[str, ConceptMatch] = {}
    for source in sources:
        for match in _gene_matches(source, ctx):
            found.setdefault(match.concept, match)
    return [found[c] for c in _GENES if c in found]


def _significance(resource: dict[str, Any], ctx: MappingContext) -> list[ConceptMatch]:
    """The clinical significance stated: pathogenic, or not activating (uncertain, benign).

    Read from a clinical-significance component (LOINC 53037-8), then the interpretation and the
    value ("Variant of uncertain significance"); not activating is tested first.
    """
    sources: list[Any] = [
        as_dict(component).get("valueCodeableConcept")
        for component in _items(resource.get("component"))
        if ctx.terminology.match("variant_significance", as_dict(component).get("code"))
    ]
    sources += [i for i in _items(resource.get("interpretation")) if isinstance(i, dict)]
    sources.append(_value_concept(resource))
    for concept_id in ("variant_not_activating", "variant_pathogenic"):
        for source in sources:
            match = ctx.terminology.match(concept_id, source) if source is not None else None
            if match is not None:
                return [match]
    return []


def _result(
    resource: dict[str, Any], ctx: MappingContext
) -> tuple[str | None, ConceptMatch | None]:
    """'positive' | 'negative' from the value, else the interpretation; negative is tested first.

    A variant of uncertain significance, benign or likely benign is 'not_activating' whatever its
    presence says; a pathogenic one is 'positive' when the value says nothing.
    """
    significance = _significance(resource, ctx)
    if significance and significance[0].concept == "variant_not_activating":
        return "not_activating", significance[0]
    interpretations = [i for i in _items(resource.get("interpretation")) if isinstance(i, dict)]
    for source in (_value_concept(resource), *interpretations):
        if source is None:
            continue
        negative = ctx.terminology.match("result_negative", source)
        if negative is not None:
            return "negative", negative
        positive = ctx.terminology.match("result_positive", source)
        if positive is not None:
            return "positive", positive
    if significance:
        return "positive", significance[0]
    return None, None


def _method(resource: dict[str, Any], ctx: MappingContext) -> str | None:
    """'FISH' | 'NGS' | 'PCR' from the method or the code (LOINC 78205-2 is ALK by FISH)."""
    for concept in (resource.get("method"), resource.get("code")):
        for concept_id, label in _METHODS:
            if ctx.terminology.match(concept_id, concept) is not None:
                return label
    return None


def _specimen_kind(resource: dict[str, Any], ctx: MappingContext) -> str | None:
    """'ctDNA' when anything says plasma / cell-free / liquid biopsy, 'tissue' for other specimens."""
    specimen = resource.get("specimen")
    candidates: list[Any] = [resource.get("code"), resource.get("method")]
    if isinstance(specimen, dict):
        if isinstance(specimen.get("display"), str):
            candidates.append({"text": specimen["display"]})
        found = ctx.resolve(specimen, resource, ("Specimen",))
        if found is not None and found.resource is not None:
            candidates.append(found.resource.get("type"))
    if any(ctx.terminology.match("ctdna_specimen", c) is not None for c in candidates):
        return "ctDNA"
    if isinstance(specimen, dict) and (specimen.get("reference") or specimen.get("display")):
        return "tissue"
    return None


def _genomic_values(
    resource: dict[str, Any], ctx: MappingContext
) -> tuple[dict[str, Any], list[ConceptMatch]]:
    """Values of a genomic finding event, and the gene and result matches behind them."""
    genes = _genes(resource, ctx)
    result, result_match = _result(resource, ctx)
    value = resource.get("valueCodeableConcept")
    values = {
        "genes": sorted(_GENES[m.concept] for m in genes),
        "result": result,
        "method": _method(resource, ctx),
        "specimen_kind": _specimen_kind(resource, ctx),
        "value": concept_json(value) if isinstance(value, dict) else resource.get("valueString"),
    }
    return values, [*genes, *([result_match] if result_match else [])]


# --- smoking, viable tumour, disease status ------------------------------------------------------


def _smoking_values(
    resource: dict[str, Any], status: str | None, ctx: MappingContext
) -> tuple[dict[str, Any], list[ConceptMatch]]:
    """never / ever / unknown (never tested first: 'never smoker' also says 'smoker')."""
    value = _value_concept(resource)
    label: str | None = None
    match: ConceptMatch | None = None
    for concept_id, answer in _SMOKING:
        match = ctx.terminology.match(concept_id, value)
        if match is not None:
            label = answer
            break
    values = {
        "status": label,
        "value": concept_json(resource.get("valueCodeableConcept")),
        # `status` is the smoking status here (its spec), so the record status gets its own key.
        "observation_status": status,
    }
    return values, [match] if match else []


def _viable_tumour_values(
    resource: dict[str, Any], ctx: MappingContext
) -> tuple[dict[str, Any], list[ConceptMatch]]:
    """The lexical percent (only a % quantity is read; anything else is flagged) and the site."""
    quantity = resource.get("valueQuantity")
    nodal = ctx.terminology.match("viable_tumour_nodal", resource.get("code"))
    percent, flag = None, None
    if not isinstance(quantity, dict) or quantity.get("value") is None:
        flag = "no valueQuantity: percent not read"
    elif "%" in (quantity.get("code"), quantity.get("unit")):
        percent = _lexical(quantity["value"])
    else:
        unit = quantity.get("code") or quantity.get("unit")
        flag = f"unit {unit!r} is not %: percent not read"
    values = {"percent": percent, "site": "nodal" if nodal else "primary", "flag": flag}
    return values, [nodal] if nodal else []


def _disease_status_values(
    resource: dict[str, Any], ctx: MappingContext
) -> tuple[dict[str, Any], list[ConceptMatch]]:
    """The finding, and whether it is an EFS event (progression, recurrence)."""
    value = _value_concept(resource)
    event = ctx.terminology.match("disease_event", value)
    values = {
        "finding": concept_json(resource.get("valueCodeableConcept")),
        "is_event": event is not None,
        "text": _readable(value),
    }
    return values, [event] if event else []


# --- choosing the kind --------------------------------------------------------------------------


def _trigger(resource: dict[str, Any], ctx: MappingContext) -> ConceptMatch | None:
    """The value set that decides the event kind: a code match first, else a name match by order."""
    code = resource.get("code")
    matches = {m.concept: m for m in ctx.terminology.matches(code, _KIND_ORDER)}
    egfr = matches.get("egfr_gene")
    if egfr and egfr.matched_by == "name" and _KIDNEY_EGFR.search(egfr.text or ""):
        del matches["egfr_gene"]
    for by in ("code", "name"):
        for concept_id in _KIND_ORDER:
            match = matches.get(concept_id)
            if match is not None and match.matched_by == by:
                return match
    return None


def _is_genomic(
    resource: dict[str, Any], trigger: ConceptMatch | None, ctx: MappingContext
) -> bool:
    """Genomic by code, or EGFR/ALK/ROS1 named anywhere (a gene name on a number is a lab, not a call)."""
    if any(_gene_matches(source, ctx) for source in _gene_sources(resource, ctx)):
        return True
    if trigger is None or trigger.concept not in _GENOMIC_TRIGGERS:
        return False
    if trigger.matched_by == "name" and trigger.concept in _GENES:
        return "valueQuantity" not in resource
    return True


def _patient_id(resource: dict[str, Any], ctx: MappingContext) -> str | None:
    """The subject's Patient id; a subject typed as a Group, Device, Location… has none."""
    subject = resource.get("subject")
    declared = as_dict(subject).get("type")
    if isinstance(declared, str) and declared != "Patient":
        return None
    return ctx.patient_id(subject, resource)


def _distinct(matches: list[ConceptMatch]) -> tuple[ConceptMatch, ...]:
    """One match per value set, the first kept (a gene that chose the kind is not listed twice)."""
    seen: dict[str, ConceptMatch] = {}
    for match in matches:
        seen.setdefault(match.concept, match)
    return tuple(seen.values())


def map_observation(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """At most one event, its kind chosen by the Observation code; other observations map to none."""
    status = status_of(resource)
    if is_void(resource) or status not in KEPT_STATUSES:
        return []
    trigger = _trigger(resource, ctx)
    kind: EventKind
    values: dict[str, Any]
    extra: list[ConceptMatch] = []
    if _is_genomic(resource, trigger, ctx):
        kind = EventKind.GENOMIC_FINDING
        values, extra = _genomic_values(resource, ctx)
        if trigger is not None and trigger.concept not in _GENOMIC_TRIGGERS:
            trigger = None
    elif trigger is None or trigger.concept in _GENOMIC_TRIGGERS:
        return []
    elif trigger.concept in _TNM_AXES:
        kind = EventKind.TNM_CATEGORY
        values, extra = _tnm_values(resource, _TNM_AXES[trigger.concept], ctx)
    elif trigger.concept == "smoking_status":
        kind = EventKind.SMOKING_STATUS
        values, extra = _smoking_values(resource, status, ctx)
    elif trigger.concept == "viable_tumour":
        kind = EventKind.VIABLE_TUMOUR
        values, extra = _viable_tumour_values(resource, ctx)
    else:  # disease_status
        kind = EventKind.DISEASE_STATUS
        values, extra = _disease_status_values(resource, ctx)
    if kind is not EventKind.SMOKING_STATUS:
        values["status"] = status
    date, end = effective_dates(resource)
    return [
        TrialEvent(
            kind=kind,
            patient_id=_patient_id(resource, ctx),
            source=source,
            date=date,
            end=end,
            values=values,
            concepts=_distinct([trigger, *extra] if trigger else extra),
        )
    ]
