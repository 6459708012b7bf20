"""All SQL for webhook subscriptions and the transactional outbox. Nothing here commits."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlmodel import Session

from service.infra.tables import OutboxRow, SubscriptionRow
from service.repositories.sql import compact_json

_SUB = SubscriptionRow.__table__  # type: ignore[attr-defined]
_OUT = OutboxRow.__table__  # type: ignore[attr-defined]
KEY_LENGTH = 80  # webhook_outbox.idempotency_key


def create_subscription(session: Session, values: dict[str, Any]) -> None:
    """A new webhook receiver."""
    session.execute(insert(_SUB), [values])


def list_subscriptions(session: Session) -> list[Any]:
    """Every subscription, oldest first."""
    return list(session.execute(select(_SUB).order_by(_SUB.c.created_at, _SUB.c.id)))


def get_subscription(session: Session, subscription_id: str) -> Any | None:
    """One subscription."""
    return session.execute(select(_SUB).where(_SUB.c.id == subscription_id)).first()


def delete_subscription(session: Session, subscription_id: str) -> bool:
    """Remove a subscription and its undelivered notifications."""
    session.execute(
        delete(_OUT).where(_OUT.c.subscription_id == subscription_id, _OUT.c.delivered_at.is_(None))
    )
    result = session.execute(delete(_SUB).where(_SUB.c.id == subscription_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _idempotency_key(event_id: str, subscription_id: str) -> str:
    """Unique per event and subscription, within the column's 80 characters.

    Cutting a longer key would drop the subscription id (eligibility event ids are ~70
    characters), so two subscriptions could get the same key and the write would fail.
    """
    key = f"{event_id}.{subscription_id}"
    if len(key) <= KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{event_id[: KEY_LENGTH - len(digest) - 1]}.{digest}"


def enqueue(
    session: Session, event_type: str, event_id: str, payload: dict[str, Any], now: dt.datetime
) -> int:
    """Write one notification per interested subscription, in the caller's transaction."""
    rows = [
        {
            "subscription_id": sub.id,
            "event_type": event_type,
            "idempotency_key": _idempotency_key(event_id, sub.id),
            "payload": compact_json({**payload, "id": event_id, "type": event_type}),
            "created_at": now,
            "attempts": 0,
            "next_attempt_at": now,
            "failed": False,
        }
        for sub in list_subscriptions(session)
        if event_type in json.loads(sub.events)
    ]
    if rows:
        session.execute(insert(_OUT), rows)
    return len(rows)


def due(session: Session, now: dt.datetime, limit: int, *, lock: bool) -> list[Any]:
    """Undelivered notifications whose time has come (locked, skipping ones another worker holds)."""
    c = _OUT.c
    query = (
        select(_OUT, _SUB.c.url, _SUB.c.secret)
        .join(_SUB, _SUB.c.id == c.subscription_id)
        .where(c.delivered_at.is_(None), c.failed.is_(False), c.next_attempt_at <= now)
        .order_by(c.pk)
        .limit(limit)
    )
    if lock:
        query = query.with_for_update(skip_locked=True, of=_OUT)
    return list(session.execute(query))


def lease(session: Session, pk: int, until: dt.datetime) -> None:
    """Claim a notification for one delivery attempt (others skip it until the lease ends)."""
    session.execute(update(_OUT).where(_OUT.c.pk == pk).values(next_attempt_at=until))


def mark_delivered(session: Session, pk: int, now: dt.datetime) -> None:
    """A receiver answered 2xx."""
    session.execute(
        update(_OUT).where(_OUT.c.pk == pk).values(delivered_at=now, attempts=_OUT.c.attempts + 1)
    )


def mark_retry(
    session: Session, pk: int, *, next_at: dt.datetime, error: str, give_up: bool
) -> None:
    """A failed attempt: try again later, or stop after the last attempt."""
    session.execute(
        update(_OUT)
        .where(_OUT.c.pk == pk)
        .values(
            attempts=_OUT.c.attempts + 1,
            next_attempt_at=next_at,
            last_error=error[:1000],
            failed=give_up,
        )
    )


@dataclass(frozen=True, slots=True)
class Backlog:
    """Notifications still to deliver, when the oldest was queued, and how many were given up."""

    pending: int
    oldest_created_at: dt.datetime | None
    failed: int


def backlog(session: Session) -> Backlog:
    """The outbox at a glance, for metrics: two aggregate queries over the `due` index."""
    c = _OUT.c
    pending, oldest = session.execute(
        select(func.count(), func.min(c.created_at)).where(
            c.delivered_at.is_(None), c.failed.is_(False)
        )
    ).one()
    failed = session.execute(
        select(func.count()).where(c.delivered_at.is_(None), c.failed.is_(True))
    ).scalar_one()
    return Backlog(int(pending), oldest, int(failed))


def outbox_state(session: Session) -> list[Any]:
    """Every notification (operators and tests)."""
    return list(session.execute(select(_OUT).order_by(_OUT.c.pk)))


@dataclass(frozen=True, slots=True)
class Subscription:
    """A webhook subscription; the secret only when just created (it is never shown again)."""

    id: str
    url: str
    events: tuple[str, ...]
    created_at: dt.datetime
    secret: str | None = None


def subscription_of(row: Any) -> Subscription:
    """The typed subscription of a row (without its secret)."""
    return Subscription(row.id, row.url, tuple(json.loads(row.events)), row.created_at)
