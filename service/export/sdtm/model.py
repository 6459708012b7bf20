"""A tabulation dataset: its metadata and its rows (typed values by variable name)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.export.sdtm.metadata import DomainSpec, StudyDesign

Value = str | int | float | None
Row = dict[str, Value]


@dataclass(frozen=True)
class Dataset:
    """One SDTM dataset: every variable of its spec, in order, for every row."""

    spec: DomainSpec
    rows: Sequence[Row]

    @property
    def name(self) -> str:
        """The dataset name (DM, SUPPAE)."""
        return self.spec.name

    def table(self) -> list[list[Value]]:
        """The rows as lists in variable order."""
        names = self.spec.names
        return [[row.get(n) for n in names] for row in self.rows]


@dataclass(frozen=True)
class Package:
    """Every dataset of one study's export, made at one instant."""

    study_id: str
    created: str  # ISO 8601 instant (UTC), the same in every file of the package
    datasets: Mapping[str, Dataset]
    design: StudyDesign  # what the study's FHIR did not say (define.xml reads it)
