"""The FHIR store's use cases, each one unit of work, retried when a concurrent writer won."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlmodel import Session

from fhir_mapping.bundles import (
    BODY,
    Entry,
    ParsedBundle,
    bundle_envelope,
    owed_checker,
    parse_bundle,
    parse_conditional,
    parse_etag,
    resource_entry,
    settle_models,
)
from fhir_mapping.issues import InvalidContentError, Issue
from fhir_mapping.json_codec import loads, loads_text, loads_unguarded, share_strings
from fhir_mapping.ndjson import RefusedLine
from fhir_mapping.references import is_valid_id
from fhir_mapping.resource_types import SUPPORTED_TYPES
from fhir_mapping.tokens import ascii_int
from service.audit.events import CLI_CLIENT, AuditNote, Entity
from service.derivation.catalog import load_catalog
from service.derivation.refresh import Derivation
from service.errors import DatabaseUnavailableError, FhirError
from service.fhir.ingest import (
    EntryResult,
    WriteContext,
    apply_entries,
    apply_upserts,
    failure,
    out_of_scope,
    record_write,
    upsert_identity,
)
from service.fhir.spooled import RequestBytes
from service.fhir.validation_workers import ModelChecks, PendingVerdicts
from service.infra import metrics
from service.infra.clock import utcnow
from service.infra.db import reading
from service.infra.process import return_free_memory
from service.infra.settings import Settings
from service.repositories import fhir_versions
from service.repositories.fhir_search import search_bundle
from service.repositories.unit_of_work import UnitOfWork, unit_of_work

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATEs that mean "another transaction won, try again": unique, serialization, deadlock.
_RETRY_SQLSTATES = {"23505", "40001", "40P01"}
IMPORT_CHUNK = 500
# A chunk of an import also ends at this many characters of its lines (~20 MB once parsed).
IMPORT_CHUNK_CHARS = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """What happened to one NDJSON line (1-based)."""

    line: int
    result: EntryResult


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, IntegrityError):
        code = getattr(exc.orig, "sqlstate", None)
        return code is None or code in _RETRY_SQLSTATES  # SQLite gives no SQLSTATE
    if isinstance(exc, DBAPIError):
        return getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES
    return False


def _unstorable(exc: DataError) -> FhirError:
    """A value our validation let through but the database refuses (too long, out of range)."""
    # the driver's message quotes the value, which may be patient data: name the error only
    log.warning(
        "value refused by the database: %s (SQLSTATE %s)",
        type(exc.orig).__name__,
        getattr(exc.orig, "sqlstate", None),
    )
    return FhirError.of(
        400, "value", "a value cannot be stored by this server; nothing was written"
    )


def _refuse(parsed: ParsedBundle) -> None:
    """Raise the 400 for a Bundle with failed entries, every entry's issues in entry order."""
    if parsed.failures:
        raise FhirError.from_invalid(
            InvalidContentError([i for _, exc in parsed.failures for i in exc.issues])
        )


def _parsed_strictly(raw: bytes) -> Any:
    """The body as `loads` parses it; its refusal as the 400 a client gets."""
    try:
        return loads(raw)
    except InvalidContentError as exc:
        raise FhirError.from_invalid(exc) from exc


class _ModelGate:
    """Refuses a Bundle whose models failed in the worker: asked before commit, or on error.

    Given `unguarded` (the body, parsed here by `loads_unguarded`), it first makes sure `loads`
    accepts them too: by the worker's answer, or by parsing them here when the worker gave none.
    """

    def __init__(
        self,
        body: Any,
        parsed: ParsedBundle,
        pending: PendingVerdicts,
        unguarded: RequestBytes | None,
    ) -> None:
        self._body, self._parsed, self._pending = body, parsed, pending
        self._unguarded = unguarded

    def settled(self) -> ParsedBundle:
        """The Bundle as if it had been parsed strictly and its models checked in place."""
        verdicts = self._pending.result(
            owed_checker(self._body, self._parsed), len(self._body["entry"])
        )
        if self._unguarded is not None:
            if BODY in verdicts:
                raise FhirError.from_invalid(InvalidContentError(verdicts[BODY]))
            if not self._pending.answered_by_worker:
                _parsed_strictly(self._unguarded.read())
            self._unguarded = None  # confirmed
        return settle_models(self._parsed, verdicts)

    def __call__(self) -> None:
        _refuse(self.settled())


