"""Running the real FHIR mappers in memory, the way the service derives trial events."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fhir_mapping.events.context import MappingContext, MemoryLookup
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.events.registry import map_resource
from fhir_mapping.json_codec import loads
from fhir_mapping.terminology import Terminology
from tests.conftest import TEST_DATA

NSCLC_PATIENT = "129c6ac7-8d06-89de-ad63-0204a93e76c3"  # Synthea's patient with NSCLC


def context(terminology: Terminology, *stored: dict[str, Any]) -> MappingContext:
    """A mapping context whose lookup holds these resources (references resolve in memory)."""
    return MappingContext(terminology, MemoryLookup(list(stored)))


def version_of(resource: dict[str, Any]) -> SourceRef:
    """The version a stored resource would be: meta.versionId, else 1 (every fixture's first)."""
    version = int(resource.get("meta", {}).get("versionId", 1))
    return SourceRef(resource["resourceType"], resource["id"], version)


def events_of(terminology: Terminology, resources: Iterable[dict[str, Any]]) -> list[TrialEvent]:
    """Every event the registered mappers derive from the resources, all resolvable in memory."""
    stored = list(resources)
    ctx = context(terminology, *stored)
    return [e for r in stored for e in map_resource(r["resourceType"], r, version_of(r), ctx)]


def concept_matches(event: TrialEvent, *fields: str) -> list[tuple[Any, ...]]:
    """The event's concept matches as tuples of these fields (default: concept and matched_by)."""
    names = fields or ("concept", "matched_by")
    return [tuple(getattr(c, name) for name in names) for c in event.concepts]


def single(events: list[TrialEvent], kind: EventKind | None = None) -> TrialEvent:
    """The one event a resource must yield (of `kind` when given): no more, no fewer."""
    assert len(events) == 1, events
    if kind is not None:
        assert events[0].kind is kind, events[0].kind
    return events[0]


def synthea_events(
    terminology: Terminology,
    resource_type: str,
    mapper: Callable[[dict[str, Any], SourceRef, MappingContext], list[TrialEvent]],
    patient_id: str = NSCLC_PATIENT,
) -> list[TrialEvent]:
    """Every event one mapper derives from a Synthea patient's lines of one resource type."""
    ctx = context(terminology)
    events: list[TrialEvent] = []
    with (TEST_DATA / "synthea-10" / f"{resource_type}.000.ndjson").open("rb") as lines:
        for line in lines:
            if patient_id.encode() in line:
                resource = loads(line.strip())
                events += mapper(resource, SourceRef(resource_type, resource["id"], 1), ctx)
    return events
