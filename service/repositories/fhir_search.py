"""FHIR search over current resources: _id, identifier, reference params, _lastUpdated, paging."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlmodel import Session

from fhir_mapping.references import is_valid_id
from fhir_mapping.resource_types import PATIENT_ONLY_PARAMS, REFERENCE_PARAMS
from fhir_mapping.tokens import ascii_int
from service.errors import FhirError
from service.infra.clock import date_param_range, fhir_instant, utcnow
from service.infra.tables import ResourceHead, ResourceIdentifier, ResourceReference
from service.repositories import fhir_versions

_HEAD = ResourceHead.__table__  # type: ignore[attr-defined]
_IDENT = ResourceIdentifier.__table__  # type: ignore[attr-defined]
_REF = ResourceReference.__table__  # type: ignore[attr-defined]

COMMON_PARAMS = ("_id", "identifier", "_lastUpdated")
_CONTROL_PARAMS = {"_count", "_cursor", "_format", "_pretty", "_total"}
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
# Bounds on one search: each parameter is a condition of the query and each value a term of it;
# past SQLite's expression limits a query fails as "database unavailable" (503) instead of the
# client's 400, so a search is refused before it is built.
MAX_SEARCH_PARAMS = 50
MAX_SEARCH_VALUES = 100


def supported_params(resource_type: str) -> list[str]:
    """Search parameters this server honours for a type (advertised in the CapabilityStatement)."""
    return [*COMMON_PARAMS, *sorted(REFERENCE_PARAMS.get(resource_type, {}))]


@dataclass(slots=True)
class SearchQuery:
    """A parsed, validated search: SQL conditions plus paging."""

    resource_type: str
    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    count: int = 50
    cursor: str | None = None
    echo: list[tuple[str, str]] = field(default_factory=list)


def _bad(param: str, message: str) -> FhirError:
    return FhirError.of(400, "invalid", f"search parameter {param}: {message}", param)


def _owned_by_match(
    table: Any, resource_type: str, match: ColumnElement[bool]
) -> ColumnElement[bool]:
    """Heads whose index rows match: one uncorrelated `IN (SELECT ...)`, computed once.

    A correlated EXISTS lets SQLite probe the lookup index again for every head, scanning all of
    a patient's rows each time: a patient with 10 000 Observations took seconds to count.
    """
    owners = select(table.c.resource_id).where(table.c.resource_type == resource_type, match)
    condition: ColumnElement[bool] = _HEAD.c.resource_id.in_(owners)
    return condition


def _identifier_condition(resource_type: str, raw: str) -> ColumnElement[bool]:
    options = []
    for token in raw.split(","):
        if "|" in token:
            system, value = token.split("|", 1)
            if system and value:
                options.append(and_(_IDENT.c.system == system, _IDENT.c.value == value))
            elif system:
                options.append(_IDENT.c.system == system)
            elif value:
                options.append(and_(_IDENT.c.system.is_(None), _IDENT.c.value == value))
            else:
                raise _bad("identifier", "'|' alone names no identifier")
        elif token:
            options.append(_IDENT.c.value == token)
        else:
            raise _bad("identifier", "empty value")
    return _owned_by_match(_IDENT, resource_type, or_(*options))


def _reference_condition(
    resource_type: str, param: str, modifier: str | None, raw: str, base_url: str | None
) -> ColumnElement[bool]:
    options: list[ColumnElement[bool]] = []
    own = base_url.rstrip("/") + "/" if base_url else None
    for token in raw.split(","):
        if "://" in token:  # an absolute URL: ours names a local resource, another server's none
            if own is None or not token.startswith(own):
                options.append(false())
                continue
            token = token[len(own) :]
        ref = token.rsplit("/_history/", 1)[0]
        parts = ref.split("/")
        target_id = parts[-1]
        target_type = parts[-2] if len(parts) >= 2 else modifier
        if param in PATIENT_ONLY_PARAMS:
            if target_type not in (None, "Patient"):
                raise _bad(param, f"{token!r} is not a Patient reference")
            target_type = "Patient"
        if not is_valid_id(target_id):
            raise _bad(param, f"{token!r} is not a reference or id")
        cond = and_(_REF.c.param == param, _REF.c.target_id == target_id)
        if target_type:
            cond = and_(cond, _REF.c.target_type == target_type)
        options.append(cond)
    return _owned_by_match(_REF, resource_type, or_(*options))


def _last_updated_condition(raw: str) -> ColumnElement[bool]:
    prefix = raw[:2] if raw[:2] in _PREFIXES else "eq"
    value = raw[2:] if raw[:2] in _PREFIXES else raw
    bounds = date_param_range(value)
    if bounds is None:
        raise _bad("_lastUpdated", f"{raw!r} is not a FHIR date or dateTime (with optional prefix)")
    start, end = bounds
    col = _HEAD.c.last_updated
    conditions: dict[str, ColumnElement[bool]] = {
        "eq": and_(col >= start, col < end),
        "ne": or_(col < start, col >= end),
        "gt": col >= end,
        "sa": col >= end,
        "ge": col >= start,
        "lt": col < start,
        "eb": col < start,
        "le": col < end,
    }
    return conditions[prefix]


def parse_search(
    resource_type: str,
    params: list[tuple[str, str]],
    *,
    default_count: int,
    max_count: int,
    base_url: str | None = None,
) -> SearchQuery:
    """Turn query parameters into conditions; unknown parameters are refused, never ignored.

    `base_url` is this server's FHIR base: an absolute reference under it is a local one.
    """
    query = SearchQuery(resource_type, count=default_count)
    ref_params = REFERENCE_PARAMS.get(resource_type, {})
    for name, raw in params:
        base, _, modifier = name.partition(":")
        if "\x00" in raw:  # PostgreSQL text cannot hold NUL: refuse it alike on every backend
            raise _bad(base, "value contains the NUL character (U+0000)")
        if base == "_count":
            query.count = _parse_count(raw, max_count)
            continue
        if base == "_cursor":
            query.cursor = _decode_cursor(raw)
            continue
        if base in _CONTROL_PARAMS:
            continue
        if raw.count(",") >= MAX_SEARCH_VALUES:
            raise FhirError.of(
                400,
                "too-costly",
                f"search parameter {base}: more than {MAX_SEARCH_VALUES} values",
                base,
            )
        if len(query.echo) >= MAX_SEARCH_PARAMS:
            raise FhirError.of(
                400,
                "too-costly",
                f"more than {MAX_SEARCH_PARAMS} search parameters in one search",
                base,
            )
        query.echo.append((name, raw))
        if base == "_id" and not modifier:
            ids = [i for i in raw.split(",") if i]
            query.conditions.append(
                _HEAD.c.resource_id.in_(ids) if all(map(is_valid_id, ids)) and ids else false()
            )
        elif base == "identifier" and not modifier:
            query.conditions.append(_identifier_condition(resource_type, raw))
        elif base in ref_params and (not modifier or modifier[:1].isupper()):
            query.conditions.append(
                _reference_condition(resource_type, base, modifier or None, raw, base_url)
            )
        elif base == "_lastUpdated" and not modifier:
            query.conditions.append(_last_updated_condition(raw))
        else:
            allowed = ", ".join(supported_params(resource_type))
            raise FhirError.of(
                400,
                "not-supported",
                f"search parameter {name!r} is not supported for {resource_type} "
                f"(supported: {allowed}, _count)",
                name,
            )
    return query


def _parse_count(raw: str, max_count: int) -> int:
    """ASCII digits only (str.isdigit() also takes '²'), capped at max_count however long."""
    if not (raw.isascii() and raw.isdigit()):
        raise _bad("_count", f"{raw!r} is not a non-negative integer")
    count = ascii_int(raw)  # None: more digits than any page size
    return max_count if count is None else min(count, max_count)


def _decode_cursor(raw: str) -> str:
    try:
        value = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except ValueError as exc:
        raise _bad("_cursor", "not a cursor issued by this server") from exc
    if not is_valid_id(value):
        raise _bad("_cursor", "not a cursor issued by this server")
    return value


def encode_cursor(resource_id: str) -> str:
    """Opaque continuation token: the last id of a page."""
    return base64.urlsafe_b64encode(resource_id.encode()).decode().rstrip("=")


def _filtered(query: SearchQuery) -> Any:
    return [
        _HEAD.c.resource_type == query.resource_type,
        _HEAD.c.deleted.is_(False),
        *query.conditions,
    ]


def run_search(session: Session, query: SearchQuery) -> tuple[list[str], int, str | None]:
    """Ids on this page (by id order), the total match count, and the last id when more follow."""
    where = _filtered(query)
    total = int(session.execute(select(func.count()).select_from(_HEAD).where(*where)).scalar_one())
    if query.count == 0:
        return [], total, None
    page_where = [*where, _HEAD.c.resource_id > query.cursor] if query.cursor else where
    ids = list(
        session.execute(
            select(_HEAD.c.resource_id)
            .where(*page_where)
            .order_by(_HEAD.c.resource_id)
            .limit(query.count + 1)
        ).scalars()
    )
    more = len(ids) > query.count
    ids = ids[: query.count]
    return ids, total, ids[-1] if more else None


def match_ids(
    session: Session, resource_type: str, params: list[tuple[str, str]], limit: int = 2
) -> list[str]:
    """Ids matching a conditional-operation query (up to `limit`, enough to tell 0, 1 or many)."""
    if not params:
        raise FhirError.of(
            400, "invalid", f"conditional operation on {resource_type} has no criteria"
        )
    query = parse_search(resource_type, params, default_count=limit, max_count=limit)
    return list(
        session.execute(
            select(_HEAD.c.resource_id)
            .where(*_filtered(query))
            .order_by(_HEAD.c.resource_id)
            .limit(limit)
        ).scalars()
    )


def search_bundle(
    session: Session,
    resource_type: str,
    params: list[tuple[str, str]],
    *,
    base: str,
    default_count: int,
    max_count: int,
) -> bytes:
    """Run a search and answer a searchset Bundle of the stored bytes, with a cursor `next` link."""
    query = parse_search(
        resource_type, params, default_count=default_count, max_count=max_count, base_url=base
    )
    ids, total, cursor = run_search(session, query)
    found = fhir_versions.read_current_many(session, [(resource_type, i) for i in ids])
    echo = [*query.echo, ("_count", str(query.count))]
    links = [{"relation": "self", "url": _page_url(base, resource_type, echo, query.cursor)}]
    if cursor:
        links.append({"relation": "next", "url": _page_url(base, resource_type, echo, cursor)})
    entries = [(f"{base}/{v.resource_type}/{v.resource_id}", v.content or "") for v in found]
    return searchset(total, links, entries)


def searchset(total: int, links: list[dict[str, str]], entries: list[tuple[str, str]]) -> bytes:
    """A searchset Bundle of (fullUrl, stored resource text) entries, the text sent as stored."""
    doc = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": fhir_instant(utcnow())},
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": url,
                "resource": orjson.Fragment(content.encode()),
                "search": {"mode": "match"},
            }
            for url, content in entries
        ],
    }
    return orjson.dumps(doc)


def _page_url(
    base: str, resource_type: str, echo: list[tuple[str, str]], cursor: str | None
) -> str:
    params = echo + ([("_cursor", encode_cursor(cursor))] if cursor else [])
    return f"{base}/{resource_type}?{urlencode(params)}"
