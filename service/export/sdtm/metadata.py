"""SDTMIG 3.4 variable metadata, the CDISC CT subset and the FHIR-to-CDISC maps, loaded from data.

The files live in `files/` (TOML): the standard's variables per domain (names, order, types, core,
codelists), the controlled terms, the FHIR code maps, and one file per study saying what FHIR
does not (site, arms, treatment names and forms). Code owns none of these values.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

VarType = Literal["Char", "Num"]
Core = Literal["Req", "Exp", "Perm"]
CHAR_MAX = 200  # the longest character value SAS XPORT v5 holds


@dataclass(frozen=True, slots=True)
class Variable:
    """One SDTM variable of a domain as the implementation guide defines it."""

    name: str
    label: str
    type: VarType
    core: Core
    role: str
    origin: str
    codelist: str | None = None
    length: int | None = None

    @property
    def max_length(self) -> int:
        """The longest value allowed (characters; Char only)."""
        return self.length or CHAR_MAX

    @property
    def is_date(self) -> bool:
        """An ISO 8601 date/time variable (--DTC, --STDTC, --ENDTC, RF…DTC)."""
        return self.type == "Char" and self.name.endswith("DTC")

    @property
    def is_study_day(self) -> bool:
        """A study-day variable (--DY, --STDY, --ENDY), computed from its --DTC partner."""
        return self.type == "Num" and self.name.endswith("DY") and self.name != "VISITDY"

    @property
    def dtc_partner(self) -> str:
        """The date variable a study day is computed from (AESTDY → AESTDTC, TRDY → TRDTC)."""
        return self.name[:-2] + "DTC"


@dataclass(frozen=True, slots=True)
class DomainSpec:
    """A dataset's metadata: label, class, structure, keys and variables in SDTMIG order."""

    name: str
    label: str
    klass: str
    structure: str
    keys: tuple[str, ...]
    variables: tuple[Variable, ...]
    parent: str | None = None  # the parent domain of a SUPP-- dataset
    qualifiers: tuple[tuple[str, str], ...] = ()  # (QNAM, QLABEL) of a SUPP-- dataset

    @property
    def names(self) -> tuple[str, ...]:
        """The variable names in order."""
        return tuple(v.name for v in self.variables)

    def variable(self, name: str) -> Variable | None:
        """A variable by name."""
        return next((v for v in self.variables if v.name == name), None)

    @property
    def seq(self) -> str | None:
        """The --SEQ variable, when the dataset has one."""
        name = self.name + "SEQ"
        return name if name in self.names else None


@dataclass(frozen=True, slots=True)
class Term:
    """One controlled term (submission value), its NCI code when checked, and if it is ours."""

    value: str
    nci: str | None = None
    extended: bool = False


@dataclass(frozen=True, slots=True)
class Codelist:
    """A CDISC codelist (a subset of it), a sponsor list, or an external dictionary."""

    id: str
    name: str
    nci: str | None
    extensible: bool
    terms: tuple[Term, ...]
    external: tuple[str, str] | None = None  # (dictionary, version)
    sponsor: bool = False

    @property
    def values(self) -> frozenset[str]:
        """The submission values listed."""
        return frozenset(t.value for t in self.terms)


@dataclass(frozen=True)
class Metadata:
    """Everything the export, its conformance check and define.xml read from data."""

    standard: str
    version: str
    ct_version: str
    domains: Mapping[str, DomainSpec]
    codelists: Mapping[str, Codelist]
    fhir: Mapping[str, Any]


@dataclass(frozen=True)
class StudyDesign:
    """What a study's FHIR record does not say but its tabulation needs (files/studies/*.toml)."""

    study: str
    site_id: str
    country: str
    ctcae_version: str
    arms: tuple[tuple[str, str], ...]  # (ARMCD, ARM)
    treatments: Mapping[str, tuple[str, str]]  # protocol drug id → (EXTRT, EXDOSFRM)
    assigned: frozenset[str]
    screen_failure: frozenset[str]
    disposition: Mapping[str, tuple[str, str]]  # ResearchSubject.status → (DSTERM, DSDECOD)
    tumour_sites: Mapping[str, tuple[str, str]]  # site → (TULNKID, TULOC)


def _toml(name: str) -> dict[str, Any]:
    return tomllib.loads(resources.files("service.export.sdtm.files").joinpath(name).read_text())


def _variables(items: list[dict[str, Any]]) -> tuple[Variable, ...]:
    return tuple(
        Variable(
            name=v["name"],
            label=v["label"],
            type=v["type"],
            core=v["core"],
            role=v["role"],
            origin=v["origin"],
            codelist=v.get("codelist"),
            length=v.get("length"),
        )
        for v in items
    )


def _codelist(key: str, data: dict[str, Any]) -> Codelist:
    external = data.get("external")
    return Codelist(
        id=key,
        name=data["name"],
        nci=data.get("nci"),
        extensible=bool(data.get("extensible", True)),
        terms=tuple(
            Term(t["value"], t.get("nci"), bool(t.get("extended"))) for t in data.get("terms", ())
        ),
        external=(external["dictionary"], external["version"]) if external else None,
        sponsor=bool(data.get("sponsor")),
    )


@functools.cache
def metadata() -> Metadata:
    """The packaged SDTMIG 3.4 metadata, CT subset and FHIR maps (read once)."""
    ig = _toml("sdtmig_3_4.toml")
    ct = _toml("ct.toml")
    domains: dict[str, DomainSpec] = {
        name: DomainSpec(
            name=name,
            label=d["label"],
            klass=d["class"],
            structure=d["structure"],
            keys=tuple(d["keys"]),
            variables=_variables(d["variables"]),
        )
        for name, d in ig["domains"].items()
    }
    supp = ig["supplemental"]
    for name, d in supp["datasets"].items():
        domains[name] = DomainSpec(
            name=name,
            label=d["label"],
            klass="RELATIONSHIP",
            structure=supp["structure"],
            keys=tuple(supp["keys"]),
            variables=_variables(supp["variables"]),
            parent=d["parent"],
            qualifiers=tuple((q["qnam"], q["qlabel"]) for q in d["qualifiers"]),
        )
    return Metadata(
        standard=ig["standard"]["name"],
        version=ig["standard"]["version"],
        ct_version=ct["package"]["version"],
        domains=domains,
        codelists={k: _codelist(k, v) for k, v in ct["codelists"].items()},
        fhir=_toml("fhir_to_cdisc.toml"),
    )


def study_design(study_id: str) -> StudyDesign | None:
    """The packaged tabulation design of a study, or None when it has none."""
    path = resources.files("service.export.sdtm.files").joinpath("studies", f"{study_id}.toml")
    if not path.is_file():
        return None
    d = tomllib.loads(path.read_text())
    return StudyDesign(
        study=d["study"],
        site_id=d["site_id"],
        country=d["country"],
        ctcae_version=d["ctcae_version"],
        arms=tuple((a["code"], a["name"]) for a in d["arms"]),
        treatments={k: (v["name"], v["form"]) for k, v in d["treatments"].items()},
        assigned=frozenset(d["assignment"]["assigned"]),
        screen_failure=frozenset(d["assignment"]["screen_failure"]),
        disposition={k: (v["term"], v["decod"]) for k, v in d["disposition"].items()},
        tumour_sites={k: (v["link_id"], v["location"]) for k, v in d["tumour_sites"].items()},
    )


# The datasets in the order they are written and listed (define.xml, the CLI).
DATASETS = ("DM", "EX", "CM", "PR", "AE", "DS", "MH", "TU", "TR", "SUPPDM", "SUPPAE")
