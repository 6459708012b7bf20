"""Use cases of the deviation log: list, read with history, acknowledge/comment; subscriptions."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

from fhir_mapping.tokens import ENTITY_TAG, ascii_int
from service.audit.events import AuditNote, audit_event
from service.errors import ApiError
from service.infra.clock import utcnow
from service.infra.db import writing
from service.notifications import webhooks
from service.protocol.schema import StudyProtocol
from service.reads.access import capability, read
from service.reads.paging import decode_cursor, encode_cursor
from service.reads.results import DeviationDetail, DeviationPage, HistoryEntry, StudyRef
from service.repositories import deviation_records, webhook_outbox
from service.repositories.audit_records import insert_records
from service.repositories.deviation_records import deviation_json
from service.repositories.webhook_outbox import Subscription

T = TypeVar("T")


def etag(version: int) -> str:
    """The deviation's version as an HTTP entity tag."""
    return f'W/"{version}"'


def parse_if_match(value: str | None) -> frozenset[int] | None:
    """The versions an If-Match names (None for `*`: any); missing → 428, malformed → 400."""
    if value is None:
        raise ApiError(
            428, "precondition_required", "send If-Match with the deviation's ETag to change it"
        )
    if value.strip() == "*":
        return None
    versions: set[int] = set()
    for member in value.split(","):
        tag = ENTITY_TAG.fullmatch(member.strip())
        version = ascii_int(tag[1]) if tag else None
        if version is None:
            shown = value if len(value) <= 100 else value[:100] + "…"  # never echo a huge header
            raise ApiError(
                400,
                "invalid_if_match",
                f'If-Match {shown!r} is not an ETag of ours (W/"<version>"), a list of them, or *',
            )
        versions.add(version)
    return frozenset(versions)


def check_filters(rules: tuple[str, ...], filters: dict[str, Any]) -> None:
    """422 for a filter that could only ever select nothing: an unknown rule, dates out of order."""
    problems: list[dict[str, object]] = []
    if filters.get("rule") is not None and filters["rule"] not in rules:
        problems.append({"loc": ["query", "rule"], "msg": f"must be one of {', '.join(rules)}"})
    first, last = filters.get("date_from"), filters.get("date_to")
    if first is not None and last is not None and first > last:
        problems.append({"loc": ["query", "date_from"], "msg": "must not be after date_to"})
    if problems:
        raise ApiError(422, "invalid_request", "the request is not valid", problems)


def _history(row: Any) -> HistoryEntry:
    return HistoryEntry(row.at, row.actor, row.action, json.loads(row.detail))


