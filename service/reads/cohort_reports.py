"""Study-level outcomes and figures, served from the snapshots the cohort refresher stores.

A read never computes a cohort: it answers the last snapshot, says whether a change since has
made it stale, and, before the first snapshot exists, answers 503 `cohort_not_ready`. Only
`fresh=True` (an admin's request) waits, bounded, for a snapshot reflecting every change so far.
Figures are drawn from the snapshot's figure data on their first read and kept per process
(service.reads.figure_cache); their ETag follows the snapshot.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session

from service.errors import ApiError, NotReadyError
from service.protocol.schema import StudyProtocol
from service.reads.access import find_protocol, read
from service.reads.cohort_refresher import CohortRefresher
from service.reads.figure_cache import FigureCache
from service.reads.paging import decode_cursor, encode_cursor
from service.reads.results import CohortDocument, CohortOutcomes, ListingPage, StudyRef
from service.repositories import cohort_snapshots
from service.repositories.cohort_snapshots import SnapshotHead
from service.stats.figures import MEDIA_TYPES, FigureData, Format, RenderedFigure
from service.studies.document import document_from_json, figures_of
from service.studies.kind import ListingName
from service.studies.registry import kind_of

log = logging.getLogger(__name__)


def figure_etag(figure: cohort_snapshots.Figure, fmt: str) -> str:
    """A figure's validator: the snapshot its data belongs to, the figure and the format."""
    return f'"{figure.etag}-{figure.name}.{fmt}"'


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    """A study's snapshot at a glance, for metrics: its time, staleness and waiting changes."""

    study_id: str
    computed_at: dt.datetime | None  # None: no snapshot yet
    compute_seconds: float | None
    stale: bool
    pending_changes: int


def outcomes_etag(head: SnapshotHead, stale: bool) -> str:
    """The answer's validator: the snapshot's digest, and whether it is stale (the body says)."""
    return f'"{head.digest}-{"stale" if stale else "fresh"}"'


