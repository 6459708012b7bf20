"""Bulk jobs: an NDJSON import run in chunks, each committed with its checkpoint.

A job reads its inputs (NDJSON files: a spooled `$import` body, a file under the import folder, a
file `trialbridge load` was given) line by line, upserts them through the push path's entries
(`FhirService.import_entry`, `FhirService.write_entries`) and writes, in the transaction of each
chunk, how far it got and what happened to every line so far. So a job whose runner died is resumed
after its last committed line (never writing a line twice, and with exact counts), a retried run is
idempotent, and a cancelled job stops before its next chunk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from fhir_mapping.bundles import Entry
from fhir_mapping.issues import Issue, operation_outcome
from fhir_mapping.json_codec import dumps
from fhir_mapping.ndjson import RefusedLine, ndjson_lines
from service.access.scopes import Scopes
from service.errors import DatabaseUnavailableError, FhirError
from service.fhir.ingest import EntryResult, WriteContext, failure, upsert_identity
from service.fhir.interactions import IMPORT_CHUNK_CHARS, FhirService
from service.infra.clock import utcnow
from service.infra.db import reading, writing
from service.infra.leases import LeaseKeeper
from service.repositories import bulk_jobs, import_spools, planner_statistics
from service.repositories.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

READ_BYTES = 1024 * 1024
COUNTED = ("created", "updated", "unchanged", "failed")
# A body spooled in the database that no unfinished job names after this long was being received
# when its server stopped: the sweep deletes it.
ORPHAN_SPOOL_AGE = dt.timedelta(days=1)


class StoppingError(Exception):
    """This process is stopping: leave the job at its checkpoint for another runner."""


class LeaseLostError(Exception):
    """Another runner took the job over (this one stopped renewing in time): stop, write nothing."""


@dataclass(frozen=True, slots=True)
class JobInput:
    """One NDJSON input: the URL the client named (or `body`), the file read, whether the file is
    a spooled body the job deletes when it ends; a body spooled in the database has no file but
    its `spool_id` (see `BulkJobs.spool_piece`)."""

    url: str
    path: str
    spooled: bool = False
    spool_id: str | None = None


@dataclass(slots=True)
class Checkpoint:
    """How far a job got: the input it is on, the last committed line of each input, and the
    outcomes of every line up to there."""

    lines: list[int]
    outcomes: list[dict[str, int]]

    @classmethod
    def empty(cls, inputs: int) -> Checkpoint:
        """Nothing read yet."""
        return cls([0] * inputs, [dict.fromkeys(COUNTED, 0) for _ in range(inputs)])

    @classmethod
    def of(cls, text: str) -> Checkpoint:
        """As stored."""
        data = json.loads(text)
        return cls(list(data["lines"]), [dict(o) for o in data["outcomes"]])

    def to_json(self) -> str:
        """To store."""
        return json.dumps({"lines": self.lines, "outcomes": self.outcomes})

    def after(self, index: int, line: int, delta: Counter[str]) -> Checkpoint:
        """This checkpoint with input `index` committed up to `line` and `delta` counted."""
        outcomes = [dict(o) for o in self.outcomes]
        for key, n in delta.items():
            outcomes[index][key] = outcomes[index].get(key, 0) + n
        lines = list(self.lines)
        lines[index] = line
        return Checkpoint(lines, outcomes)


@dataclass(frozen=True, slots=True)
class JobView:
    """A bulk job as its status endpoint and the CLI show it."""

    id: str
    kind: str
    owner: str
    status: str
    cancel_requested: bool
    created_at: dt.datetime
    finished_at: dt.datetime | None
    inputs: list[JobInput]
    checkpoint: Checkpoint
    error: str | None

    @property
    def finished(self) -> bool:
        """Succeeded, failed or cancelled."""
        return self.status in bulk_jobs.FINISHED

    def progress(self) -> str:
        """The `X-Progress` text: lines committed so far."""
        done = sum(self.checkpoint.lines)
        return f"{self.status}: {done} line(s) committed of {len(self.inputs)} input(s)"


@dataclass(slots=True)
class _Chunk:
    """Lines read and not yet committed: entries to write, lines already failed."""

    items: list[tuple[int, Entry | EntryResult]] = field(default_factory=list)
    keys: set[tuple[str, str]] = field(default_factory=set)
    chars: int = 0


def _outcome_text(result: EntryResult, number: int) -> str:
    """A rejected line as one OperationOutcome line, located at its line."""
    issues = [
        i
        if f"line {number}" in i.diagnostics
        else replace(i, diagnostics=f"line {number}: {i.diagnostics}")
        for i in result.issues
    ] or [Issue("exception", f"line {number}: rejected ({result.status})")]
    return dumps(operation_outcome(issues)).decode()


def _tally(
    items: list[tuple[int, EntryResult]],
) -> tuple[Counter[str], list[tuple[int, int, str]]]:
    """Counts by outcome, and the rejected lines' OperationOutcomes."""
    counts: Counter[str] = Counter()
    errors = []
    for number, result in items:
        if result.status < 300:
            counts[result.change if result.change in COUNTED else "unchanged"] += 1
        else:
            counts["failed"] += 1
            errors.append((number, result.status, _outcome_text(result, number)))
    return counts, errors