@dataclass(frozen=True)
class DeviationLog:
    """The deviation log and webhook subscriptions over one engine."""

    engine: Engine
    protocols: dict[str, StudyProtocol]
    allow_private_webhooks: bool = False

    def _study(self, study_id: str) -> tuple[StudyProtocol, tuple[str, ...]]:
        """The study and its deviation codes; 404 for a kind that keeps no deviation log."""
        protocol, rules_of = capability(self.protocols, study_id, "deviation_rules", "deviations")
        return protocol, rules_of(protocol)

    def _read(self, work: Callable[[Session], T]) -> T:
        return read(self.engine, work)

    def _write(self, work: Callable[[Session], T]) -> T:
        with writing(self.engine) as session:
            return work(session)

    def page(
        self,
        study_id: str,
        *,
        cursor: str | None,
        limit: int,
        filters: dict[str, Any],
    ) -> DeviationPage:
        """A filtered page of deviations (cursor paging by id)."""
        protocol, rules = self._study(study_id)
        check_filters(rules, filters)
        after = decode_cursor(cursor, prefix="DEV-") if cursor else None
        rows = self._read(
            lambda s: deviation_records.list_deviations(
                s, study_id, after=after, limit=limit + 1, **filters
            )
        )
        page = rows[:limit]
        return DeviationPage(
            StudyRef.of(protocol),
            [deviation_json(r) for r in page],
            encode_cursor(page[-1].id) if len(rows) > limit and page else None,
        )

    def get(self, study_id: str, deviation_id: str) -> DeviationDetail:
        """One deviation with its full history."""
        self._study(study_id)

        def work(session: Session) -> tuple[Any, list[Any]]:
            row = deviation_records.get_deviation(session, study_id, deviation_id)
            return row, deviation_records.history_of(session, deviation_id) if row else []

        row, history = self._read(work)
        if row is None:
            raise ApiError(
                404, "deviation_not_found", f"no deviation {deviation_id!r} in {study_id}"
            )
        return DeviationDetail(deviation_json(row), row.version, [_history(r) for r in history])

    def annotate(
        self,
        study_id: str,
        deviation_id: str,
        *,
        if_match: str | None,
        by: str,
        status: str | None,
        comment: str | None,
        audit: AuditNote | None = None,
    ) -> DeviationDetail:
        """Acknowledge and/or comment, only if the caller saw the current version.

        The request's AuditEvent, when it has one, is stored in the same transaction.
        """
        self._study(study_id)
        expected = parse_if_match(if_match)
        if status is None and comment is None:
            raise ApiError(400, "nothing_to_change", "send status 'acknowledged' and/or a comment")

        def work(session: Session) -> None:
            row = deviation_records.get_deviation(session, study_id, deviation_id)
            if row is None:
                raise ApiError(
                    404, "deviation_not_found", f"no deviation {deviation_id!r} in {study_id}"
                )
            if expected is not None and row.version not in expected:
                named = ", ".join(str(v) for v in sorted(expected))
                raise ApiError(
                    412,
                    "version_mismatch",
                    f"the deviation is at version {row.version}, not {named}; re-read it",
                    [{"current_etag": etag(row.version)}],
                )
            now = utcnow()
            values: dict[str, Any] = {"updated_at": now}
            if status == "acknowledged":
                if row.status == "resolved":
                    raise ApiError(
                        409, "already_resolved", "a resolved deviation cannot be acknowledged"
                    )
                if row.status == "acknowledged":  # keep who acknowledged first, and one entry
                    raise ApiError(
                        409,
                        "already_acknowledged",
                        f"the deviation was acknowledged by {row.acknowledged_by}; "
                        "send a comment alone to add to it",
                    )
                values |= {"status": "acknowledged", "acknowledged_by": by, "acknowledged_at": now}
            if not deviation_records.update_deviation(session, deviation_id, values, row.version):
                raise ApiError(
                    412, "version_mismatch", "the deviation changed meanwhile; re-read it"
                )
            if status == "acknowledged":
                deviation_records.add_history(session, deviation_id, now, by, "acknowledged", {})
            if comment is not None:
                deviation_records.add_history(
                    session, deviation_id, now, by, "commented", {"comment": comment}
                )
            if audit is not None:
                event = audit_event(
                    audit,
                    action=audit.action or "U",
                    subtype=audit.subtype or "PATCH",
                    status=None,
                    recorded=now,
                    entities=audit.entities,
                )
                insert_records(session, [event])

        self._write(work)
        if audit is not None:
            audit.mark_recorded()
        return self.get(study_id, deviation_id)

    # -- subscriptions ------------------------------------------------------------------------------

    def subscribe(self, *, url: str, events: list[str], secret: str | None) -> Subscription:
        """Register a webhook receiver."""
        return self._write(
            lambda s: webhooks.create(
                s,
                url=url,
                events=events,
                secret=secret,
                allow_private=self.allow_private_webhooks,
            )
        )

    def subscriptions(self) -> list[Subscription]:
        """Every subscription (secrets are never shown again)."""
        rows = self._read(webhook_outbox.list_subscriptions)
        return [webhook_outbox.subscription_of(r) for r in rows]

    def unsubscribe(self, subscription_id: str) -> None:
        """Remove a subscription and its pending notifications."""
        if not self._write(lambda s: webhook_outbox.delete_subscription(s, subscription_id)):
            raise ApiError(404, "subscription_not_found", f"no subscription {subscription_id!r}")
