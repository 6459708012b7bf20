"""Write use cases: apply validated entries to the store in one unit of work.

Order-independent by construction (FHIR transaction rules): identities are resolved first
(DELETE, conditional POST/PUT), then every fullUrl is mapped to its final id, references are
rewritten, and only then are versions written, in bulk. Reads (GET entries) see the result.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

from sqlmodel import Session

from fhir_mapping.bundles import Entry
from fhir_mapping.issues import InvalidContentError, Issue
from fhir_mapping.json_codec import content_hash, dumps
from fhir_mapping.references import identifier_index, parse_reference, reference_index
from fhir_mapping.tokens import ascii_int
from service.audit.events import CLI_CLIENT, AuditNote, Entity, audit_event, provenance
from service.errors import FhirError
from service.infra.clock import fhir_instant
from service.repositories import create_locks, fhir_versions
from service.repositories.audit_records import insert_records
from service.repositories.fhir_search import match_ids, search_bundle
from service.repositories.fhir_versions import Key
from service.repositories.unit_of_work import UnitOfWork


@dataclass(frozen=True, slots=True)
class WriteContext:
    """Who is writing, when, and how references to this server look."""

    now: dt.datetime
    source: str
    request_id: str
    base_url: str | None = None
    resolve_conditional_references: bool = True
    require_urn_targets: bool = True
    search_default_count: int = 50
    search_max_count: int = 1000
    # May the requester do this interaction ("c", "r", "u", "d", "s") on this resource type?
    # None: everything (the command line, or a server without authentication).
    permits: Callable[[str, str], bool] | None = None
    # who writes (a client id; the command line has its own) and, for an HTTP request, its audit
    # note: the request's AuditEvent is then recorded in the write's own transaction
    client: str = CLI_CLIENT
    audit: AuditNote | None = None
    # whether results carry the stored content of what was written (a response shows it); off,
    # a large write frees each version's text once it is stored instead of holding it to the end
    keep_content: bool = True
    # given, each committed write appends the id of its Provenance here (an `$import`'s AuditEvent
    # names its chunks' Provenances, each naming the versions its chunk wrote)
    provenance_ids: list[str] | None = None


def record_write(uow: UnitOfWork, ctx: WriteContext) -> None:
    """The transaction's Provenance (what it wrote) and the request's AuditEvent, in the transaction.

    The AuditEvent names the Provenance, which names every version written: one entity instead of
    one per version (a 50 MB Bundle writes ~45 000), and the trail still resolves to exactly the
    versions this request wrote (`AuditEvent?entity=` searches through it, see `audit_records`).
    """
    records = []
    written: list[Entity] = []
    if uow.versions:
        record = provenance(
            uow.provenance_id,
            client=ctx.client,
            request_id=ctx.request_id,
            recorded=ctx.now,
            targets=uow.versions,
        )
        records.append(record)
        written.append(Entity.written_under(record.id))
        if ctx.provenance_ids is not None:
            uow.after_commit(partial(ctx.provenance_ids.append, record.id))
    note = ctx.audit
    if note is not None:
        records.append(
            audit_event(
                note,
                action=note.action or "E",
                subtype=note.subtype or "operation",
                status=None,
                recorded=ctx.now,
                entities=[*note.entities, *written],
            )
        )
        uow.after_commit(note.mark_recorded)
    insert_records(uow.session, records)


def interactions_of(entry: Entry) -> str:
    """The interactions an entry performs, as SMART scope letters.

    A conditional operation searches (`s`); a conditional create answers with the resource it
    matched, so it reads (`r`) too. An update that creates needs `c` as well: that is checked
    when the write finds no current version (see `_version_of`).
    """
    if entry.method == "GET":
        return "r" if entry.resource_id else "s"
    letters = {"POST": "c", "PUT": "u", "DELETE": "d", "UPSERT": "cu"}.get(entry.method, "cruds")
    if entry.if_none_exist:
        letters += "rs"
    elif entry.query:
        letters += "s"
    return letters


def forbidden(entry: Entry, rtype: str, letters: str) -> FhirError:
    """403 `forbidden`, located at the Bundle entry or $import line when there is one."""
    where = (
        f"Bundle.entry[{entry.index}]"
        if entry.path
        else (f"line {entry.index}" if entry.method == "UPSERT" else "")
    )
    text = f"the token's scopes do not allow {letters!r} on {rtype}"
    if not where:
        return FhirError.of(403, "forbidden", text)
    return FhirError.of(403, "forbidden", f"{where}: {text}", where)


def out_of_scope(entry: Entry, ctx: WriteContext) -> FhirError | None:
    """A 403 `forbidden` naming the entry when the requester's scopes do not cover it."""
    if ctx.permits is None:
        return None
    rtype = entry.resource_type or ""
    missing = "".join(i for i in interactions_of(entry) if not ctx.permits(rtype, i))
    return forbidden(entry, rtype, missing) if missing else None