class BulkJobs:
    """Create, run, follow and cancel bulk jobs (any process: the state is in the database)."""

    def __init__(self, engine: Engine, store: FhirService) -> None:
        self.engine = engine
        self.store = store
        self.settings = store.settings
        # set when the process stops: running jobs leave at their next chunk, lease released
        self.stopping = threading.Event()

    # -- creating and following ---------------------------------------------------------------

    def create(
        self,
        inputs: list[JobInput],
        *,
        owner: str,
        scopes: str | None = None,
        request_id: str | None = None,
        kind: str = "import",
    ) -> str:
        """A new queued job over these inputs; `scopes` (the token's) bound what it may write."""
        job_id = str(uuid.uuid4())
        document = {
            "inputs": [
                {"url": i.url, "path": i.path, "spooled": i.spooled, "spool_id": i.spool_id}
                for i in inputs
            ],
            "scopes": scopes,
            "request_id": request_id or job_id,
        }
        with writing(self.engine) as session:
            bulk_jobs.add_job(
                session,
                job_id,
                kind,
                owner,
                json.dumps(document),
                Checkpoint.empty(len(inputs)).to_json(),
                utcnow(),
            )
        return job_id

    def view(self, job_id: str) -> JobView | None:
        """The job, or None."""
        with reading(self.engine) as session:
            row = bulk_jobs.job(session, job_id)
        if row is None:
            return None
        document = json.loads(row.inputs)
        return JobView(
            id=row.id,
            kind=row.kind,
            owner=row.owner,
            status=row.status,
            cancel_requested=row.cancel_requested,
            created_at=row.created_at,
            finished_at=row.finished_at,
            inputs=[JobInput(**i) for i in document["inputs"]],
            checkpoint=Checkpoint.of(row.checkpoint),
            error=row.error,
        )

    def cancel(self, job_id: str) -> None:
        """Cancel: a queued job at once, a running one before its next chunk."""
        with writing(self.engine) as session:
            bulk_jobs.request_cancel(session, job_id, utcnow())
        view = self.view(job_id)
        if view is not None and view.status == "cancelled":
            self._drop_spools(view.inputs)

    def spool_piece(self, spool_id: str, seq: int, data: bytes) -> None:
        """Store piece `seq` of a body as it arrives (each in a transaction of its own, so a slow
        upload holds no transaction open)."""
        with writing(self.engine) as session:
            import_spools.append(session, spool_id, seq, data, utcnow())

    def drop_spool(self, spool_id: str) -> None:
        """Delete a body that will have no job (refused or cut off while it arrived)."""
        with writing(self.engine) as session:
            import_spools.drop(session, [spool_id])

    def sweep_spools(self) -> int:
        """Delete bodies spooled in the database that no unfinished job names and that began
        arriving over ORPHAN_SPOOL_AGE ago (their server stopped mid-upload); how many."""
        with writing(self.engine) as session:
            old = set(import_spools.started_before(session, utcnow() - ORPHAN_SPOOL_AGE))
            if not old:
                return 0
            named = {
                i.get("spool_id")
                for document in bulk_jobs.open_documents(session)
                for i in json.loads(document)["inputs"]
            }
            orphans = old - named
            import_spools.drop(session, orphans)
        if orphans:
            log.info("import spool: deleted %d body(ies) that no job names", len(orphans))
        return len(orphans)

    def errors(self, job_id: str, input_index: int) -> Iterator[tuple[int, int, str]]:
        """An input's rejected lines: line, HTTP status, OperationOutcome JSON; in line order."""
        return bulk_jobs.error_outcomes(self.engine, job_id, input_index)

    def unfinished(self) -> list[str]:
        """`$import` jobs waiting for a runner: queued, or whose runner stopped renewing its lease
        (a `trialbridge load` runs its own jobs: its files are where the command runs)."""
        with reading(self.engine) as session:
            return bulk_jobs.unfinished(session, utcnow(), kind="import")

    # -- running ------------------------------------------------------------------------------

    def run(self, job_id: str, progress: Callable[[int], object] | None = None) -> str | None:
        """Run the job to its end in this thread, from its last checkpoint; its final status, or
        None when it is not this runner's to run (finished, or running elsewhere)."""
        runner = str(uuid.uuid4())
        seconds = self.settings.job_lease_seconds
        now = utcnow()
        with writing(self.engine) as session:
            claimed = bulk_jobs.claim(
                session, job_id, runner, now, now + dt.timedelta(seconds=seconds)
            )
        if not claimed:
            return None
        view = self.view(job_id)
        assert view is not None
        with reading(self.engine) as session:
            row = bulk_jobs.job(session, job_id)
        assert row is not None
        document = json.loads(row.inputs)
        status, error = "succeeded", None
        with LeaseKeeper(
            self.engine,
            lambda session, until: bulk_jobs.renew(session, job_id, runner, until),
            seconds,
            "bulk job",
        ) as keeper:
            try:
                ran = _Run(self, job_id, runner, view, document, keeper, progress)
                status = ran.all_inputs()
            except LeaseLostError:
                log.warning("bulk job %s was taken over by another runner", job_id)
                return None
            except StoppingError:
                with writing(self.engine) as session:  # free to claim at once, from its checkpoint
                    bulk_jobs.renew(session, job_id, runner, utcnow())
                log.info("bulk job %s left at its checkpoint: this process is stopping", job_id)
                return None
            except DatabaseUnavailableError:
                # left running: its lease expires and a runner resumes it from its checkpoint
                log.warning("bulk job %s stopped: the database is unavailable", job_id)
                return None
            except OSError as exc:  # an input gone (a spool not shared with this worker?)
                log.warning("bulk job %s cannot read an input: %s", job_id, type(exc).__name__)
                status, error = "failed", "an input could not be read by the job's runner"
            except Exception:  # a job must end: recorded, the traceback to the log
                log.exception("bulk job failed")
                status, error = "failed", "internal error (see the service log)"
        with writing(self.engine) as session:
            bulk_jobs.finish(session, job_id, runner, status, utcnow(), error)
        self._drop_spools(view.inputs)
        return status

    def _drop_spools(self, inputs: list[JobInput]) -> None:
        stored = [item.spool_id for item in inputs if item.spool_id is not None]
        if stored:
            with writing(self.engine) as session:
                import_spools.drop(session, stored)
        for item in inputs:
            if item.spooled and item.spool_id is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.path)

    def pieces(self, spool_id: str) -> Iterator[bytes]:
        """A body spooled in the database, piece by piece (one short read each: memory stays
        flat); FileNotFoundError when it is gone, as for a spooled file."""
        seq = 0
        while True:
            with reading(self.engine) as session:
                data = import_spools.piece(session, spool_id, seq)
            if data is None:
                if seq == 0:
                    raise FileNotFoundError("the spooled body is gone")
                return
            yield data
            seq += 1


