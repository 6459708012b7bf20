"""Value sets as data: codes, code prefixes and name patterns, and how a concept matched."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

MatchedBy = Literal["code", "name"]
_MEMO_MAX = 50_000

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ATC = "http://www.whocc.no/atc"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"

# Systems whose codes are written with or without the dot (C34.90 = C3490).
_DOTLESS_SYSTEMS = frozenset({ICD10CM, ICD10, "http://www.cms.gov/Medicare/Coding/ICD10"})
# WHO ICD-10 and ICD-10-CM share their categories (C34, C77–C79, M05 …): a value set written in
# one matches codes sent in the other.
_SYSTEM_ALIASES = {ICD10: ICD10CM, "http://www.cms.gov/Medicare/Coding/ICD10": ICD10CM}


def normal_system(system: str) -> str:
    """The system a code is compared under (ICD-10 variants are compared as ICD-10-CM)."""
    return _SYSTEM_ALIASES.get(system, system)


def normal_code(system: str | None, code: str) -> str:
    """Compare codes the way their code system does (ICD-10 ignores the dot and case)."""
    code = code.strip()
    if system in _DOTLESS_SYSTEMS:
        return code.replace(".", "").upper()
    return code


class CodeEntry(BaseModel):
    """One code of a value set, with how sure we are of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system: str = Field(min_length=1)
    code: str | None = Field(default=None, min_length=1)
    prefix: str | None = Field(default=None, min_length=1)
    display: str | None = None
    status: Literal["verified", "secondary", "site"] = "site"

    @model_validator(mode="after")
    def _one_of(self) -> CodeEntry:
        if (self.code is None) == (self.prefix is None):
            raise ValueError("give exactly one of `code` or `prefix`")
        return self