Change = Literal["created", "updated", "unchanged", "deleted", "none", "read", "failed"]


@dataclass(slots=True)
class EntryResult:
    """The outcome of one entry: HTTP status, what changed, where it lives, optional body."""

    status: int
    change: Change = "none"
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: int | None = None
    last_updated: dt.datetime | None = None
    content: str | None = None
    issues: list[Issue] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        """Relative versioned location, e.g. Patient/1/_history/2."""
        if self.resource_type and self.resource_id and self.version_id:
            return f"{self.resource_type}/{self.resource_id}/_history/{self.version_id}"
        return None


@dataclass(slots=True)
class _Plan:
    entry: Entry
    target_id: str | None = None
    found_existing: bool = False  # ifNoneExist matched: nothing to write
    noop_delete: bool = False


def _matches(
    session: Session, resource_type: str, query: list[tuple[str, str]], where: str
) -> list[str]:
    """`match_ids`, with a refused criterion located at the element that carries it."""
    try:
        return match_ids(session, resource_type, query)
    except FhirError as exc:
        if not where:  # a header of a single-resource request: the parameter names it
            raise
        issues = [
            replace(i, diagnostics=f"{where}: {i.diagnostics}", expression=(where,))
            for i in exc.issues
        ]
        raise FhirError(exc.status, issues) from exc


def _criteria_path(e: Entry, what: str) -> str:
    """Where a Bundle entry's conditional criteria are written ("" outside a Bundle)."""
    if not e.path.startswith("Bundle.entry["):
        return ""
    field = "ifNoneExist" if what == "ifNoneExist" else "url"
    return f"Bundle.entry[{e.index}].request.{field}"


def _at_most_one(session: Session, e: Entry, query: list[tuple[str, str]], what: str) -> str | None:
    """The single resource a conditional query matches, None for none, 412 for several."""
    ids = _matches(session, e.resource_type or "", query, _criteria_path(e, what))
    if len(ids) > 1:
        raise _multiple(e, what, len(ids))
    return ids[0] if ids else None


def _at_entry(status: int, code: str, entry: Entry, text: str) -> FhirError:
    """An error of one entry, located at its path (a single-resource request has none)."""
    if not entry.path:
        return FhirError.of(status, code, text)
    return FhirError.of(status, code, f"{entry.path}: {text}", entry.path)


def _multiple(entry: Entry, what: str, n: int) -> FhirError:
    return _at_entry(
        412, "multiple-matches", entry, f"{what} matched {n} resources; it must match one"
    )


def _criteria(e: Entry) -> list[tuple[str, str]] | None:
    """The criteria of an entry that may create what it did not find (ifNoneExist, or a
    conditional update)."""
    if e.method == "POST":
        return e.if_none_exist or None
    if e.method == "PUT":
        return e.query or None
    return None


def _criteria_key(resource_type: str, criteria: list[tuple[str, str]]) -> str:
    """The criteria as one text, whatever the order their parameters were given in."""
    return resource_type + "?" + "&".join(f"{k}={v}" for k, v in sorted(criteria))


