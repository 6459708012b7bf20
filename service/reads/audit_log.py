"""Reading the audit trail: FHIR search and read of AuditEvent and Provenance, and the SIEM export."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterator
from typing import Literal
from urllib.parse import urlencode

from sqlalchemy import Engine

from service.errors import FhirError
from service.infra.clock import date_param_range
from service.infra.db import reading
from service.repositories import audit_records
from service.repositories.audit_records import AuditQuery
from service.repositories.fhir_search import searchset

Kind = Literal["AuditEvent", "Provenance"]
# search parameter -> what it filters, per kind (R4 names: AuditEvent.date, Provenance.recorded)
PARAMS: dict[str, dict[str, str]] = {
    "AuditEvent": {"agent": "agent", "entity": "entity", "date": "recorded"},
    "Provenance": {"agent": "agent", "target": "entity", "recorded": "recorded"},
}
_CONTROL = {"_format", "_pretty", "_total"}
_IDENTIFIER_SYSTEMS = ("urn:trialbridge:client",)


def _bad(param: str, message: str) -> FhirError:
    return FhirError.of(400, "invalid", f"search parameter {param!r}: {message}", param)


def _recorded_bounds(param: str, raw: str) -> list[tuple[Literal[">=", "<"], dt.datetime]]:
    prefix = raw[:2] if raw[:2].isalpha() else "eq"
    value = raw[2:] if raw[:2].isalpha() else raw
    bounds = date_param_range(value)
    if bounds is None:
        raise _bad(param, f"{raw!r} is not a FHIR date or dateTime (with optional prefix)")
    start, end = bounds
    chosen: dict[str, list[tuple[Literal[">=", "<"], dt.datetime]]] = {
        "eq": [(">=", start), ("<", end)],
        "ge": [(">=", start)],
        "gt": [(">=", end)],
        "sa": [(">=", end)],
        "le": [("<", end)],
        "lt": [("<", start)],
        "eb": [("<", start)],
    }
    if prefix not in chosen:
        raise _bad(param, f"prefix {prefix!r} is not supported (eq, ge, gt, sa, le, lt, eb)")
    return chosen[prefix]


def _agent(raw: str) -> str:
    """A client id, bare or as `urn:trialbridge:client|id`."""
    system, bar, value = raw.rpartition("|")
    return value if bar and system in _IDENTIFIER_SYSTEMS else raw


def parse_audit_search(
    kind: Kind, params: list[tuple[str, str]], *, default_count: int, max_count: int
) -> tuple[AuditQuery, list[tuple[str, str]]]:
    """The query, and the parameters to echo in page links; unknown parameters are refused."""
    agents: list[str] = []
    entities: list[str] = []
    recorded: list[tuple[Literal[">=", "<"], dt.datetime]] = []
    count, after = default_count, None
    echo: list[tuple[str, str]] = []
    for name, raw in params:
        base, _, modifier = name.partition(":")
        if "\x00" in raw:
            raise _bad(base, "value contains the NUL character (U+0000)")
        if base == "_count":
            if not (raw.isascii() and raw.isdigit()):
                raise _bad("_count", f"{raw!r} is not a non-negative integer")
            count = max_count if len(raw) > 9 else min(int(raw), max_count)
            continue
        if base == "_cursor":
            after = _decode_cursor(raw)
            continue
        if base in _CONTROL:
            continue
        what = PARAMS[kind].get(base)
        if what is None or (modifier and not (what == "entity" and modifier == "identifier")):
            allowed = ", ".join([*PARAMS[kind], "_count"])
            raise FhirError.of(
                400,
                "not-supported",
                f"search parameter {name!r} is not supported for {kind} (supported: {allowed})",
                name,
            )
        echo.append((name, raw))
        values = [v for v in raw.split(",") if v]
        if what == "agent":
            agents.extend(_agent(v) for v in values)
        elif what == "entity":
            entities.extend(values)
        else:
            recorded.extend(_recorded_bounds(base, raw))
    query = AuditQuery(
        kind,
        agents=tuple(agents),
        entities=tuple(entities),
        recorded=tuple(recorded),
        count=count,
        after_seq=after,
    )
    return query, echo


def _decode_cursor(raw: str) -> int:
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise _bad("_cursor", "not a cursor issued by this server") from exc
    if not (text.isascii() and text.isdigit() and len(text) < 19):
        raise _bad("_cursor", "not a cursor issued by this server")
    return int(text)


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(str(seq).encode()).decode().rstrip("=")


class AuditLog:
    """The audit trail as FHIR resources, for holders of the `audit` scope."""

    def __init__(self, engine: Engine, *, default_count: int, max_count: int) -> None:
        self.engine = engine
        self.default_count = default_count
        self.max_count = max_count

    def search(self, kind: Kind, params: list[tuple[str, str]], *, base: str) -> bytes:
        """A searchset Bundle, newest first, with a cursor `next` link."""
        query, echo = parse_audit_search(
            kind, params, default_count=self.default_count, max_count=self.max_count
        )
        with reading(self.engine) as session:
            found, total, cursor = audit_records.search(session, query)
        echo.append(("_count", str(query.count)))
        links = [{"relation": "self", "url": _page(base, kind, echo, query.after_seq)}]
        if cursor is not None:
            links.append({"relation": "next", "url": _page(base, kind, echo, cursor)})
        return searchset(total, links, [(f"{base}/{kind}/{i}", text) for i, text in found])

    def read(self, kind: Kind, record_id: str) -> bytes:
        """One record; 404 when there is none of this kind with this id."""
        with reading(self.engine) as session:
            found = audit_records.read_record(session, kind, record_id[:64])
        if found is None:
            raise FhirError.of(404, "not-found", f"{kind}/{record_id[:64]} is not known")
        return found.encode()

    def export(
        self, since: dt.datetime | None, after_seq: int | None = None
    ) -> Iterator[tuple[int, str]]:
        """(seq, JSON) of every record since `since` / after `after_seq`, in the order stored.

        A SIEM that exports on a schedule passes the last seq it got: a record journaled before
        the last export but stored after it (or recovered after a crash) has a recorded time
        before the last one exported, yet a later seq.
        """
        with reading(self.engine) as session:
            yield from audit_records.export(session, since, after_seq)


def _page(base: str, kind: str, echo: list[tuple[str, str]], cursor: int | None) -> str:
    params = echo + ([("_cursor", _encode_cursor(cursor))] if cursor is not None else [])
    return f"{base}/{kind}?{urlencode(params)}"