class CohortReports:
    """Cohort outcomes and figures per study, read from the stored snapshots."""

    def __init__(
        self,
        engine: Engine,
        protocols: dict[str, StudyProtocol],
        refresher: CohortRefresher,
        *,
        fresh_timeout_seconds: float = 60.0,
        figures: FigureCache | None = None,
    ) -> None:
        self.engine = engine
        self.protocols = protocols
        self.refresher = refresher
        self.fresh_timeout = fresh_timeout_seconds
        self.figures = figures if figures is not None else FigureCache()

    @property
    def retry_after(self) -> int:
        """When to ask again for a snapshot that is being computed: a debounce and a poll."""
        wait = self.refresher.debounce + (self.refresher.interval or 0.0)
        return max(1, math.ceil(wait))

    def outcomes(
        self, study_id: str, *, fresh: bool = False, unchanged: Callable[[str], bool] | None = None
    ) -> CohortOutcomes:
        """The study's last snapshot; its body is None when `unchanged(etag)` (a 304)."""
        protocol = self._protocol(study_id, fresh)
        found = read(self.engine, lambda s: self._read(s, protocol, unchanged))
        if found is None:
            raise self._not_ready(study_id)
        return found

    def listing(
        self,
        study_id: str,
        *,
        cursor: str | None,
        limit: int,
        fresh: bool = False,
        unchanged: Callable[[str], bool] | None = None,
        name: ListingName = "subjects",
    ) -> ListingPage:
        """A page of one of the last snapshot's listings (`name`: the per-subject analysis rows,
        the swimmer plot's, or the subjects left out), in subject-id order; its rows are None when
        `unchanged(etag)` (a 304: the page of a snapshot never changes). 404 for a kind that keeps
        no such listing."""
        kind = kind_of(find_protocol(self.protocols, study_id))
        if name not in kind.listings:
            raise ApiError(
                404,
                "not_applicable",
                f"study {study_id} is a {kind.title}: it has no {name} listing",
            )
        protocol = self._protocol(study_id, fresh)
        after = decode_cursor(cursor) if cursor is not None else None

        def load(session: Session) -> ListingPage | None:
            for _ in range(3):  # a snapshot replaced between the reads: read the new one
                head, stale = self._head(session, protocol.id)
                if head is None:
                    return None
                etag = outcomes_etag(head, stale)
                rows: list[cohort_snapshots.ListingRow] | None = None
                if unchanged is None or not unchanged(etag):
                    rows = cohort_snapshots.listing_rows(
                        session, protocol.id, head.digest, after, limit + 1, listing=name
                    )
                    again = cohort_snapshots.snapshot_head(session, protocol.id)
                    if again is None or again.digest != head.digest:
                        continue
                page = (rows or [])[:limit]
                more = rows is not None and len(rows) > limit
                return ListingPage(
                    name=name,
                    study=StudyRef(protocol.id, head.protocol_version),
                    computed_at=head.computed_at,
                    data_as_of=head.data_as_of,
                    stale=stale,
                    etag=etag,
                    rows=[r.body for r in page] if rows is not None else None,
                    next_cursor=encode_cursor(page[-1].subject_id) if more and page else None,
                )
            return None

        found = read(self.engine, load)
        if found is None:
            raise self._not_ready(study_id)
        return found

    def document(
        self,
        study_id: str,
        *,
        fresh: bool = False,
        unchanged: Callable[[str], bool] | None = None,
        figure_format: str = "svg",
    ) -> CohortDocument:
        """The last snapshot's report document and every figure it shows in `figure_format`
        (SVG for the page, PNG for the PDF; 404 for a kind without a document); the document is
        None when `unchanged(etag)` (a 304)."""
        protocol = self._protocol(study_id, fresh)
        stored: dict[str, cohort_snapshots.Figure] = {}

        def load(session: Session) -> CohortDocument | None:
            for _ in range(3):
                head, stale = self._head(session, protocol.id)
                if head is None:
                    return None
                etag = outcomes_etag(head, stale)
                found, text = cohort_snapshots.snapshot_document(session, protocol.id, head.digest)
                if not found:
                    continue
                if text is None:
                    raise ApiError(
                        404, "not_applicable", f"study {protocol.id} has no report document"
                    )
                document = None
                if unchanged is None or not unchanged(etag):
                    document = document_from_json(json.loads(text))
                    stored.clear()
                    stored.update(
                        cohort_snapshots.figures(
                            session,
                            protocol.id,
                            figures_of(document.sections),
                            cohort_snapshots.FIGURE_DATA,
                        )
                    )
                return CohortDocument(
                    study=StudyRef(protocol.id, head.protocol_version),
                    kind=protocol.kind,
                    computed_at=head.computed_at,
                    data_as_of=head.data_as_of,
                    stale=stale,
                    etag=etag,
                    document=document,
                    figures={},
                )
            return None

        found = read(self.engine, load)
        if found is None:
            raise self._not_ready(study_id)
        if found.document is None:
            return found
        fmt: Format = "png" if figure_format == "png" else "svg"
        drawn: dict[str, bytes] = {}
        for name, figure in stored.items():  # drawn outside the read: no connection held meanwhile
            body = self._drawn(protocol.id, figure, fmt)
            if body is not None:
                drawn[name] = body
        return dataclasses.replace(found, figures=drawn)

    def _drawn(self, study_id: str, figure: cohort_snapshots.Figure, fmt: Format) -> bytes | None:
        """A stored figure's data drawn in `fmt` (kept per process); None if it cannot be drawn."""
        try:
            return self.figures.get(
                (study_id, figure.etag, figure.name, fmt),
                lambda: FigureData.from_json(figure.body),
                fmt,
            )
        except Exception:
            log.exception("drawing figure %s.%s of %s failed", figure.name, fmt, study_id)
            return None

    def _protocol(self, study_id: str, fresh: bool) -> StudyProtocol:
        """The study's protocol (404 if unknown), after waiting for a fresh snapshot if asked."""
        protocol = find_protocol(self.protocols, study_id)
        if fresh and self.refresher.wait_fresh(study_id, self.fresh_timeout) is None:
            raise NotReadyError(
                "cohort_not_fresh",
                f"no snapshot of {study_id} reflecting every change was computed within "
                f"{self.fresh_timeout:g} s; it is still being computed",
                self.retry_after,
            )
        return protocol

    def _not_ready(self, study_id: str) -> NotReadyError:
        return NotReadyError(
            "cohort_not_ready",
            f"the cohort outcomes of {study_id} have not been computed yet",
            self.retry_after,
        )

    def _head(self, session: Session, study_id: str) -> tuple[SnapshotHead | None, bool]:
        """The study's snapshot head and whether a change or another basis made it stale."""
        head = cohort_snapshots.snapshot_head(session, study_id)
        if head is None:
            return None, True
        stale = head.basis != self.refresher.basis[study_id] or cohort_snapshots.has_pending(
            session, study_id
        )
        return head, stale

    def _read(
        self,
        session: Session,
        protocol: StudyProtocol,
        unchanged: Callable[[str], bool] | None,
    ) -> CohortOutcomes | None:
        study_id = protocol.id
        for _ in range(3):  # a snapshot replaced between the two reads: read the new one
            head, stale = self._head(session, study_id)
            if head is None:
                return None
            etag = outcomes_etag(head, stale)
            body = None
            if unchanged is None or not unchanged(etag):
                body = cohort_snapshots.snapshot_body(session, study_id, head.digest)
                if body is None:
                    continue
            return CohortOutcomes(
                study=StudyRef(study_id, head.protocol_version),
                kind=protocol.kind,
                computed_at=head.computed_at,
                data_as_of=head.data_as_of,
                stale=stale,
                plots=tuple(json.loads(head.plots)),
                etag=etag,
                body=body,
            )
        return None

    def status(self) -> list[SnapshotStatus]:
        """Every study's snapshot state (two queries, whatever the number of studies)."""

        def load(
            session: Session,
        ) -> tuple[dict[str, SnapshotHead], dict[str, cohort_snapshots.Pending]]:
            heads = {h.study_id: h for h in cohort_snapshots.snapshot_heads(session)}
            return heads, cohort_snapshots.pending(session)

        heads, pending = read(self.engine, load)
        out = []
        for study_id in sorted(self.protocols):
            head, waiting = heads.get(study_id), pending.get(study_id)
            stale = (
                head is None or waiting is not None or head.basis != self.refresher.basis[study_id]
            )
            out.append(
                SnapshotStatus(
                    study_id,
                    head.computed_at if head is not None else None,
                    head.compute_seconds if head is not None else None,
                    stale,
                    waiting.count if waiting is not None else 0,
                )
            )
        return out

    def plot(self, study_id: str, name: str, fmt: str) -> RenderedFigure:
        """One figure of the study's last snapshot, as PNG or SVG."""
        find_protocol(self.protocols, study_id)
        if fmt not in MEDIA_TYPES:
            raise ApiError(404, "plot_not_found", f"no format {fmt!r}; known: png, svg")

        def load(session: Session) -> tuple[SnapshotHead | None, cohort_snapshots.Figure | None]:
            head = cohort_snapshots.snapshot_head(session, study_id)
            if head is None:
                return None, None
            data = cohort_snapshots.FIGURE_DATA
            return head, cohort_snapshots.figure(session, study_id, name, data)

        head, figure = read(self.engine, load)
        if head is None:
            raise self._not_ready(study_id)
        names = json.loads(head.plots)
        if name not in names:
            known = ", ".join(sorted(names))
            raise ApiError(
                404, "plot_not_found", f"study {study_id} has no plot {name!r}; known: {known}"
            )
        body = None
        if figure is not None:
            body = self._drawn(study_id, figure, "png" if fmt == "png" else "svg")
        if figure is None or body is None:
            raise NotReadyError(
                "cohort_not_ready",
                f"figure {name}.{fmt} of {study_id} could not be drawn with the last snapshot",
                self.retry_after,
            )
        return RenderedFigure(body, MEDIA_TYPES[fmt], figure_etag(figure, fmt))
