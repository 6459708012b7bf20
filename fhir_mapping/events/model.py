"""The trial event: what happened to whom, when (with its precision), and from which resource."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from fhir_mapping.partial_dates import PartialDate, in_zone, parse_partial_date
from fhir_mapping.terminology import ConceptMatch


class EventKind(StrEnum):
    """The closed set of event kinds the trial logic reads."""

    DEMOGRAPHICS = "demographics"
    DEATH = "death"
    ENROLLMENT = "enrollment"
    DRUG_ADMINISTRATION = "drug_administration"
    DRUG_EXPOSURE = "drug_exposure"
    BIOPSY = "biopsy"
    LUNG_RESECTION = "lung_resection"
    PROCEDURE = "procedure"
    SPECIMEN_COLLECTION = "specimen_collection"
    CONDITION = "condition"
    TNM_CATEGORY = "tnm_category"
    GENOMIC_FINDING = "genomic_finding"
    SMOKING_STATUS = "smoking_status"
    VIABLE_TUMOUR = "viable_tumour"
    DISEASE_STATUS = "disease_status"
    ADVERSE_EVENT = "adverse_event"
    ENCOUNTER = "encounter"
    DATA_POINT = "data_point"  # a dated result with no other trial meaning: seen on that day


@dataclass(frozen=True, slots=True)
class SourceRef:
    """The exact resource version an event came from."""

    resource_type: str
    resource_id: str
    version_id: int

    def to_json(self) -> dict[str, Any]:
        """The wire shape used as evidence."""
        return {
            "resource_type": self.resource_type,
            "id": self.resource_id,
            "version": str(self.version_id),
            "reference": f"{self.resource_type}/{self.resource_id}/_history/{self.version_id}",
        }


@dataclass(frozen=True, slots=True)
class TrialEvent:
    """One derived fact; `values` hold only JSON-safe scalars, lists and dicts."""

    kind: EventKind
    patient_id: str | None
    source: SourceRef
    date: PartialDate | None = None
    end: PartialDate | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    concepts: tuple[ConceptMatch, ...] = ()

    @property
    def concept_ids(self) -> frozenset[str]:
        """The value sets this event's coded content belongs to."""
        return frozenset(c.concept for c in self.concepts)

    def in_zone(self, zone: dt.tzinfo) -> TrialEvent:
        """The event with its dates as the site's calendar days (see `partial_dates.in_zone`)."""
        date = in_zone(self.date, zone) if self.date is not None else None
        end = in_zone(self.end, zone) if self.end is not None else None
        if date is self.date and end is self.end:
            return self
        return replace(self, date=date, end=end)

    def to_json(self) -> dict[str, Any]:
        """The wire shape (study day is added by whoever knows Day 1)."""
        return {
            "kind": self.kind.value,
            "date": self.date.to_json() if self.date else None,
            "end": self.end.to_json() if self.end else None,
            "values": dict(self.values),
            "concepts": [c.to_json() for c in self.concepts],
            "source": self.source.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], patient_id: str | None) -> TrialEvent:
        """Rebuild an event from its stored wire shape."""
        src = data["source"]
        return cls(
            kind=EventKind(data["kind"]),
            patient_id=patient_id,
            source=SourceRef(src["resource_type"], src["id"], int(src["version"])),
            date=_date(data.get("date")),
            end=_date(data.get("end")),
            values=data.get("values") or {},
            concepts=tuple(
                ConceptMatch(c["concept"], c["matched_by"], c["system"], c["code"], c["text"])
                for c in data.get("concepts") or ()
            ),
        )


def _date(data: Any) -> PartialDate | None:
    return parse_partial_date(data["value"]) if isinstance(data, Mapping) else None
