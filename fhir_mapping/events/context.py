"""What a mapper may consult: the terminology, and a lookup for the resources it references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fhir_mapping.references import parse_reference
from fhir_mapping.terminology import Terminology


class Lookup(Protocol):
    """Read access to current resources; the service implements it over the store."""

    def by_id(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current content of a resource, or None."""
        ...

    def by_identifier(
        self, resource_types: tuple[str, ...], system: str | None, value: str
    ) -> tuple[str, str, dict[str, Any]] | None:
        """The single current resource of those types carrying this identifier, or None."""
        ...


class NoLookup:
    """A lookup that knows nothing: mapping a resource on its own."""

    def by_id(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """Nothing is known."""
        return None

    def by_identifier(
        self, resource_types: tuple[str, ...], system: str | None, value: str
    ) -> tuple[str, str, dict[str, Any]] | None:
        """Nothing is known."""
        return None


@dataclass(frozen=True, slots=True)
class Resolved:
    """A reference followed: the target's type and id (None when contained) and its content."""

    resource_type: str
    resource_id: str | None
    resource: dict[str, Any] | None


@dataclass(frozen=True)
class MappingContext:
    """Terminology plus reference resolution; the only inputs of a mapper besides the resource."""

    terminology: Terminology
    lookup: Lookup
    base_url: str | None = None

    def resolve(
        self,
        reference: Any,
        container: dict[str, Any],
        expected: tuple[str, ...],
        *,
        fetch: bool = True,
    ) -> Resolved | None:
        """Follow a Reference: contained `#id`, literal or own-base URL, or identifier only."""
        if not isinstance(reference, dict):
            return None
        ref = reference.get("reference")
        if isinstance(ref, str):
            parsed = parse_reference(ref)
            if parsed.kind == "contained":
                for item in container.get("contained") or ():
                    if isinstance(item, dict) and item.get("id") == parsed.resource_id:
                        rtype = item.get("resourceType")
                        if isinstance(rtype, str) and rtype in expected:
                            return Resolved(rtype, None, item)
                return None
            local = parsed.kind == "literal" or (
                parsed.kind == "absolute"
                and self.base_url is not None
                and ref.startswith(self.base_url.rstrip("/") + "/")
            )
            if local and parsed.resource_type in expected and parsed.resource_id:
                content = (
                    self.lookup.by_id(parsed.resource_type, parsed.resource_id) if fetch else None
                )
                return Resolved(parsed.resource_type, parsed.resource_id, content)
            if local or parsed.kind != "absolute":
                return None
            # an address on another server (never fetched): fall back to its identifier, if any
        identifier = reference.get("identifier")
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            rtype = reference.get("type")
            if isinstance(rtype, str) and rtype not in expected:
                return None  # a declared type we were not asked for (e.g. a Group)
            types = (rtype,) if isinstance(rtype, str) else expected
            system = identifier.get("system")
            found = self.lookup.by_identifier(
                types, system if isinstance(system, str) else None, identifier["value"]
            )
            if found is not None:
                return Resolved(found[0], found[1], found[2])
        return None

    def patient_id(self, reference: Any, container: dict[str, Any]) -> str | None:
        """The id of the Patient a subject/patient reference points at (it need not be stored yet)."""
        found = self.resolve(reference, container, ("Patient",), fetch=False)
        return found.resource_id if found else None


class MemoryLookup:
    """A lookup over resources held in memory: tests, and mapping a Bundle before it is stored."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self._by_key = {
            (r["resourceType"], r["id"]): r
            for r in resources
            if isinstance(r.get("resourceType"), str) and isinstance(r.get("id"), str)
        }

    def by_id(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The resource with that type and id, if held."""
        return self._by_key.get((resource_type, resource_id))

    def by_identifier(
        self, resource_types: tuple[str, ...], system: str | None, value: str
    ) -> tuple[str, str, dict[str, Any]] | None:
        """The single held resource carrying the identifier (None when 0 or several do)."""
        hits = [
            (rtype, rid, r)
            for (rtype, rid), r in self._by_key.items()
            if rtype in resource_types
            and any(
                isinstance(i, dict)
                and i.get("value") == value
                and (system is None or i.get("system") == system)
                for i in r.get("identifier") or ()
            )
        ]
        return hits[0] if len(hits) == 1 else None
