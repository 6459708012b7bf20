"""The study kinds this service knows: a new kind is one package under studies/ and one line here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fhir_mapping.events.model import EventKind, TrialEvent
from fhir_mapping.terminology import Terminology
from service.protocol import schema
from service.protocol.schema import StudyProtocol
from service.studies.cirae.kind import CIRAE_COHORT
from service.studies.interventional.kind import INTERVENTIONAL
from service.studies.kind import StudyKind, SubjectFacts

KINDS: Mapping[str, StudyKind[Any]] = {
    kind.name: kind
    for kind in (
        INTERVENTIONAL,
        CIRAE_COHORT,
    )
}


def protocol_models() -> dict[str, type[StudyProtocol]]:
    """The protocol model of each kind, by the `kind` a protocol file names."""
    return {name: kind.protocol_model for name, kind in KINDS.items()}


def membership_events() -> tuple[EventKind, ...]:
    """Every event kind some study's membership reads (loaded for each touched patient)."""
    return tuple(sorted({e for kind in KINDS.values() for e in kind.membership_events}))


def reevaluate_events() -> tuple[EventKind, ...]:
    """Event kinds whose patients some study re-evaluates as days pass."""
    return tuple(sorted({e for kind in KINDS.values() for e in kind.reevaluate_events}))


def kind_of(protocol: StudyProtocol) -> StudyKind[Any]:
    """The kind a loaded protocol belongs to (the loader only accepts registered kinds)."""
    return KINDS[protocol.kind]


def membership(protocol: StudyProtocol, events: Sequence[TrialEvent]) -> SubjectFacts | None:
    """Whether these events make the patient a subject of the study, by the study's kind."""
    return kind_of(protocol).membership(protocol, events)


def load_protocols(
    terminology: Terminology, directory: Path | None = None
) -> dict[str, StudyProtocol]:
    """The packaged protocols, then a site's, each validated by its registered kind's model."""
    return schema.load_protocols(terminology, protocol_models(), directory)


def parse_protocol(text: str, where: str, terminology: Terminology) -> StudyProtocol:
    """One protocol file, validated by its registered kind's model."""
    return schema.parse_protocol(text, where, terminology, protocol_models())