class FhirService:
    """Read, search and write FHIR resources; the API and the CLI both go through here."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        derivation: Derivation | None = None,
        model_checks: ModelChecks | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.derivation = derivation or load_catalog(settings).derivation
        self.model_checks = model_checks or ModelChecks(0, 0)

    def release_memory(self) -> bool:
        """After a large request: drop memo caches and return free memory to the system."""
        return return_free_memory(self.derivation.forget_memos)

    # -- units of work -------------------------------------------------------------------------

    def _write(
        self,
        work: Callable[[UnitOfWork], T],
        ctx: WriteContext,
        gate: Callable[[], None] | None = None,
    ) -> T:
        """Run `work` and the derivation in one transaction; `gate` may still refuse the commit.

        The gate settles what was checked elsewhere meanwhile (the models of a Bundle): before the
        commit, and also first when the work fails, so a client hears of invalid content before
        anything the invalid content ran into, just as if it had been checked first. Derivation
        keeps nothing of a transaction that does not commit (caches and reports wait for it).
        """
        attempts = self.settings.write_retries
        for attempt in range(1, attempts + 1):
            try:
                with unit_of_work(self.engine) as uow:
                    try:
                        result = work(uow)
                        self.derivation.after_write(uow)  # events change with their sources
                    except Exception:
                        if gate is not None:
                            gate()
                        raise
                    if gate is not None:
                        gate()  # raising here rolls the whole unit of work back
                    record_write(uow, ctx)
                    uow.after_commit(partial(metrics.count_written, list(uow.versions)))
                    return result
            except DBAPIError as exc:  # IntegrityError and OperationalError among them
                if _retryable(exc) and attempt < attempts:
                    time.sleep(random.uniform(0, 0.02 * 2**attempt))
                    continue
                if _retryable(exc):
                    raise FhirError.of(
                        409,
                        "conflict",
                        "the same resources were being written concurrently; retry the request",
                    ) from exc
                if isinstance(exc, DataError):
                    raise _unstorable(exc) from exc
                if isinstance(exc, OperationalError):
                    log.warning("database unavailable: %s", type(exc.orig).__name__)
                    raise DatabaseUnavailableError("write") from exc
                raise
        raise AssertionError("unreachable")

    def _read(self, work: Callable[[Session], T]) -> T:
        with reading(self.engine) as session:
            return work(session)

    def context(
        self,
        source: str,
        *,
        base_url: str | None = None,
        conditional_refs: bool = True,
        strict_urns: bool = True,
        permits: Callable[[str, str], bool] | None = None,
        client: str = CLI_CLIENT,
        audit: AuditNote | None = None,
        keep_content: bool = True,
    ) -> WriteContext:
        """A write context stamped now, for one request (the HTTP request's id when it has one)."""
        return WriteContext(
            now=utcnow(),
            source=source,
            request_id=audit.request_id if audit is not None else str(uuid.uuid4()),
            client=client,
            audit=audit,
            base_url=self.settings.base_url or base_url,
            search_default_count=self.settings.search_default_count,
            search_max_count=self.settings.search_max_count,
            resolve_conditional_references=conditional_refs,
            require_urn_targets=strict_urns,
            permits=permits,
            keep_content=keep_content,
        )

    # -- single-resource interactions ----------------------------------------------------------

    def read(
        self, resource_type: str, resource_id: str, version_id: str | None = None
    ) -> EntryResult:
        """Current (or given) version; 404 unknown, 410 deleted."""
        self.check_type(resource_type)
        vid: int | None = None
        if version_id is not None:
            vid = ascii_int(version_id)
            if vid is None:
                raise FhirError.of(
                    404, "not-found", f"{resource_type}/{resource_id} has no version {version_id!r}"
                )
        if not is_valid_id(resource_id):
            raise FhirError.of(404, "not-found", f"{resource_id!r} is not a valid FHIR id")
        found = self._read(lambda s: fhir_versions.read_version(s, resource_type, resource_id, vid))
        label = f"{resource_type}/{resource_id}" + (f"/_history/{version_id}" if version_id else "")
        if found is None:
            raise FhirError.of(404, "not-found", f"{label} is not known")
        if found.deleted:
            raise FhirError.of(410, "deleted", f"{label} was deleted")
        return EntryResult(
            200,
            "read",
            resource_type,
            resource_id,
            found.version_id,
            found.last_updated,
            found.content,
        )

    def create(
        self, resource_type: str, body: Any, *, if_none_exist: str | None, ctx: WriteContext
    ) -> EntryResult:
        """POST /fhir/{type}: content-identified create (an identical replay returns the original)."""
        self.check_type(resource_type)
        entry = self._single(body, "POST", resource_type)
        entry.resource_id = None
        if if_none_exist is not None:
            entry.if_none_exist = self._conditional(if_none_exist, resource_type, "If-None-Exist")
        return self._write(lambda uow: apply_entries(uow, [entry], ctx), ctx)[0]

    def update(
        self,
        resource_type: str,
        resource_id: str,
        body: Any,
        *,
        if_match: str | None,
        ctx: WriteContext,
    ) -> EntryResult:
        """PUT /fhir/{type}/{id}: update or create with that id; If-Match for versioned updates."""
        self.check_type(resource_type)
        if not is_valid_id(resource_id):
            raise FhirError.of(400, "invalid", f"{resource_id!r} is not a valid FHIR id")
        entry = self._single(body, "PUT", resource_type)
        if body.get("id") != resource_id:
            raise FhirError.of(
                400,
                "invalid",
                f"the resource id {body.get('id')!r} must equal the id in the URL ({resource_id!r})",
                f"{resource_type}.id",
            )
        entry.resource_id = resource_id
        entry.if_match = self._etag(if_match)
        return self._write(lambda uow: apply_entries(uow, [entry], ctx), ctx)[0]

    def delete(
        self, resource_type: str, resource_id: str, *, if_match: str | None, ctx: WriteContext
    ) -> EntryResult:
        """DELETE /fhir/{type}/{id}: a tombstone version; deleting twice is harmless."""
        self.check_type(resource_type)
        if not is_valid_id(resource_id):
            raise FhirError.of(400, "invalid", f"{resource_id!r} is not a valid FHIR id")
        entry = Entry(0, "", "DELETE", resource_type, resource_id, if_match=self._etag(if_match))
        return self._write(lambda uow: apply_entries(uow, [entry], ctx), ctx)[0]

    def update_conditional(
        self, resource_type: str, params: list[tuple[str, str]], body: Any, *, ctx: WriteContext
    ) -> EntryResult:
        """PUT /fhir/{type}?criteria: update the single match, create when none, 412 when many."""
        self.check_type(resource_type)
        entry = self._single(body, "PUT", resource_type)
        entry.query = self._criteria(params, resource_type)
        return self._write(lambda uow: apply_entries(uow, [entry], ctx), ctx)[0]

    def delete_conditional(
        self, resource_type: str, params: list[tuple[str, str]], *, ctx: WriteContext
    ) -> EntryResult:
        """DELETE /fhir/{type}?criteria: delete the single match; 412 when several match."""
        self.check_type(resource_type)
        entry = Entry(0, "", "DELETE", resource_type, query=self._criteria(params, resource_type))
        return self._write(lambda uow: apply_entries(uow, [entry], ctx), ctx)[0]

    def search(self, resource_type: str, params: list[tuple[str, str]], *, base: str) -> bytes:
        """GET /fhir/{type}?…: a searchset Bundle with a cursor `next` link."""
        self.check_type(resource_type)
        return self._read(
            lambda session: search_bundle(
                session,
                resource_type,
                params,
                base=base,
                default_count=self.settings.search_default_count,
                max_count=self.settings.search_max_count,
            )
        )

    # -- bundles and bulk ----------------------------------------------------------------------

    def bundle(self, body: Any, *, ctx: WriteContext) -> tuple[str, list[EntryResult]]:
        """POST /fhir with a Bundle: the response Bundle type and one result per entry."""
        return self._bundle(body, None, ctx)

    def bundle_json(
        self, raw: bytes | RequestBytes, *, ctx: WriteContext
    ) -> tuple[str, list[EntryResult]]:
        """`bundle` for the request bytes: an atomic Bundle (a large one, or a small one while it is
        the only one this process is writing) has its models checked in a worker process while it
        is written (see `service.fhir.validation_workers`); the answer is the same.

        Given a spooled body (`RequestBytes` on disk), its bytes are read once to be parsed and
        dropped: the worker reads the file itself, and so does a strict re-parse.
        """
        with self.model_checks.writing():
            return self._bundle_bytes(raw, ctx)

    def _bundle_bytes(
        self, raw: bytes | RequestBytes, ctx: WriteContext
    ) -> tuple[str, list[EntryResult]]:
        source = raw if isinstance(raw, RequestBytes) else RequestBytes(raw)
        data = source.read()
        # The worker starts on the bytes at once and parses them alongside this thread; if they
        # turn out not to be an atomic Bundle, its answer is never asked for. Since the worker
        # parses them strictly, this thread parses them without the duplicate-key check, at under
        # half the cost, and the worker's answer on the bytes comes before anything is kept.
        pending = (
            self.model_checks.submit(source.for_worker())
            if self.model_checks.wanted(data)
            else None
        )
        body = loads_unguarded(data) if pending is not None else None
        strict = body is None
        if strict:
            body = _parsed_strictly(data)
        del data  # a spooled body's bytes are not needed again
        if source.spooled:  # a large body: its tree is kept whole until the commit
            share_strings(body)
        if strict:
            return self._bundle(body, pending, ctx)
        try:
            return self._bundle(body, pending, ctx, unguarded=source)
        except FhirError:
            # bytes that `loads` refuses get that answer, whatever else failed
            _parsed_strictly(source.read())
            raise

    def _bundle(
        self,
        body: Any,
        pending: PendingVerdicts | None,
        ctx: WriteContext,
        unguarded: RequestBytes | None = None,
    ) -> tuple[str, list[EntryResult]]:
        try:
            envelope = bundle_envelope(body)
        except InvalidContentError as exc:
            raise FhirError.from_invalid(exc) from exc
        if envelope[0] == "batch":  # checked entry by entry in place; no worker's answer needed
            pending = None
            if unguarded is not None:  # nor asked for: parse strictly here
                body, unguarded = _parsed_strictly(unguarded.read()), None
                envelope = bundle_envelope(body)  # the same checks: its entries are new objects
        # the envelope passed, so this collects each entry's failure instead of raising
        parsed = parse_bundle(body, check_models=pending is None, envelope=envelope)
        reads = sum(1 for e in parsed.entries if e.method == "GET")
        if reads > self.settings.bundle_max_reads:  # each costs a query: one request, no bound
            raise FhirError.of(
                400,
                "too-costly",
                f"the Bundle carries {reads} GET entries; at most "
                f"{self.settings.bundle_max_reads} may be read in one Bundle",
                "Bundle.entry",
            )
        # Scopes are checked entry by entry where entries are applied (`apply_entries`): a
        # refused entry fails alone in a batch and sinks a transaction whole.
        if ctx.audit is not None:
            ctx.audit.subtype = "batch" if parsed.kind == "batch" else "transaction"
        if parsed.kind == "batch":  # each entry keeps its own check (savepoints)
            failures = [(i, exc, _sent_type(body, i)) for i, exc in parsed.failures]
            return "batch-response", self._batch(parsed.entries, failures, ctx)
        gate = None if pending is None else _ModelGate(body, parsed, pending, unguarded)
        if parsed.failures:
            _refuse(parsed if gate is None else gate.settled())
        entries = parsed.entries
        if parsed.kind == "transaction":
            return "transaction-response", self._write(
                lambda uow: apply_entries(uow, entries, ctx), ctx, gate
            )
        # collection / message: one atomic upsert, conditional references kept as sent
        upsert_ctx = replace(ctx, resolve_conditional_references=False)
        return "transaction-response", self._write(
            lambda uow: apply_upserts(uow, entries, upsert_ctx), upsert_ctx, gate
        )

    def _batch(
        self,
        entries: list[Entry],
        failures: list[tuple[int, InvalidContentError, str | None]],
        ctx: WriteContext,
    ) -> list[EntryResult]:
        def work(uow: UnitOfWork) -> dict[int, EntryResult]:
            out: dict[int, EntryResult] = {}
            for entry in entries:
                before, versions = dict(uow.written), len(uow.versions)
                try:
                    with uow.session.begin_nested():
                        out[entry.index] = apply_entries(uow, [entry], ctx)[0]
                except (FhirError, DataError) as exc:
                    uow.written = before  # what the savepoint undid
                    del uow.versions[versions:]
                    out[entry.index] = failure(
                        exc if isinstance(exc, FhirError) else _unstorable(exc),
                        entry.resource_type,
                    )
            return out

        done = self._write(work, ctx)
        done.update((i, failure(exc, sent)) for i, exc, sent in failures)
        return [done[i] for i in sorted(done)]

    def import_lines(
        self,
        lines: Iterable[str | RefusedLine],
        *,
        ctx: WriteContext,
        progress: Callable[[int], object] | None = None,
    ) -> Iterator[LineOutcome]:
        """NDJSON: each line upserted on its own merits, written in chunks; outcomes in line order.

        Lines are taken one at a time and a chunk holds at most `IMPORT_CHUNK` lines and
        `IMPORT_CHUNK_CHARS` characters, so memory does not grow with the input (a stream of lines
        is read as it is written). A line may come already refused (too long, not UTF-8).
        """
        # Each chunk records its Provenance (naming the versions it wrote); the request's
        # AuditEvent follows the last chunk and names those Provenances: one entity per chunk,
        # not per line, so it does not grow with the file either.
        committed: list[str] = []
        upsert_ctx = replace(
            ctx,
            resolve_conditional_references=False,
            require_urn_targets=False,
            audit=None,
            keep_content=False,
            provenance_ids=committed,
        )
        pending: list[tuple[int, Entry | EntryResult]] = []
        keys: set[tuple[str, str]] = set()
        chars = 0
        for number, line in enumerate(lines, start=1):
            if isinstance(line, RefusedLine):
                pending.append(
                    (number, failure(FhirError(line.status, [_at_line(line.issue, number)])))
                )
            elif not line.strip(" \t\r"):  # JSON whitespace only: U+2028 alone is not blank
                continue
            else:
                item = self._import_entry(line, number, upsert_ctx)
                key = upsert_identity(item) if isinstance(item, Entry) else None
                if key is not None and key in keys:  # a second version: after the first's chunk
                    yield from self._import_pending(pending, upsert_ctx, progress, ctx.audit)
                    pending, keys, chars = [], set(), 0
                pending.append((number, item))
                if key is not None:
                    keys.add(key)
                chars += len(line)
            if len(pending) >= IMPORT_CHUNK or chars >= IMPORT_CHUNK_CHARS:
                yield from self._import_pending(pending, upsert_ctx, progress, ctx.audit)
                pending, keys, chars = [], set(), 0
        if pending:
            yield from self._import_pending(pending, upsert_ctx, progress, ctx.audit)

    def import_entry(self, line: str, number: int, ctx: WriteContext) -> Entry | EntryResult:
        """One NDJSON line as an upsert entry, or its failure (a bulk job's own chunking)."""
        return self._import_entry(line, number, ctx)

    @staticmethod
    def import_context(ctx: WriteContext) -> WriteContext:
        """The context `import_lines` writes its lines with (plain upserts, no audit note)."""
        return replace(
            ctx,
            resolve_conditional_references=False,
            require_urn_targets=False,
            audit=None,
            keep_content=False,
        )

    def write_entries(
        self,
        entries: list[Entry],
        ctx: WriteContext,
        then: Callable[[UnitOfWork, list[EntryResult]], None],
    ) -> list[EntryResult]:
        """Upsert entries in one unit of work and run `then` in the same transaction (a bulk
        job's checkpoint commits with the lines it counts, or not at all)."""

        def work(uow: UnitOfWork) -> list[EntryResult]:
            results = apply_entries(uow, entries, ctx)
            then(uow, results)
            return results

        return self._write(work, ctx)

    @staticmethod
    def _import_entry(line: str, number: int, ctx: WriteContext) -> Entry | EntryResult:
        """The line's entry, or its failure (unparseable, invalid, out of the token's scopes)."""
        try:
            entry = resource_entry(
                loads_text(line, where=f"line {number}: "),
                method="UPSERT",
                path="",
                index=number,
            )
        except InvalidContentError as exc:
            issues = [_at_line(i, number) for i in exc.issues]
            return failure(InvalidContentError(issues))
        # apply_entries would refuse it too, but only after sinking its whole chunk into
        # line-by-line retries: leave it out of the chunk instead
        refused = out_of_scope(entry, ctx)
        return entry if refused is None else failure(refused, entry.resource_type)

    def _import_pending(
        self,
        pending: list[tuple[int, Entry | EntryResult]],
        ctx: WriteContext,
        progress: Callable[[int], object] | None,
        audit: AuditNote | None,
    ) -> Iterator[LineOutcome]:
        """Write the entries of `pending`; every line's outcome, in line order. The request's
        audit note learns the Provenance of what was committed."""
        chunk = [(number, item) for number, item in pending if isinstance(item, Entry)]
        written = {o.line: o.result for o in self._import_chunk(chunk, ctx, progress)}
        if audit is not None and ctx.provenance_ids:
            audit.entities.extend(Entity.written_under(p) for p in ctx.provenance_ids)
            ctx.provenance_ids.clear()
        for number, item in pending:
            yield LineOutcome(number, written[number] if isinstance(item, Entry) else item)

    def _import_chunk(
        self,
        chunk: list[tuple[int, Entry]],
        ctx: WriteContext,
        progress: Callable[[int], object] | None,
    ) -> Iterator[LineOutcome]:
        if not chunk:
            return
        try:
            results = self._write(lambda uow: apply_entries(uow, [e for _, e in chunk], ctx), ctx)
        except FhirError:
            if len(chunk) == 1:
                raise
            # One bad line must not sink its neighbours: write them one by one.
            for item in chunk:
                try:
                    yield from self._import_chunk([item], ctx, progress)
                except FhirError as exc:
                    yield LineOutcome(item[0], failure(exc, item[1].resource_type))
            return
        if progress:
            progress(len(chunk))
        for (number, _), result in zip(chunk, results, strict=True):
            yield LineOutcome(number, result)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def check_type(resource_type: str) -> None:
        """404 for a type we do not serve (FHIR: unknown resource type)."""
        if resource_type not in SUPPORTED_TYPES:
            raise FhirError.of(
                404,
                "not-supported",
                f"resource type {resource_type!r} is not supported by this server (see /fhir/metadata)",
            )

    @staticmethod
    def _single(body: Any, method: str, resource_type: str) -> Entry:
        try:
            entry = resource_entry(body, method="PUT" if method == "PUT" else "POST", path="")
        except InvalidContentError as exc:
            raise FhirError.from_invalid(exc) from exc
        if entry.resource_type != resource_type:
            raise FhirError.of(
                400,
                "invalid",
                f"the body is a {entry.resource_type}, the URL says {resource_type}",
                "resourceType",
            )
        return entry

    @staticmethod
    def _conditional(text: str, resource_type: str, where: str) -> list[tuple[str, str]]:
        try:
            return parse_conditional(text, resource_type, where)
        except InvalidContentError as exc:
            raise FhirError.from_invalid(exc) from exc

    @staticmethod
    def _etag(value: str | None) -> int | None:
        try:
            return parse_etag(value, "If-Match")
        except InvalidContentError as exc:
            raise FhirError.from_invalid(exc) from exc

    @staticmethod
    def _criteria(params: list[tuple[str, str]], resource_type: str) -> list[tuple[str, str]]:
        criteria = [(k, v) for k, v in params if k not in ("_format", "_pretty")]
        if not criteria:
            raise FhirError.of(
                400, "invalid", f"a conditional operation on {resource_type} needs search criteria"
            )
        return criteria


def _at_line(issue: Issue, number: int) -> Issue:
    """An issue of one NDJSON line, its diagnostics starting with the line's number."""
    if issue.diagnostics.startswith("line "):
        return issue
    return replace(issue, diagnostics=f"line {number}: {issue.diagnostics}")


def _sent_type(bundle: Any, index: int) -> str | None:
    """The resourceType an entry that failed to parse claims, if it names one (for metrics)."""
    try:
        sent = bundle["entry"][index]["resource"]["resourceType"]
    except (KeyError, IndexError, TypeError):
        return None
    return sent if isinstance(sent, str) and sent.isalpha() and len(sent) <= 64 else None
