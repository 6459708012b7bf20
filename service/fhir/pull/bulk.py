"""One pull from a hospital source: Bulk Data `$export` (Group level), or per-type searches.

The NDJSON files are streamed line by line into the push path's `$import` (`import_lines`), so a
pulled resource is validated, stored and derived exactly like a pushed one, and a bad line is
reported with its file and line number while its neighbours go in. The manifest's
`transactionTime` is remembered once the pull completes; the next pull asks `_since` it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson
from sqlalchemy import Engine

from service.fhir.interactions import FhirService
from service.fhir.pull.client import HospitalClient, PullError, RefusedUrlError, origin, retry_after
from service.infra.clock import fhir_instant, utcnow
from service.infra.db import reading, writing
from service.repositories import source_pulls

NO_EXPORT = {404, 405, 501}  # a kick-off answer meaning "no $export here": search instead
SEARCH_PAGE_IDS = 50  # patient ids per `Patient?_id=` search
# the search parameter that names a resource's patient, where it is not `patient`
_PATIENT_PARAM = {"AdverseEvent": "subject", "Patient": "_id"}


@dataclass(frozen=True, slots=True)
class LineError:
    """A line (or search entry) that was not ingested: where, the HTTP status, the issue."""

    file: str
    line: int
    status: int
    code: str
    diagnostics: str


@dataclass(slots=True)
class PullReport:
    """What a pull did, as it goes and at its end."""

    source_id: str
    mode: str = "bulk"  # or "search" (no $export at the source)
    phase: str = "starting"
    since: str | None = None
    transaction_time: str | None = None
    files_total: int = 0
    files_done: int = 0
    changes: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    line_errors: list[LineError] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    server_error_files: int = 0

    def as_record(self) -> dict[str, Any]:
        """What a job row keeps: counts and locations, no content of the resources."""
        return {
            "mode": self.mode,
            "phase": self.phase,
            "since": self.since,
            "transaction_time": self.transaction_time,
            "files_total": self.files_total,
            "files_done": self.files_done,
            "changes": dict(self.changes),
            "by_type": dict(self.by_type),
            "line_errors": [
                {"file": e.file, "line": e.line, "status": e.status, "code": e.code}
                for e in self.line_errors
            ],
            "refused": list(self.refused),
            "server_error_files": self.server_error_files,
        }


class Puller:
    """Pull one source into the store, then remember its `transactionTime`."""

    def __init__(
        self,
        engine: Engine,
        store: FhirService,
        client: HospitalClient,
        *,
        poll_limit: int = 720,
        say: Callable[[str, PullReport], None] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.client = client
        self.source = client.source
        self.poll_limit = poll_limit
        self._say = say or (lambda _message, _report: None)
        self.report = PullReport(self.source.id)

    def say(self, message: str) -> None:
        """A progress line (for the CLI) and a progress snapshot (for the job row)."""
        self._say(message, self.report)

    def run(self, *, full: bool = False) -> PullReport:
        """The whole pull; a PullError stops it, leaving `transactionTime` where it was."""
        with reading(self.engine) as session:
            since = None if full else source_pulls.transaction_time(session, self.source.id)
        self.report.since = since
        started = fhir_instant(utcnow())
        transaction_time = self._bulk(since) if self.source.group_id is not None else None
        if transaction_time is None:
            self.report.mode = "search"
            self._search(since)
            transaction_time = started
        self.report.transaction_time = transaction_time
        with writing(self.engine) as session:
            source_pulls.set_transaction_time(session, self.source.id, transaction_time, utcnow())
        self.report.phase = "done"
        self.say(f"done: {self._summary()}; next pull asks _since={transaction_time}")
        return self.report

    def _summary(self) -> str:
        tally = Counter(self.report.changes)
        if self.report.line_errors:
            tally["rejected"] = len(self.report.line_errors)
        if self.report.refused:
            tally["refused file(s)"] = len(self.report.refused)
        return ", ".join(f"{n} {k}" for k, n in sorted(tally.items())) or "nothing"

    # -- Bulk Data -------------------------------------------------------------------------------

    def _bulk(self, since: str | None) -> str | None:
        """Kick-off, poll, download; the manifest's transactionTime, or None: no $export here."""
        assert self.source.group_id is not None
        url = f"{self.source.base_url}/Group/{quote(self.source.group_id, safe='')}/$export"
        params = [("_type", ",".join(self.source.types))]
        if since is not None:
            params.append(("_since", since))
        self.report.phase = "kick-off"
        headers = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
        with self.client.stream(
            "GET", url, "the $export kick-off", params=params, headers=headers
        ) as answer:
            answer.read()
        if answer.status_code in NO_EXPORT:
            self.say(f"no $export at the source (HTTP {answer.status_code}): searching instead")
            return None
        if answer.status_code != 202:
            raise PullError(f"the $export kick-off answered HTTP {answer.status_code}")
        status_url = answer.headers.get("content-location")
        if not status_url:
            raise PullError("the $export kick-off answered 202 without a Content-Location")
        status_url = self.client.check(status_url, "the $export status URL")
        self.say("export accepted; waiting for the source to prepare the files")
        manifest = self._poll(status_url)
        transaction_time = manifest.get("transactionTime")
        outputs = manifest.get("output")
        if not isinstance(transaction_time, str) or not isinstance(outputs, list):
            raise PullError("the $export manifest has no transactionTime or output list")
        errors = manifest.get("error")
        self.report.server_error_files = len(errors) if isinstance(errors, list) else 0
        self.report.files_total = len(outputs)
        self.report.phase = "downloading"
        self.say(f"export ready: {len(outputs)} file(s) as of {transaction_time}")
        auth = manifest.get("requiresAccessToken") is not False
        for number, item in enumerate(outputs, start=1):
            self._download(number, item, auth)
            self.report.files_done += 1
        return transaction_time

    def _poll(self, status_url: str) -> dict[str, Any]:
        """Poll the status URL, waiting as Retry-After asks (capped), until the manifest."""
        self.report.phase = "polling"
        for _ in range(self.poll_limit):
            headers = {"Accept": "application/json"}
            with self.client.stream("GET", status_url, "the $export status", headers=headers) as r:
                r.read()
            if r.status_code == 202:
                asked = retry_after(r.headers.get("retry-after"), utcnow())
                wait = 1.0 if asked is None else asked
                if r.headers.get("x-progress"):
                    self.say(f"source busy: {r.headers['x-progress'][:100]}")
                self.client.policy.sleep(min(wait, self.client.policy.max_wait_seconds))
                continue
            if r.status_code != 200:
                raise PullError(f"the $export status answered HTTP {r.status_code}")
            try:
                manifest = r.json()
            except ValueError:
                raise PullError("the $export manifest is not JSON") from None
            if not isinstance(manifest, dict):
                raise PullError("the $export manifest is not a JSON object")
            return manifest
        raise PullError(f"the $export was still not ready after {self.poll_limit} polls")

    def _download(self, number: int, item: object, auth: bool) -> None:
        """Stream one NDJSON file into the store; a file on a host we may not reach is refused."""
        url = item.get("url") if isinstance(item, dict) else None
        rtype = item.get("type") if isinstance(item, dict) else None
        name = f"file {number} ({rtype})" if isinstance(rtype, str) else f"file {number}"
        if not isinstance(url, str):
            self.report.refused.append(f"{name}: the manifest gives no url")
            return
        if not self.client.allowed(url):
            message = f"{name}: refused, {origin(url) or 'an invalid URL'} is outside the source"
            self.report.refused.append(message)
            self.say(message)
            return
        tail = urlsplit(url).path.rsplit("/", 1)[-1]
        label = f"{name} {tail}" if tail else name
        self._ingest(label, self._lines(url, label, auth))
        self.say(f"{label}: ingested ({self._summary()})")

    def _lines(self, url: str, label: str, auth: bool) -> Iterator[str]:
        """The file's lines, streamed; a connection lost mid-file resumes after the last line."""
        consumed = 0
        failures = 0
        headers = {"Accept": "application/fhir+ndjson"}
        while True:
            try:
                with self.client.stream("GET", url, label, auth=auth, headers=headers) as r:
                    if r.status_code != 200:
                        raise PullError(f"{label} answered HTTP {r.status_code}")
                    for seen, raw in enumerate(_split_lines(r.iter_bytes()), start=1):
                        if seen <= consumed:
                            continue  # already ingested before the connection was lost
                        consumed += 1
                        yield self._decoded(label, seen, raw)
                return
            except (httpx.TransportError, httpx.StreamError) as exc:
                failures += 1
                if failures > self.client.policy.max_retries:
                    raise PullError(
                        f"gave up on {label} after {failures} broken download(s): "
                        f"{type(exc).__name__}"
                    ) from None
                self.client.policy.sleep(min(2.0**failures, self.client.policy.max_wait_seconds))

    def _decoded(self, label: str, line: int, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.report.line_errors.append(
                LineError(label, line, 400, "invalid", f"line {line}: not UTF-8")
            )
            return ""  # skipped by $import as blank, keeping the numbering of the lines after it

    def _ingest(self, label: str, lines: Iterable[str]) -> None:
        """The push path's NDJSON ingest; each line's outcome tallied or reported."""
        client = f"source:{self.source.id}"[:64]
        ctx = self.store.context(f"pull {self.source.id}", client=client)
        for outcome in self.store.import_lines(lines, ctx=ctx):
            result = outcome.result
            if result.status < 300:
                self.report.changes[result.change] += 1
                self.report.by_type[result.resource_type or "?"] += 1
                continue
            issue = result.issues[0] if result.issues else None
            self.report.line_errors.append(
                LineError(
                    label,
                    outcome.line,
                    result.status,
                    issue.code if issue else "exception",
                    "; ".join(i.diagnostics for i in result.issues),
                )
            )

    # -- per-type searches -----------------------------------------------------------------------

    def _search(self, since: str | None) -> None:
        """Per-type searches for the source's patients, following same-origin `next` links."""
        self.report.phase = "searching"
        patients = list(self.source.patients) or self._group_members()
        self.say(f"searching {len(self.source.types)} type(s) for {len(patients)} patient(s)")
        extra = [("_lastUpdated", f"ge{since}")] if since is not None else []
        for rtype in self.source.types:
            param = _PATIENT_PARAM.get(rtype, "patient")
            if rtype == "Patient":
                batches = [
                    ",".join(patients[i : i + SEARCH_PAGE_IDS])
                    for i in range(0, len(patients), SEARCH_PAGE_IDS)
                ]
            else:
                batches = [f"Patient/{p}" for p in patients]
            for value in batches:
                url = f"{self.source.base_url}/{rtype}"
                self._follow(rtype, url, [(param, value), *extra])
        self.say(f"searched: {self._summary()}")

    def _group_members(self) -> list[str]:
        assert self.source.group_id is not None
        url = f"{self.source.base_url}/Group/{quote(self.source.group_id, safe='')}"
        group = self.client.send_json("GET", url, "the Group", headers=_FHIR_JSON)
        members = group.get("member") if isinstance(group, dict) else None
        found: list[str] = []
        for member in members if isinstance(members, list) else []:
            ref = (
                (member.get("entity") or {}).get("reference") if isinstance(member, dict) else None
            )
            if isinstance(ref, str) and ref.startswith("Patient/"):
                found.append(ref.removeprefix("Patient/"))
        return found

    def _follow(self, rtype: str, url: str, params: list[tuple[str, str]] | None) -> None:
        """One search and its pages; a `next` link elsewhere than the source is refused."""
        page = 0
        next_url: str | None = url
        while next_url is not None:
            page += 1
            bundle = self.client.send_json(
                "GET", next_url, f"a {rtype} search", params=params, headers=_FHIR_JSON
            )
            params = None  # a next link carries its own query
            entries = bundle.get("entry") if isinstance(bundle, dict) else None
            lines = [
                orjson.dumps(e["resource"]).decode()
                for e in (entries if isinstance(entries, list) else [])
                if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)
                and (e.get("search") or {}).get("mode", "match") == "match"
            ]
            self._ingest(f"{rtype} search page {page}", lines)
            next_url = _next_link(bundle)
            if next_url is not None and (
                origin(next_url) != origin(self.source.base_url)
                or not self.client.allowed(next_url)
            ):
                message = f"{rtype} search: refused a next link to {origin(next_url)}"
                self.report.refused.append(message)
                self.say(message)
                next_url = None


_FHIR_JSON = {"Accept": "application/fhir+json"}


def _next_link(bundle: object) -> str | None:
    links = bundle.get("link") if isinstance(bundle, dict) else None
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) else None
    return None


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """NDJSON lines split on LF only (a U+2028 inside a JSON string is not a line break)."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for line in whole:
            yield line.removesuffix(b"\r")
    if rest:
        yield rest.removesuffix(b"\r")


__all__ = ["LineError", "PullError", "PullReport", "Puller", "RefusedUrlError"]