def _claim_criteria(session: Session, entries: list[Entry]) -> None:
    """Serialise the writers that may create on the same criteria, so a search-then-create
    cannot run twice at once and create two (`create_locks`: waiting writers search again after
    the holder commits, and find what it created). Criteria written differently
    (`identifier=X`, `identifier=sys|X`) are not recognised as the same: the lock is on the text.
    """
    create_locks.lock_criteria(
        session,
        (
            _criteria_key(e.resource_type or "", c)
            for e in entries
            if (c := _criteria(e)) is not None
        ),
    )


def _refuse_repeated_criteria(entries: list[Entry]) -> None:
    """Two conditional creates with the same criteria in one transaction would create twice."""
    seen: dict[str, Entry] = {}
    for e in entries:
        if e.method != "POST" or not e.if_none_exist:
            continue
        key = _criteria_key(e.resource_type or "", e.if_none_exist)
        first = seen.setdefault(key, e)
        if first is not e:
            where = _criteria_path(e, "ifNoneExist")
            raise FhirError.of(
                400,
                "duplicate",
                f"{where}: ifNoneExist {key!r} repeats {_criteria_path(first, 'ifNoneExist')}: a "
                "transaction creates a resource once (use one entry and reference its fullUrl)",
                where,
            )


def _resolve_identities(session: Session, entries: list[Entry]) -> list[_Plan]:
    _refuse_repeated_criteria(entries)
    _claim_criteria(session, entries)
    plans = []
    for e in entries:
        plan = _Plan(e)
        assert e.resource_type is not None
        if e.method == "DELETE":
            if e.query:
                plan.target_id = _at_most_one(session, e, e.query, "conditional delete")
                plan.noop_delete = plan.target_id is None
            else:
                plan.target_id = e.resource_id
        elif e.method == "POST":
            match = (
                _at_most_one(session, e, e.if_none_exist, "ifNoneExist")
                if e.if_none_exist
                else None
            )
            plan.found_existing = match is not None
            plan.target_id = match or e.urn_uuid or e.derived_id
        elif e.method == "PUT":
            if e.query:
                match = _at_most_one(session, e, e.query, "conditional update")
                body_id = e.resource.get("id") if e.resource else None
                if match and body_id is not None and body_id != match:
                    raise FhirError.of(
                        400,
                        "invalid",
                        f"{e.path}: resource.id {body_id!r} differs from the matched {match!r}",
                        e.path,
                    )
                plan.target_id = match or body_id or e.urn_uuid or str(uuid.uuid4())
            else:
                plan.target_id = e.resource_id
        elif e.method == "UPSERT":
            plan.target_id = e.resource_id or e.urn_uuid or e.derived_id
        plans.append(plan)
    return plans


def _writes(plans: list[_Plan]) -> list[_Plan]:
    return [
        p
        for p in plans
        if p.entry.method in ("POST", "PUT", "UPSERT", "DELETE")
        and not p.found_existing
        and not p.noop_delete
    ]


def _check_overlaps(plans: list[_Plan]) -> None:
    urls = Counter(p.entry.full_url for p in plans if p.entry.full_url)
    dup_urls = sorted(u for u, n in urls.items() if n > 1)
    if dup_urls:
        raise FhirError.of(
            400,
            "duplicate",
            f"fullUrl {dup_urls[0]!r} appears on more than one entry",
            "Bundle.entry",
        )
    seen: dict[tuple[str, str], _Plan] = {}
    # Resolved identities count too: an ifNoneExist match is the resource that entry stands for.
    identities = [*_writes(plans), *(p for p in plans if p.found_existing)]
    for p in sorted(identities, key=lambda p: p.entry.index):
        assert p.entry.resource_type is not None
        assert p.target_id is not None
        key = (p.entry.resource_type, p.target_id)
        if key in seen:
            first = seen[key].entry.path
            raise FhirError.of(
                400,
                "duplicate",
                f"{first} and {p.entry.path} both name {key[0]}/{key[1]}; one identity per request",
                first,
                p.entry.path,
            )
        seen[key] = p


