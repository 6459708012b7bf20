"""All SQL for deviations, their history, webhook subscriptions and the outbox. Never commits."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlmodel import Session

from service.fhir_time import iso_utc
from service.models import DeviationHistoryRow, DeviationRow, OutboxRow, SubscriptionRow

_DEV = DeviationRow.__table__  # type: ignore[attr-defined]
_HIST = DeviationHistoryRow.__table__  # type: ignore[attr-defined]
_SUB = SubscriptionRow.__table__  # type: ignore[attr-defined]
_OUT = OutboxRow.__table__  # type: ignore[attr-defined]
KEY_LENGTH = 80  # webhook_outbox.idempotency_key


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


# -- deviations -------------------------------------------------------------------------------------


def deviations_of(session: Session, study_id: str, patient_id: str) -> dict[str, Any]:
    """Every deviation ever raised for one subject, by id."""
    c = _DEV.c
    rows = session.execute(select(_DEV).where(c.study_id == study_id, c.patient_id == patient_id))
    return {r.id: r for r in rows}


def insert_deviation(session: Session, values: dict[str, Any]) -> None:
    """A newly detected deviation."""
    session.execute(insert(_DEV), [values])


def update_deviation(
    session: Session, deviation_id: str, values: dict[str, Any], expected_version: int | None = None
) -> bool:
    """Change a deviation and bump its version; False when the version did not match."""
    c = _DEV.c
    query = update(_DEV).where(c.id == deviation_id)
    if expected_version is not None:
        query = query.where(c.version == expected_version)
    result = session.execute(query.values({**values, "version": c.version + 1}))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def add_history(
    session: Session, deviation_id: str, at: dt.datetime, actor: str, action: str, detail: Any
) -> None:
    """Append one change to a deviation's history."""
    session.execute(
        insert(_HIST),
        [
            {
                "deviation_id": deviation_id,
                "at": at,
                "actor": actor,
                "action": action,
                "detail": _dumps(detail),
            }
        ],
    )


def history_of(session: Session, deviation_id: str) -> list[Any]:
    """A deviation's changes, oldest first."""
    c = _HIST.c
    return list(session.execute(select(_HIST).where(c.deviation_id == deviation_id).order_by(c.pk)))


def get_deviation(session: Session, study_id: str, deviation_id: str) -> Any | None:
    """One deviation of a study."""
    c = _DEV.c
    return session.execute(select(_DEV).where(c.study_id == study_id, c.id == deviation_id)).first()


def list_deviations(
    session: Session,
    study_id: str,
    *,
    after: str | None,
    limit: int,
    subject_id: str | None = None,
    rule: str | None = None,
    severity: str | None = None,
    status: str | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
) -> list[Any]:
    """A filtered page of deviations in id order (cursor = the last id seen)."""
    c = _DEV.c
    query = select(_DEV).where(c.study_id == study_id)
    for column, value in (
        (c.subject_id, subject_id),
        (c.rule, rule),
        (c.severity, severity),
        (c.status, status),
    ):
        if value is not None:
            query = query.where(column == value)
    if date_from is not None:
        query = query.where(c.occurred_on >= date_from)
    if date_to is not None:
        query = query.where(c.occurred_on <= date_to)
    if after is not None:
        query = query.where(c.id > after)
    return list(session.execute(query.order_by(c.id).limit(limit)))


# -- subscriptions ------------------------------------------------------------------------------------


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


# -- outbox ---------------------------------------------------------------------------------------------


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
            "payload": _dumps({**payload, "id": event_id, "type": event_type}),
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


def outbox_state(session: Session) -> list[Any]:
    """Every notification (operators and tests)."""
    return list(session.execute(select(_OUT).order_by(_OUT.c.pk)))


def subscriptions_json(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Subscriptions as the API shows them (never the secret)."""
    return [
        {
            "id": r.id,
            "url": r.url,
            "events": json.loads(r.events),
            "created_at": iso_utc(r.created_at),
        }
        for r in rows
    ]
