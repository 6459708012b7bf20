"""Running the real FHIR mappers in memory, the way the service derives trial events."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fhir_mapping.events.context import MappingContext, MemoryLookup
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.events.registry import map_resource
from fhir_mapping.terminology import Terminology


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
