"""Observation / DiagnosticReport → data_point: the patient was seen (tested, imaged) that day.

EFS and OS are censored at the subject's last data point, the latest dated fact of any kind
(CLINICAL.md, Outcomes): labs, vital signs, imaging and reports count although no criterion or rule
reads them. A result that maps to a typed event (TNM, smoking, viable tumour …) is already one; the
others map to a bare `data_point`. A registered (not yet resulted), cancelled or void one is none.
"""

from __future__ import annotations

from typing import Any

from fhir_mapping.events.common import as_dict, concept_json, is_void, status_of
from fhir_mapping.events.context import MappingContext
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.events.observation import effective_dates, map_observation

# Statuses of a result that was obtained (preliminary on); not registered, cancelled or void.
OBSERVATION_DONE = frozenset({"preliminary", "final", "amended", "corrected"})
REPORT_DONE = frozenset({"partial", "preliminary", "final", "amended", "corrected", "appended"})


def _patient_id(resource: dict[str, Any], ctx: MappingContext) -> str | None:
    """The subject's Patient id; a subject typed as a Group, Device, Location… has none."""
    subject = resource.get("subject")
    declared = as_dict(subject).get("type")
    if isinstance(declared, str) and declared != "Patient":
        return None
    return ctx.patient_id(subject, resource)


def _data_point(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext, done: frozenset[str]
) -> list[TrialEvent]:
    """One data_point event for a dated result that was obtained."""
    status = status_of(resource)
    if is_void(resource) or status not in done:
        return []
    date, end = effective_dates(resource)
    if date is None:
        return []
    values: dict[str, Any] = {
        "resource_type": source.resource_type,
        "status": status,
        "code": concept_json(resource.get("code")),
    }
    return [
        TrialEvent(
            kind=EventKind.DATA_POINT,
            patient_id=_patient_id(resource, ctx),
            source=source,
            date=date,
            end=end,
            values=values,
        )
    ]


def map_observation_or_data_point(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """The Observation's typed event when it has one, else a data point."""
    return map_observation(resource, source, ctx) or _data_point(
        resource, source, ctx, OBSERVATION_DONE
    )


def map_diagnostic_report(
    resource: dict[str, Any], source: SourceRef, ctx: MappingContext
) -> list[TrialEvent]:
    """A report (imaging, pathology, a lab panel) that was issued is a data point."""
    return _data_point(resource, source, ctx, REPORT_DONE)