class ValueSetDefinition(BaseModel):
    """A named concept: codes and name patterns (matched on coding display and text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field(min_length=1)
    codes: tuple[CodeEntry, ...] = ()
    names: tuple[str, ...] = ()
    abbreviations: tuple[str, ...] = ()
    exclude_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConceptMatch:
    """A concept found in a CodeableConcept, and the coding or text that matched it."""

    concept: str
    matched_by: MatchedBy
    system: str | None
    code: str | None
    text: str | None

    def to_json(self) -> dict[str, Any]:
        """The wire shape used in events and evidence."""
        return {
            "concept": self.concept,
            "matched_by": self.matched_by,
            "system": self.system,
            "code": self.code,
            "text": self.text,
        }


def _phrase_regex(
    phrases: Iterable[str], *, case_sensitive: bool = False
) -> re.Pattern[str] | None:
    parts = sorted({p.strip() for p in phrases if p.strip()}, key=len, reverse=True)
    if not parts:
        return None
    body = "|".join(re.escape(p).replace(r"\ ", r"[\s\-_]+") for p in parts)
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.compile(rf"(?<![A-Za-z0-9])(?:{body})(?![A-Za-z0-9])", flags)


@dataclass(frozen=True)
class _Compiled:
    codes: frozenset[tuple[str, str]]
    prefixes: tuple[tuple[str, str], ...]
    names: re.Pattern[str] | None
    abbreviations: re.Pattern[str] | None
    excludes: re.Pattern[str] | None


def codings(concept: Any) -> Iterator[dict[str, Any]]:
    """The codings of a CodeableConcept (or of a bare Coding), skipping anything malformed."""
    if not isinstance(concept, dict):
        return
    if "coding" not in concept and ("code" in concept or "display" in concept):
        yield concept  # a bare Coding
        return
    found = concept.get("coding")
    for coding in found if isinstance(found, list) else ():
        if isinstance(coding, dict):
            yield coding


def concept_texts(concept: Any) -> Iterator[str]:
    """Every human-readable text of a CodeableConcept: its text, then each coding display."""
    if not isinstance(concept, dict):
        return
    if isinstance(concept.get("text"), str):
        yield concept["text"]
    for coding in codings(concept):
        if isinstance(coding.get("display"), str):
            yield coding["display"]


@dataclass(frozen=True)
class Terminology:
    """All value sets in force, compiled for matching; built once per (re)load."""

    definitions: Mapping[str, ValueSetDefinition]
    _compiled: dict[str, _Compiled] = field(default_factory=dict, init=False, repr=False)
    _memo: dict[tuple[bytes, tuple[str, ...]], tuple[ConceptMatch, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for concept_id, vs in self.definitions.items():
            self._compiled[concept_id] = _Compiled(
                codes=frozenset(
                    (normal_system(e.system), normal_code(e.system, e.code))
                    for e in vs.codes
                    if e.code
                ),
                prefixes=tuple(
                    (normal_system(e.system), normal_code(e.system, e.prefix))
                    for e in vs.codes
                    if e.prefix
                ),
                names=_phrase_regex(vs.names),
                abbreviations=_phrase_regex(vs.abbreviations, case_sensitive=True),
                excludes=_phrase_regex(vs.exclude_names),
            )

    def __contains__(self, concept_id: object) -> bool:
        return concept_id in self.definitions

    def match(self, concept_id: str, concept: Any) -> ConceptMatch | None:
        """How `concept` belongs to value set `concept_id`: by code first, else by name, else None."""
        found = self.matches(concept, (concept_id,))
        return found[0] if found else None

    def _match(self, concept_id: str, concept: Any) -> ConceptMatch | None:
        """The uncached match."""
        compiled = self._compiled.get(concept_id)
        if compiled is None:
            raise KeyError(f"unknown value set {concept_id!r}")
        for coding in codings(concept):
            system, code = coding.get("system"), coding.get("code")
            if not isinstance(system, str) or not isinstance(code, str):
                continue
            norm, nsys = normal_code(system, code), normal_system(system)
            if (nsys, norm) in compiled.codes or any(
                nsys == s and norm.startswith(p) for s, p in compiled.prefixes
            ):
                display = coding.get("display")
                return ConceptMatch(
                    concept_id, "code", system, code, display if isinstance(display, str) else None
                )
        if compiled.names is None and compiled.abbreviations is None:
            return None
        for text in concept_texts(concept):
            named = (compiled.names and compiled.names.search(text)) or (
                compiled.abbreviations and compiled.abbreviations.search(text)
            )
            if named and not (compiled.excludes and compiled.excludes.search(text)):
                return ConceptMatch(concept_id, "name", None, None, text)
        return None

    def forget(self) -> None:
        """Empty the memo (after a large request, so the memory it took can be returned)."""
        self._memo.clear()

    def matches(self, concept: Any, concept_ids: Iterable[str]) -> list[ConceptMatch]:
        """Every listed value set that `concept` belongs to, in the order asked.

        Feeds repeat the same codings thousands of times, so answers are memoised per
        (concept, value sets); the cache is bounded and belongs to this (immutable) terminology.
        """
        ids = tuple(concept_ids)
        try:
            key = (orjson.dumps(concept, option=orjson.OPT_SORT_KEYS), ids)
        except TypeError:  # not plain JSON (never for a CodeableConcept): no caching
            key = None
        if key is not None and (hit := self._memo.get(key)) is not None:
            return list(hit)
        found = [m for m in (self._match(c, concept) for c in ids) if m is not None]
        if key is not None:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[key] = tuple(found)
        return found

    def first(self, concept: Any, concept_ids: Iterable[str]) -> ConceptMatch | None:
        """The first listed value set that `concept` belongs to."""
        for concept_id in concept_ids:
            found = self.match(concept_id, concept)
            if found is not None:
                return found
        return None


def merge_definitions(
    base: Mapping[str, ValueSetDefinition], extra: Mapping[str, ValueSetDefinition]
) -> dict[str, ValueSetDefinition]:
    """A site's additions extend a value set of the same id (codes and names are added)."""
    merged = dict(base)
    for concept_id, vs in extra.items():
        old = merged.get(concept_id)
        if old is None:
            merged[concept_id] = vs
            continue
        merged[concept_id] = old.model_copy(
            update={
                "codes": old.codes + tuple(c for c in vs.codes if c not in old.codes),
                "names": old.names + tuple(n for n in vs.names if n not in old.names),
                "abbreviations": old.abbreviations
                + tuple(n for n in vs.abbreviations if n not in old.abbreviations),
                "exclude_names": old.exclude_names
                + tuple(n for n in vs.exclude_names if n not in old.exclude_names),
            }
        )
    return merged
