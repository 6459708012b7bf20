"""Every request that can touch patient data leaves exactly one AuditEvent, before it is answered.

Writes record theirs in their own transaction (the route hands the note to the write path); for
everything else (reads, searches, refusals, failures) this middleware records it when the answer
starts, and holds the answer until the record is committed. If the record cannot be stored, the
client hears 503 instead of the data: nothing is answered that the audit trail does not know.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import TOKEN_PATH
from api.errors import is_fhir_path, render
from api.request_log import REQUEST_ID, route_of, route_path
from service.audit.events import ANONYMOUS, Action, AuditNote, Entity, audit_event
from service.audit.trail import AuditTrail
from service.errors import DatabaseUnavailableError
from service.infra.clock import utcnow

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"
# Open on purpose, and about nothing patient-related: not audited.
_OPEN = frozenset({"/fhir/metadata"})
_FHIR_INTERACTIONS: dict[tuple[str, str], tuple[Action, str]] = {
    ("GET", "/fhir/{resource_type}"): ("E", "search-type"),
    ("GET", "/fhir/{resource_type}/{resource_id}"): ("R", "read"),
    ("GET", "/fhir/{resource_type}/{resource_id}/_history/{version_id}"): ("R", "vread"),
    ("POST", "/fhir/{resource_type}"): ("C", "create"),
    ("PUT", "/fhir/{resource_type}"): ("U", "update"),
    ("PUT", "/fhir/{resource_type}/{resource_id}"): ("U", "update"),
    ("DELETE", "/fhir/{resource_type}"): ("D", "delete"),
    ("DELETE", "/fhir/{resource_type}/{resource_id}"): ("D", "delete"),
    ("POST", "/fhir"): ("E", "transaction"),
    ("POST", "/fhir/$import"): ("E", "operation"),
    ("GET", "/fhir/AuditEvent"): ("E", "search-type"),
    ("GET", "/fhir/AuditEvent/{record_id}"): ("R", "read"),
    ("GET", "/fhir/Provenance"): ("E", "search-type"),
    ("GET", "/fhir/Provenance/{record_id}"): ("R", "read"),
    ("POST", TOKEN_PATH): ("E", "login"),
}
_BY_METHOD: dict[str, Action] = {"GET": "R", "HEAD": "R", "POST": "C", "PUT": "U", "PATCH": "U"}
_SEARCHES = frozenset({"search-type"})


def audited(path: str) -> bool:
    """Requests about patient data, the trial API, the audit trail itself, and logins."""
    if path in _OPEN:
        return False
    if path == TOKEN_PATH:
        return True
    return path in ("/fhir", API_PREFIX) or path.startswith(("/fhir/", API_PREFIX + "/"))


def audit_note(request: Request) -> AuditNote | None:
    """This request's note, for a route that writes or knows what it touched."""
    note = request.scope.get("state", {}).get("audit")
    return note if isinstance(note, AuditNote) else None


def for_write(request: Request, client: str) -> AuditNote | None:
    """The note a write path records in its transaction: its client, action and subtype set."""
    note = audit_note(request)
    if note is not None:
        note.client = client
        note.action, note.subtype, named = describe(request.scope, note)
        if not request.url.path.startswith("/fhir"):  # a FHIR write names the versions it wrote
            note.entities = named
    return note


def _entities(params: dict[str, Any], route: str) -> list[Entity]:
    """What the path names: a FHIR resource (or version), a study, its subject or deviation."""
    rtype, rid, vid = (
        params.get("resource_type"),
        params.get("resource_id"),
        params.get("version_id"),
    )
    if isinstance(rtype, str) and isinstance(rid, str):
        return [Entity(f"{rtype}/{rid}" + (f"/_history/{vid}" if isinstance(vid, str) else ""))]
    record = params.get("record_id")
    if isinstance(record, str):  # /fhir/AuditEvent/{id} or /fhir/Provenance/{id}
        return [Entity(f"{route.split('/')[2]}/{record}")]
    study = params.get("study_id")
    if not isinstance(study, str):
        return []
    found = [Entity.study(study)]
    subject = params.get("subject_id")
    if isinstance(subject, str):
        found.append(Entity.subject(study, subject))
    deviation = params.get("deviation_id")
    if isinstance(deviation, str):
        found.append(Entity(system="urn:trialbridge:deviation", value=deviation))
    return found


def describe(scope: Scope, note: AuditNote) -> tuple[Action, str, list[Entity]]:
    """The action, subtype and entities of a request, from its route (and what it noted)."""
    method = scope.get("method", "GET")
    route = route_of(scope)
    action, subtype = _FHIR_INTERACTIONS.get(
        (method, route), (_BY_METHOD.get(method, "D" if method == "DELETE" else "E"), "")
    )
    if not subtype:
        subtype = f"{method} {route}"
    if subtype in _SEARCHES and note.query is None:
        note.query = scope.get("query_string", b"").decode("latin-1")
    params = scope.get("path_params", {})
    return (
        note.action or action,
        note.subtype or subtype,
        [*_entities(params, route), *note.entities],
    )


class AuditRequests:
    """ASGI middleware: one AuditEvent per audited request, committed before the answer starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not audited(route_path(scope)):
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        note = AuditNote(
            address=peer[0] if peer else "", request_id=REQUEST_ID.get() or uuid.uuid4().hex
        )
        scope.setdefault("state", {})["audit"] = note
        trail: AuditTrail = scope["app"].state.audit
        refused = False

        async def record(status: int) -> None:
            note.client = scope["state"].get("client") or ANONYMOUS
            action, subtype, entities = describe(scope, note)
            await trail.record(
                audit_event(
                    note,
                    action=action,
                    subtype=subtype,
                    status=status,
                    recorded=utcnow(),
                    entities=entities,
                )
            )
            note.recorded = True

        async def send_audited(message: Message) -> None:
            nonlocal refused
            if refused:  # the answer was replaced: the app's body goes nowhere
                return
            if message["type"] == "http.response.start" and not note.recorded:
                try:
                    await record(message["status"])
                except DatabaseUnavailableError as exc:
                    refused = True
                    fhir = is_fhir_path(route_path(scope))
                    await render(exc, fhir=fhir)(scope, receive, send)
                    return
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:
            if not note.recorded:  # the app failed before answering: a 500 follows
                try:
                    await record(500)
                except DatabaseUnavailableError:
                    log.error("the audit record of a failed request could not be stored")
            raise
