"""Opaque evidence ids: a cited FHIR version, sealed with a key only this service holds.

The trial API cites its evidence (the Observation behind a verdict, the Procedure behind a
deviation) without naming FHIR logical ids, which link straight back to the patient's record.
An evidence id is the version's reference encrypted with AES-SIV (deterministic: the same version
always gets the same id, so clients can compare them) and bound to the study as associated data
(an id issued under one study opens under no other). Nothing is stored: any replica that holds
the key opens any id, and only ids this service issued open at all (SIV authenticates).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from sqlalchemy import Engine
from sqlmodel import Session

from fhir_mapping.resource_types import SUPPORTED_TYPES
from service.infra.db import writing
from service.repositories.service_secrets import get_or_create_secret

PREFIX = "EV-"
SECRET_NAME = "evidence_key"
_KEY_BYTES = 64  # AES-256-SIV
_SOURCE_KEYS = frozenset({"resource_type", "id", "version", "reference"})
# A reference inside an event's values (a specimen's parent, the ResearchStudy of an enrollment):
# relative or absolute, versioned or not; or a urn:uuid that names a resource of the feed.
_REFERENCE = re.compile(
    r"(?:(?i:[a-z][a-z0-9+.-]*://)\S*/)?([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/([0-9]{1,9}))?"
)
_REFERABLE = SUPPORTED_TYPES | {
    "BodyStructure",
    "CarePlan",
    "Composition",
    "Consent",
    "Device",
    "DocumentReference",
    "EpisodeOfCare",
    "Group",
    "ImagingStudy",
    "Media",
    "RelatedPerson",
    "Substance",
    "Task",
}
_URN = re.compile(r"urn:(?:uuid|oid):\S+", re.IGNORECASE)
# Anything else naming a resource (`Specimen?identifier=…|ACC-1`, `Patient/p1#x`, `…/_history/x`)
_LOOSE = re.compile(r"(?<![A-Za-z])(" + "|".join(sorted(_REFERABLE)) + r")[/?]")


@dataclass(frozen=True, slots=True)
class Cited:
    """The FHIR version an evidence id stands for."""

    resource_type: str
    resource_id: str
    version: int

    @property
    def reference(self) -> str:
        """The relative reference, e.g. Observation/1/_history/2 (version 0: Observation/1)."""
        bare = f"{self.resource_type}/{self.resource_id}"
        return f"{bare}/_history/{self.version}" if self.version else bare


def _new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(_KEY_BYTES)).decode()


def session_sealer(session: Session, study_id: str) -> Callable[[Cited], str]:
    """`seal` for one study inside a transaction (the key read, or made, in that transaction)."""
    raw = get_or_create_secret(session, SECRET_NAME, _new_key)
    codec = EvidenceCodec(None, base64.urlsafe_b64decode(raw))
    return lambda cited: codec.seal(study_id, cited)


class EvidenceCodec:
    """Seals and opens evidence ids; the key is generated once and kept in the database."""

    def __init__(self, engine: Engine | None, key: bytes | None = None) -> None:
        self.engine = engine
        self._siv = AESSIV(key) if key is not None else None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Read (or make) the key now, not in the first request that needs it."""
        self._cipher()

    def _cipher(self) -> AESSIV:
        with self._lock:
            if self._siv is None:
                assert self.engine is not None, "a codec without a key reads it from its database"
                with writing(self.engine) as session:
                    raw = get_or_create_secret(session, SECRET_NAME, _new_key)
                self._siv = AESSIV(base64.urlsafe_b64decode(raw))
            return self._siv

    def seal(self, study_id: str, cited: Cited) -> str:
        """The evidence id of `cited` in this study."""
        plain = f"{cited.resource_type}/{cited.resource_id}/{cited.version}".encode()
        sealed = self._cipher().encrypt(plain, [study_id.encode()])
        return PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, study_id: str, evidence_id: str) -> Cited | None:
        """What an id of this study stands for; None for anything this service did not issue."""
        if not evidence_id.startswith(PREFIX) or len(evidence_id) > 600:
            return None
        text = evidence_id.removeprefix(PREFIX)
        try:
            sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            plain = self._cipher().decrypt(sealed, [study_id.encode()]).decode()
        except (binascii.Error, ValueError, InvalidTag, UnicodeDecodeError):
            return None
        rtype, _, rest = plain.partition("/")
        rid, _, version = rest.rpartition("/")
        if not (rtype and rid and version.isdigit()):
            return None
        return Cited(rtype, rid, int(version))


def minimised(body: Any, seal: Callable[[Cited], str]) -> Any:
    """`body` with every cited source ({resource_type, id, version, reference}) made opaque.

    A source becomes {"evidence_id", "resource_type"} (and its "value", when it has one: what the
    rule read, e.g. "cT2a"); everything else is copied as it is.
    """
    if isinstance(body, list):
        return [minimised(item, seal) for item in body]
    if isinstance(body, str):
        return _opaque_reference(body, seal)
    if not isinstance(body, dict):
        return body
    if body.keys() >= _SOURCE_KEYS:
        cited = Cited(str(body["resource_type"]), str(body["id"]), int(body["version"]))
        out: dict[str, Any] = {"evidence_id": seal(cited), "resource_type": cited.resource_type}
        out.update((k, v) for k, v in body.items() if k not in _SOURCE_KEYS)
        return out
    return {key: minimised(value, seal) for key, value in body.items()}


def _opaque_reference(text: str, seal: Callable[[Cited], str]) -> str | None:
    """A string that is a FHIR reference becomes an evidence id; one that names a resource in a
    way no id can stand for (urn:uuid, a conditional reference, a fragment) becomes None; any
    other text is kept as it is."""
    if "/" not in text and text[:4].lower() != "urn:":
        return text
    if _URN.fullmatch(text):
        return None
    found = _REFERENCE.fullmatch(text)
    if found is not None and found.group(1) in _REFERABLE:
        rtype, rid, version = found.groups()
        return seal(Cited(rtype, rid, int(version) if version else 0))
    if _LOOSE.search(text):  # a reference we cannot seal (a conditional one): it goes, whole
        return None
    return text  # "IV/SC", "EGFR/ALK": clinical text, not a reference
