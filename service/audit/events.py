"""AuditEvent and Provenance resources, built from what a request did (pure functions).

Codes follow FHIR R4 and IHE Basic Audit Log Patterns (BALP): the event type is `rest`, the
subtype the FHIR interaction, the client is the requesting agent (DICOM 110153, with its network
address), the server the destination (110152), and the request id an `XrequestId` entity, so a
SIEM can join an audit record to the access log line of the same request.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from service.infra.clock import fhir_instant
from service.repositories.audit_records import WROTE, Recorded

Action = Literal["C", "R", "U", "D", "E"]
ANONYMOUS = "anonymous"  # the agent of a request that presented no valid token
CLI_CLIENT = "trialbridge-cli"  # the agent of writes from the command line (`trialbridge load`)
CLIENT_SYSTEM = "urn:trialbridge:client"
STUDY_SYSTEM = "urn:trialbridge:study"
SUBJECT_SYSTEM = "urn:trialbridge:study-subject"  # value: "{study}/{subject}"
REQUEST_ID_SYSTEM = "urn:trialbridge:request-id"

_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
_REST_INTERACTIONS = frozenset(
    {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history",
        "history-instance",
        "history-type",
        "history-system",
        "create",
        "search",
        "search-type",
        "search-system",
        "capabilities",
        "transaction",
        "batch",
        "operation",
    }
)


@dataclass(frozen=True, slots=True)
class Entity:
    """Something a request touched: a FHIR reference (`Patient/1`) or an identifier."""

    reference: str | None = None
    system: str | None = None
    value: str | None = None
    wrote: bool = False  # the Provenance of what this request wrote (`written_under`)

    @classmethod
    def written_under(cls, provenance_id: str) -> Entity:
        """The Provenance recording what this request wrote (also keyed `WROTE` + its key)."""
        return cls(f"Provenance/{provenance_id}", wrote=True)

    @property
    def key(self) -> str:
        """How the entity is searched for: `Type/id`, or `system|value`."""
        return self.reference if self.reference is not None else f"{self.system}|{self.value}"

    @classmethod
    def study(cls, study_id: str) -> Entity:
        """A study of the trial API."""
        return cls(system=STUDY_SYSTEM, value=study_id)

    @classmethod
    def subject(cls, study_id: str, subject_id: str) -> Entity:
        """A study subject, by its pseudonymous subject id."""
        return cls(system=SUBJECT_SYSTEM, value=f"{study_id}/{subject_id}")


@dataclass(eq=False)
class AuditNote:
    """One request as the audit trail sees it; what handles it adds what it learns.

    The write path records the AuditEvent in its own transaction and marks the note `recorded`;
    any other request is recorded when its answer starts, from this note and the route.
    """

    address: str
    request_id: str
    client: str = ANONYMOUS
    action: Action | None = None  # set by a route that knows better than its method
    subtype: str | None = None
    entities: list[Entity] = field(default_factory=list)
    query: str | None = None  # a search's query string, as sent
    recorded: bool = False

    def mark_recorded(self) -> None:
        """The AuditEvent is committed: nothing is left to record when the answer starts."""
        self.recorded = True


def new_id() -> str:
    """A record id: random, so it says nothing about volume or order."""
    return uuid.uuid4().hex


def outcome_of(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (refused, not found), 8 serious failure."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def clean(text: str, limit: int = 2000) -> str:
    """Request text as a record may hold it: no U+0000 (PostgreSQL text cannot), bounded length."""
    return text[:limit].replace("\x00", "\ufffd")


def _what(entity: Entity) -> dict[str, Any]:
    if entity.reference is not None:
        return {"reference": clean(entity.reference)}
    return {"identifier": {"system": entity.system, "value": clean(entity.value or "")}}


_PERSON = _coding(_ENTITY_TYPE, "1", "Person")
_SYSTEM_OBJECT = _coding(_ENTITY_TYPE, "2", "System Object")
_PATIENT_ROLE = _coding(_OBJECT_ROLE, "1", "Patient")
_RESOURCE_ROLE = _coding(_OBJECT_ROLE, "4", "Domain Resource")


def _entity(entity: Entity) -> dict[str, Any]:
    """One entity element (the codings are shared: a write can name thousands of versions)."""
    person = entity.system == SUBJECT_SYSTEM or (
        entity.reference is not None and entity.reference.startswith("Patient/")
    )
    return {
        "what": _what(entity),
        "type": _PERSON if person else _SYSTEM_OBJECT,
        "role": _PATIENT_ROLE if person else _RESOURCE_ROLE,
    }


def _subtype(subtype: str) -> dict[str, str]:
    if subtype == "login":  # a token request
        return _coding(_DCM, "110122", "Login")
    if subtype in _REST_INTERACTIONS:
        return _coding("http://hl7.org/fhir/restful-interaction", subtype, subtype)
    return _coding("urn:trialbridge:api-operation", subtype)  # e.g. "GET /api/v1/studies/{…}"


def audit_event(
    note: AuditNote,
    *,
    action: Action,
    subtype: str,
    status: int | None,
    recorded: dt.datetime,
    entities: Sequence[Entity],
) -> Recorded:
    """The AuditEvent of one answered (or refused) request; `status` None: committed in the write."""
    outcome = "0" if status is None else outcome_of(status)
    rid = new_id()
    what: list[dict[str, Any]] = [_entity(e) for e in entities]
    if note.query is not None:
        what.append(
            {
                "type": _coding(_ENTITY_TYPE, "2", "System Object"),
                "role": _coding(_OBJECT_ROLE, "24", "Query"),
                "query": base64.b64encode(note.query.encode()[:8192]).decode(),
            }
        )
    what.append(
        {
            "what": {"identifier": {"system": REQUEST_ID_SYSTEM, "value": note.request_id}},
            "type": _coding(_BALP_ENTITY, "XrequestId", "X-Request-Id"),
        }
    )
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": rid,
        "type": _coding(_DCM, "110114", "User Authentication")
        if subtype == "login"
        else _coding(
            "http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "RESTful Operation"
        ),
        "subtype": [_subtype(subtype)],
        "action": action,
        "recorded": fhir_instant(recorded),
        "outcome": outcome,
        **({"outcomeDesc": f"HTTP {status}"} if status is not None else {}),
        "agent": [
            {
                "type": {"coding": [_coding(_DCM, "110153", "Source Role ID")]},
                "who": {
                    "identifier": {"system": CLIENT_SYSTEM, "value": note.client},
                    "display": note.client,
                },
                "requestor": True,
                "network": {"address": clean(note.address, 64), "type": "2"},
            },
            {
                "type": {"coding": [_coding(_DCM, "110152", "Destination Role ID")]},
                "who": {"display": "trialbridge"},
                "requestor": False,
            },
        ],
        "source": {
            "observer": {"display": "trialbridge"},
            "type": [
                _coding(
                    "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "4",
                    "Application Server",
                )
            ],
        },
        "entity": what,
    }
    content = orjson.dumps(resource).decode()
    return Recorded(
        rid, "AuditEvent", recorded, note.client, note.request_id, content, _keys(entities)
    )


def _keys(entities: Sequence[Entity]) -> tuple[str, ...]:
    """Search keys: each entity once, a versioned reference as its resource (`Type/id`), and a
    written-under Provenance also as `WROTE` + its key."""
    keys = [clean(e.key.split("/_history/")[0], 300) for e in entities]
    keys += [WROTE + e.key for e in entities if e.wrote]
    return tuple(dict.fromkeys(keys))


def provenance(
    rid: str,
    *,
    client: str,
    request_id: str,
    recorded: dt.datetime,
    targets: Sequence[tuple[str, str, int, bool]],
) -> Recorded:
    """The Provenance `rid` of one write transaction: who wrote which versions (type, id, version,
    deleted). It is searched by target through the versions, which name it (no entity rows)."""
    if all(deleted for *_, deleted in targets):
        activity: str | None = "DELETE"
    elif all(vid == 1 for _, _, vid, _ in targets):
        activity = "CREATE"
    elif all(vid > 1 and not deleted for _, _, vid, deleted in targets):
        activity = "UPDATE"
    else:
        activity = None  # a mixed transaction: each target's own history says which
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": rid,
        "target": _TARGETS,
        "recorded": fhir_instant(recorded),
        **(
            {
                "activity": {
                    "coding": [
                        _coding("http://terminology.hl7.org/CodeSystem/v3-DataOperation", activity)
                    ]
                }
            }
            if activity
            else {}
        ),
        "agent": [
            {
                "type": {
                    "coding": [
                        _coding(
                            "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "enterer",
                            "Enterer",
                        )
                    ]
                },
                "who": {
                    "identifier": {"system": CLIENT_SYSTEM, "value": client},
                    "display": client,
                },
            }
        ],
        "entity": [
            {
                "role": "source",
                "what": {"identifier": {"system": REQUEST_ID_SYSTEM, "value": request_id}},
            }
        ],
    }
    # The targets' JSON is written straight into the text: a Bundle's Provenance names tens of
    # thousands of versions, and a dict per target would be built only to be serialised.
    head, tail = orjson.dumps(resource).split(_TARGETS_JSON, 1)  # the first: before any text sent
    content = b"".join((head, _targets_json(targets), tail)).decode()
    return Recorded(rid, "Provenance", recorded, client, request_id, content, ())


_TARGETS = "\x00targets"  # where the targets go in the serialised Provenance
_TARGETS_JSON = orjson.dumps(_TARGETS)


def _targets_json(targets: Sequence[tuple[str, str, int, bool]]) -> bytes:
    """`[{"reference": "Type/id/_history/n"}, …]` as JSON, without a dict per target."""
    return b"[%b]" % b",".join(
        b'{"reference":%b}' % orjson.dumps(f"{t}/{i}/_history/{v}") for t, i, v, _ in targets
    )