class _Rewriter:
    """Maps fullUrls and conditional references to final `Type/id` references."""

    def __init__(
        self,
        session: Session,
        plans: list[_Plan],
        ctx: WriteContext,
        known: dict[str, str] | None = None,
    ) -> None:
        self.session, self.ctx = session, ctx
        self.map: dict[str, str] = dict(known or {})
        for p in plans:
            if p.entry.full_url and p.target_id and p.entry.method != "DELETE":
                self.map[p.entry.full_url] = f"{p.entry.resource_type}/{p.target_id}"
        self.conditional: dict[str, str] = {}

    def rewrite(self, plans: list[_Plan]) -> None:
        for p in plans:
            for path, ref, original in p.entry.references:
                ref["reference"] = self._target(original, f"{path}.reference")

    def _target(self, original: str, where: str) -> str:
        mapped = self.map.get(original)
        if mapped is not None:
            return mapped
        if original.startswith(("urn:uuid:", "urn:oid:")):
            if self.ctx.require_urn_targets:
                raise FhirError.of(
                    400,
                    "not-found",
                    f"{where}: {original} matches no fullUrl in this Bundle",
                    where,
                )
            return original
        if "?" in original and self.ctx.resolve_conditional_references:
            parsed = parse_reference(original)
            if parsed.kind == "conditional":
                return self._conditional(
                    original, parsed.resource_type or "", list(parsed.query), where
                )
        return original

    def _conditional(
        self, original: str, rtype: str, query: list[tuple[str, str]], where: str
    ) -> str:
        if original not in self.conditional:
            if self.ctx.permits is not None and not self.ctx.permits(rtype, "s"):
                raise FhirError.of(
                    403,
                    "forbidden",
                    f"{where}: a conditional reference searches {rtype}; the token's scopes "
                    "do not allow 's' on it",
                    where,
                )
            ids = _matches(self.session, rtype, query, where)
            if not ids:
                raise FhirError.of(
                    422,
                    "not-found",
                    f"{where}: conditional reference {original} matches no resource",
                    where,
                )
            if len(ids) > 1:
                raise FhirError.of(
                    412,
                    "multiple-matches",
                    f"{where}: conditional reference {original} matches more than one resource",
                    where,
                )
            self.conditional[original] = f"{rtype}/{ids[0]}"
        return self.conditional[original]


