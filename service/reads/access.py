"""What every study read shares: find the study (404), check its kind offers the feature, read (503)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

from service.errors import ApiError
from service.infra.db import reading
from service.protocol.schema import StudyProtocol
from service.studies.registry import kind_of

T = TypeVar("T")
# the optional parts of a StudyKind (see service.studies.kind)
Feature = Literal["screening", "subject_outcomes", "deviation_rules", "tabulation"]


def find_protocol(protocols: dict[str, StudyProtocol], study_id: str) -> StudyProtocol:
    """The protocol of a study this deployment serves, else 404 naming the known ones."""
    found = protocols.get(study_id)
    if found is None:
        raise ApiError(
            404,
            "study_not_found",
            f"no study {study_id!r}; known: {', '.join(sorted(protocols))}",
        )
    return found


def capability(
    protocols: dict[str, StudyProtocol], study_id: str, feature: Feature, lacks: str
) -> tuple[StudyProtocol, Any]:
    """The study and its kind's `feature`; a kind without it has no `lacks` (404)."""
    protocol = find_protocol(protocols, study_id)
    kind = kind_of(protocol)
    found = getattr(kind, feature)
    if found is None:
        raise ApiError(
            404,
            "not_applicable",
            f"study {study_id} is a {kind.title}: it has no {lacks}",
        )
    return protocol, found


def read(engine: Engine, work: Callable[[Session], T]) -> T:
    """Run a read; an unreachable database is a 503 in the JSON error shape."""
    with reading(engine) as session:
        return work(session)