class _Run:
    """One runner's pass over a claimed job."""

    def __init__(
        self,
        jobs: BulkJobs,
        job_id: str,
        runner: str,
        view: JobView,
        document: dict[str, Any],
        keeper: LeaseKeeper,
        progress: Callable[[int], object] | None,
    ) -> None:
        self.jobs, self.job_id, self.runner = jobs, job_id, runner
        self.store = jobs.store
        self.view = view
        self.checkpoint = view.checkpoint
        self.keeper = keeper
        self.progress = progress
        scopes = document.get("scopes")
        permits = Scopes.parse(scopes).fhir if scopes is not None else None
        base = self.store.context(
            f"bulk {view.kind} job {job_id}", permits=permits, client=view.owner
        )
        ctx: WriteContext = self.store.import_context(base)
        self.ctx = replace(ctx, request_id=str(document.get("request_id") or job_id))
        self.chunk_lines = jobs.settings.import_job_chunk_lines

    def all_inputs(self) -> str:
        """Every input from where the checkpoint left it; `succeeded` or `cancelled`."""
        for index, item in enumerate(self.view.inputs):
            if not self._input(index, item):
                return "cancelled"
        return "succeeded"

    def _cancelled(self) -> bool:
        with reading(self.jobs.engine) as session:
            return bulk_jobs.cancel_requested(session, self.job_id)

    def _input(self, index: int, source: JobInput) -> bool:
        """One input from its checkpoint; False when the job was cancelled."""
        done = self.checkpoint.lines[index]
        if self.progress is not None and done:
            self.progress(done)
        chunk = _Chunk()
        last = done
        with contextlib.ExitStack() as stack:
            if source.spool_id is not None:
                chunks: Iterator[bytes] = self.jobs.pieces(source.spool_id)
            else:
                feed = stack.enter_context(Path(source.path).open("rb"))
                chunks = iter(lambda: feed.read(READ_BYTES), b"")
            lines = ndjson_lines(chunks, self.jobs.settings.max_import_line_bytes)
            for number, line in enumerate(lines, start=1):
                if number <= done:
                    continue  # committed before: never written twice
                last = number
                if isinstance(line, RefusedLine):
                    result = failure(FhirError(line.status, [line.issue]))
                    chunk.items.append((number, result))
                elif not line.strip(" \t\r"):
                    continue
                else:
                    item = self.store.import_entry(line, number, self.ctx)
                    key = upsert_identity(item) if isinstance(item, Entry) else None
                    if key is not None and key in chunk.keys:  # a second version: next chunk
                        if not self._flush(index, chunk, number - 1):
                            return False
                        chunk = _Chunk()
                    chunk.items.append((number, item))
                    if key is not None:
                        chunk.keys.add(key)
                    chunk.chars += len(line)
                if len(chunk.items) >= self.chunk_lines or chunk.chars >= IMPORT_CHUNK_CHARS:
                    if not self._flush(index, chunk, number):
                        return False
                    chunk = _Chunk()
        if last > self.checkpoint.lines[index] or chunk.items:
            return self._flush(index, chunk, last)
        return True

    def _flush(self, index: int, chunk: _Chunk, last: int) -> bool:
        """Commit the chunk's lines with the checkpoint after `last`; False when cancelled."""
        if self.keeper.lost:
            raise LeaseLostError
        if self.jobs.stopping.is_set():
            raise StoppingError
        if self._cancelled():
            return False
        entries = [(n, e) for n, e in chunk.items if isinstance(e, Entry)]
        if not entries:
            self._save_only(
                index, [(n, r) for n, r in chunk.items if isinstance(r, EntryResult)], last
            )
            return True
        try:
            self._write(index, chunk.items, entries, last)
        except FhirError as exc:
            if len(entries) > 1:  # one bad line must not sink its neighbours
                self._one_by_one(index, chunk.items, last)
            else:
                items = [
                    (n, item if isinstance(item, EntryResult) else failure(exc, item.resource_type))
                    for n, item in chunk.items
                ]
                self._save_only(index, items, last)
        if self.progress is not None:
            self.progress(len(chunk.items))
        return True

    def _write(
        self,
        index: int,
        items: list[tuple[int, Entry | EntryResult]],
        entries: list[tuple[int, Entry]],
        last: int,
    ) -> None:
        """Write the entries and, in their transaction, the checkpoint covering `items`."""
        failed = [(n, r) for n, r in items if isinstance(r, EntryResult)]
        holder: list[Checkpoint] = []

        def then(uow: UnitOfWork, results: list[EntryResult]) -> None:
            written = list(zip((n for n, _ in entries), results, strict=True))
            holder[:] = [self._save(uow.session, index, [*failed, *written], last)]

        self.store.write_entries([e for _, e in entries], self.ctx, then)
        self.checkpoint = holder[0]
        self._grown(len(entries))

    def _grown(self, written: int) -> None:
        """A bulk load outgrows PostgreSQL's planner statistics: refreshed as the store doubles."""
        if planner_statistics.note_written(self.jobs.engine, written):
            log.info("bulk job: planner statistics refreshed")

    def _one_by_one(
        self, index: int, items: list[tuple[int, Entry | EntryResult]], last: int
    ) -> None:
        """Each entry in its own transaction with the checkpoint up to its line."""
        waiting: list[tuple[int, EntryResult]] = []
        for number, item in items:
            if isinstance(item, EntryResult):
                waiting.append((number, item))
                continue
            try:
                self._write(index, [*waiting], [(number, item)], number)
            except FhirError as exc:
                waiting.append((number, failure(exc, item.resource_type)))
                continue
            waiting = []
        self._save_only(index, waiting, last)

    def _save_only(self, index: int, items: list[tuple[int, EntryResult]], last: int) -> None:
        """A checkpoint with no resource written: lines that failed, blank lines."""
        with writing(self.jobs.engine) as session:
            self.checkpoint = self._save(session, index, items, last)

    def _save(
        self, session: Session, index: int, items: list[tuple[int, EntryResult]], last: int
    ) -> Checkpoint:
        counts, errors = _tally(sorted(items, key=lambda item: item[0]))
        after = self.checkpoint.after(index, last, counts)
        rows = [(index, n, status, text) for n, status, text in errors]
        if not bulk_jobs.save_checkpoint(session, self.job_id, self.runner, after.to_json(), rows):
            raise LeaseLostError
        return after