def _stamp(resource: dict[str, Any], rid: str, vid: int, now: dt.datetime) -> dict[str, Any]:
    """The resource as stored: server id and meta first, then everything as received."""
    meta = resource.get("meta")
    meta = (
        {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        if isinstance(meta, dict)
        else {}
    )
    out: dict[str, Any] = {
        "resourceType": resource["resourceType"],
        "id": rid,
        "meta": {"versionId": str(vid), "lastUpdated": fhir_instant(now), **meta},
    }
    out.update((k, v) for k, v in resource.items() if k not in out)
    return out


def upsert_identity(entry: Entry) -> tuple[str, str]:
    """Where an upsert (collection, message, import) puts its resource: id, urn:uuid, or content."""
    return entry.resource_type or "", entry.resource_id or entry.urn_uuid or entry.derived_id or ""


def apply_upserts(uow: UnitOfWork, entries: list[Entry], ctx: WriteContext) -> list[EntryResult]:
    """Upsert entries in order; a resource carried twice (FHIR bdl-7) becomes successive versions."""
    known = {e.full_url: "/".join(upsert_identity(e)) for e in entries if e.full_url}
    generations: list[list[Entry]] = []
    level_of: dict[tuple[str, str], int] = {}  # identity -> the last generation holding it
    for e in entries:  # one pass: the n-th copy of a resource goes to the n-th generation
        key = upsert_identity(e)
        level = level_of.get(key, -1) + 1
        level_of[key] = level
        if level == len(generations):
            generations.append([])
        generations[level].append(e)
    results: dict[int, EntryResult] = {}
    for generation in generations:
        for e, result in zip(generation, apply_entries(uow, generation, ctx, known), strict=True):
            results[e.index] = result
    return [results[e.index] for e in entries]


# how many versions are serialised and written together (see `apply_entries`)
VERSIONS_PER_WRITE = 1000


def apply_entries(
    uow: UnitOfWork,
    entries: list[Entry],
    ctx: WriteContext,
    known_urls: dict[str, str] | None = None,
) -> list[EntryResult]:
    """Apply entries atomically (the caller owns the transaction); results in entry order.

    Plan (identities and targets), rewrite references, write the versions, then complete the
    results of what wrote nothing (unchanged content, ifNoneExist matches, reads).
    """
    session = uow.session
    for e in entries:  # the one scope check of every write path (single, Bundle, $import)
        if (refused := out_of_scope(e, ctx)) is not None:
            raise refused
    plans, writes, heads = _plan(session, entries, ctx, known_urls)
    results: dict[int, EntryResult] = {}
    unchanged: list[tuple[int, Key]] = []
    # Versions are serialised and written a slice at a time: the stored JSON of every entry held
    # at once would cost about the body's size again on top of its parsed tree (issue 17).
    for start in range(0, len(writes), VERSIONS_PER_WRITE):
        rows: list[fhir_versions.VersionRow] = []
        for p in writes[start : start + VERSIONS_PER_WRITE]:
            row, results[p.entry.index] = _version_of(p, heads, ctx)
            if row is not None:
                rows.append(row)
            elif results[p.entry.index].change == "unchanged":
                unchanged.append((p.entry.index, (p.entry.resource_type or "", p.target_id or "")))
        fhir_versions.write_versions(
            session,
            rows,
            heads,
            source=ctx.source,
            request_id=ctx.request_id,
            provenance_id=uow.provenance_id,
        )
        uow.record(rows)
    _complete(session, plans, results, unchanged, ctx)
    return [results[e.index] for e in entries]


def _plan(
    session: Session, entries: list[Entry], ctx: WriteContext, known_urls: dict[str, str] | None
) -> tuple[list[_Plan], list[_Plan], dict[Key, fhir_versions.Head]]:
    """Every entry's target, references rewritten to them, and the current heads of the writes."""
    plans = _resolve_identities(session, entries)
    _check_overlaps(plans)
    writes = _writes(plans)
    heads = fhir_versions.load_heads(session, [_key(p) for p in writes])
    _Rewriter(session, plans, ctx, known_urls).rewrite(plans)
    # A create never overwrites: an id taken from its urn:uuid or derived from its content that
    # already holds different content (or was deleted) gets a fresh id. So does a content-derived
    # upsert; an upsert by id or urn:uuid names its target on purpose.
    clashed = False
    for p in writes:
        head = heads.get(_key(p))
        if head is not None and (
            p.entry.method == "POST"
            or (p.entry.method == "UPSERT" and p.target_id == p.entry.derived_id)
        ):
            assert p.entry.resource is not None
            if head.deleted or head.content_hash != content_hash(p.entry.resource):
                p.target_id, clashed = str(uuid.uuid4()), True
    if clashed:
        _Rewriter(session, plans, ctx, known_urls).rewrite(plans)
        heads = fhir_versions.load_heads(session, [_key(p) for p in writes])
    return plans, writes, heads


def _key(p: _Plan) -> Key:
    return p.entry.resource_type or "", p.target_id or ""


def _version_of(
    p: _Plan, heads: dict[Key, fhir_versions.Head], ctx: WriteContext
) -> tuple[fhir_versions.VersionRow | None, EntryResult]:
    """The version one write adds (None: nothing to add) and its entry's result."""
    e = p.entry
    rtype, rid = _key(p)
    head = heads.get((rtype, rid))
    live = head is not None and not head.deleted
    if e.if_match is not None and (not live or head is None or head.version_id != e.if_match):
        current = f'W/"{head.version_id}"' if live and head else "no current version"
        raise _at_entry(
            412, "conflict", e, f'If-Match W/"{e.if_match}" but {rtype}/{rid} is at {current}'
        )
    next_vid = head.version_id + 1 if head else 1
    if e.method == "PUT" and not live and ctx.permits is not None and not ctx.permits(rtype, "c"):
        raise forbidden(e, rtype, "c")  # an update that creates is a create
    if e.method == "DELETE":
        if not live:
            return None, EntryResult(204, "none", rtype, rid)
        row = fhir_versions.VersionRow(rtype, rid, next_vid, ctx.now, "", None, [], [])
        return row, EntryResult(204, "deleted", rtype, rid, next_vid, ctx.now)
    assert e.resource is not None
    digest = content_hash(e.resource)
    if live and head is not None and head.content_hash == digest:
        return None, EntryResult(200, "unchanged", rtype, rid, head.version_id, head.last_updated)
    stored = _stamp(e.resource, rid, next_vid, ctx.now)
    row = fhir_versions.VersionRow(
        rtype,
        rid,
        next_vid,
        ctx.now,
        digest,
        dumps(stored).decode(),
        identifier_index(stored),
        reference_index(rtype, stored, ctx.base_url),
        stored,
    )
    result = EntryResult(
        200 if live else 201,
        "updated" if live else "created",
        rtype,
        rid,
        next_vid,
        ctx.now,
        row.content if ctx.keep_content else None,
    )
    return row, result


def _complete(
    session: Session,
    plans: list[_Plan],
    results: dict[int, EntryResult],
    unchanged: list[tuple[int, Key]],
    ctx: WriteContext,
) -> None:
    """Fill in the results of entries that wrote nothing: unchanged, matched, no-op, read."""
    if unchanged and ctx.keep_content:
        contents = {
            (v.resource_type, v.resource_id): v.content
            for v in fhir_versions.read_current_many(session, [k for _, k in unchanged])
        }
        for index, key in unchanged:
            results[index].content = contents[key]
    for p in plans:
        e = p.entry
        if p.noop_delete:
            results[e.index] = EntryResult(204, "none", e.resource_type)
        elif p.found_existing:
            found = fhir_versions.read_version(session, e.resource_type or "", p.target_id or "")
            assert found is not None
            results[e.index] = EntryResult(
                200,
                "unchanged",
                found.resource_type,
                found.resource_id,
                found.version_id,
                found.last_updated,
                found.content if ctx.keep_content else None,
            )
        elif e.method == "GET":
            results[e.index] = _read_entry(session, e, ctx)


def _read_entry(session: Session, e: Entry, ctx: WriteContext) -> EntryResult:
    if e.resource_id is None:  # a search: the entry's resource is the searchset Bundle
        searchset = search_bundle(
            session,
            e.resource_type or "",
            e.query or [],
            base=ctx.base_url or "",
            default_count=ctx.search_default_count,
            max_count=ctx.search_max_count,
        )
        return EntryResult(200, "read", content=searchset.decode())
    vid = ascii_int(e.version_id) if e.version_id is not None else None
    if e.version_id is not None and vid is None:
        raise FhirError.of(404, "not-found", f"{e.path}: no version {e.version_id!r}", e.path)
    found = fhir_versions.read_version(session, e.resource_type or "", e.resource_id, vid)
    if found is None or found.deleted:
        status, code = (410, "deleted") if found else (404, "not-found")
        raise FhirError.of(
            status, code, f"{e.path}: {e.resource_type}/{e.resource_id} is not available", e.path
        )
    return EntryResult(
        200,
        "read",
        found.resource_type,
        found.resource_id,
        found.version_id,
        found.last_updated,
        found.content,
    )


def failure(exc: FhirError | InvalidContentError, resource_type: str | None = None) -> EntryResult:
    """An entry that failed on its own (batch, import): its status, issues and type when known."""
    err = exc if isinstance(exc, FhirError) else FhirError.from_invalid(exc)
    return EntryResult(err.status, "failed", resource_type, issues=err.issues)
