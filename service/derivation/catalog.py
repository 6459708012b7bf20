"""The studies this deployment serves: protocols and value sets, loaded and checked at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_mapping.terminology import Terminology
from service.derivation.refresh import Derivation
from service.infra.settings import Settings
from service.protocol.schema import StudyProtocol
from service.protocol.terminology import build_terminology
from service.studies.registry import load_protocols


@dataclass(frozen=True)
class Catalog:
    """Protocols by study id, the file-based terminology, and the derivation they drive."""

    protocols: dict[str, StudyProtocol]
    terminology: Terminology
    derivation: Derivation


def load_catalog(settings: Settings) -> Catalog:
    """Read and validate every protocol and value-set file; raises naming the file and key."""
    terminology = build_terminology(settings.terminology_dir)
    protocols = load_protocols(terminology, settings.protocol_dir)
    key = settings.pseudonym_key.get_secret_value() if settings.pseudonym_key else None
    derivation = Derivation(
        protocols,
        terminology_dir=settings.terminology_dir,
        base_url=settings.base_url,
        pseudonym_key=key,
        site_zone=settings.site_zone(),
    )
    return Catalog(protocols, terminology, derivation)
