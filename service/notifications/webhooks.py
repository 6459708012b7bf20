"""Webhook subscriptions and at-least-once delivery from the transactional outbox."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import Session

from service.errors import ApiError
from service.infra import metrics, migrate
from service.infra.clock import utcnow
from service.infra.db import session_scope
from service.infra.settings import Settings
from service.notifications.outbound import check_form, check_url, pinned_client
from service.privacy.evidence import EvidenceCodec, minimised
from service.repositories import webhook_outbox

log = logging.getLogger(__name__)

EVENT_TYPES = ("deviation.opened", "deviation.resolved", "eligibility.changed")
SIGNATURE_HEADER = "X-Trialbridge-Signature"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over `timestamp.body`: receivers recompute it with the shared secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


# -- subscriptions ------------------------------------------------------------------------------------


def create(
    session: Session, *, url: str, events: list[str], secret: str | None, allow_private: bool
) -> webhook_outbox.Subscription:
    """A new subscription; the secret (given or generated) is shown once, here."""
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if not events or unknown:
        raise ApiError(
            400,
            "invalid_events",
            f"events must be a non-empty list of {', '.join(EVENT_TYPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
        )
    check_url(url, allow_private=allow_private)
    sub_id = "SUB-" + uuid.uuid4().hex[:16]
    key = secret or secrets.token_urlsafe(32)
    values = {
        "id": sub_id,
        "url": url,
        "events": json.dumps(sorted(set(events))),
        "secret": key,
        "created_at": utcnow(),
    }
    webhook_outbox.create_subscription(session, values)
    row = webhook_outbox.get_subscription(session, sub_id)
    return replace(webhook_outbox.subscription_of(row), secret=key)


# -- delivery -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard to try: timeout, attempts, exponential backoff bounds."""

    timeout_seconds: float = 5.0
    max_attempts: int = 8
    backoff_base_seconds: float = 5.0
    backoff_max_seconds: float = 3600.0
    allow_private: bool = False
    # A lease outlasts its attempt by this much: no other process sends a notification in flight.
    lease_margin_seconds: float = 30.0

    def backoff(self, attempts: int) -> dt.timedelta:
        """Wait before the next try: base × 2^(attempts−1), capped."""
        seconds = min(
            self.backoff_base_seconds * 2 ** max(attempts - 1, 0), self.backoff_max_seconds
        )
        return dt.timedelta(seconds=seconds)


def policy_from(settings: Settings) -> DeliveryPolicy:
    """The delivery policy the deployment configured."""
    return DeliveryPolicy(
        timeout_seconds=settings.webhook_timeout_seconds,
        max_attempts=settings.webhook_max_attempts,
        backoff_base_seconds=settings.webhook_backoff_seconds,
        allow_private=settings.webhook_allow_private,
        lease_margin_seconds=settings.webhook_lease_margin_seconds,
    )


def _payload(row: Any, codec: EvidenceCodec) -> bytes:
    """The body to send. A notification queued by a release before evidence ids cites FHIR
    references: it is sealed now, as the API would show it (receivers never see a FHIR id)."""
    if '"reference"' not in row.payload:
        return str(row.payload).encode()
    body = json.loads(row.payload)
    deviation = body.get("deviation")
    if isinstance(deviation, dict) and isinstance(deviation.get("study_id"), str):
        study = deviation["study_id"]
        body["deviation"] = minimised(deviation, lambda cited: codec.seal(study, cited))
    return json.dumps(body, separators=(",", ":")).encode()


def _post(
    client: httpx.Client, row: Any, policy: DeliveryPolicy, codec: EvidenceCodec
) -> str | None:
    """One attempt; None on a 2xx, else the reason it failed."""
    body = _payload(row, codec)
    timestamp = str(int(time.time()))
    try:  # the client resolves the host again (DNS may have changed), checks it, dials that
        check_form(row.url)
        response = client.post(
            row.url,
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Trialbridge-Event": row.event_type,
                "X-Trialbridge-Delivery": row.idempotency_key,
                "Idempotency-Key": row.idempotency_key,
                "X-Trialbridge-Timestamp": timestamp,
                SIGNATURE_HEADER: sign(row.secret, timestamp, body),
            },
            timeout=policy.timeout_seconds,
        )
    except ApiError as exc:
        return f"url refused: {exc.message}"
    except Exception as exc:  # HTTPError, InvalidURL, …: one bad row must not lose the batch
        return f"{type(exc).__name__}: {exc}"
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


def deliver_due(
    engine: Engine,
    policy: DeliveryPolicy,
    *,
    limit: int = 100,
    now: Callable[[], dt.datetime] = utcnow,
) -> dict[str, int]:
    """Send what is due; safe from several processes at once, never holding a lock while sending.

    Each notification is claimed on its own, just before it is sent: a short transaction leases it
    for the attempt's timeout plus a margin (others skip it meanwhile), the POST happens outside
    any transaction, and a second short transaction records the result. A batch leased at once
    would expire behind a slow receiver and be sent again by another process. A crash between a
    POST and its record means one more delivery later, with the same idempotency key.
    """
    tally = {"delivered": 0, "retry": 0, "failed": 0}
    with Session(engine) as peek:  # a plain read first: an idle outbox takes no write lock
        if not webhook_outbox.due(peek, now(), 1, lock=False):
            return tally
    lease = dt.timedelta(seconds=policy.timeout_seconds + policy.lease_margin_seconds)
    codec = EvidenceCodec(engine)
    with pinned_client(
        allow_private=policy.allow_private, timeout=policy.timeout_seconds
    ) as client:
        for _ in range(limit):
            row = _claim(engine, now(), lease)
            if row is None:
                break
            error = _post(client, row, policy, codec)
            outcome = _record(engine, row, error, now(), policy)
            tally[outcome] += 1
            metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
    return tally


def outbox_backlog(engine: Engine) -> webhook_outbox.Backlog:
    """What is still to deliver and how old it is: the numbers an outbox alert watches."""
    with Session(engine) as session:
        return webhook_outbox.backlog(session)


def _claim(engine: Engine, start: dt.datetime, lease: dt.timedelta) -> Any | None:
    """The next due notification, leased to this process; None when none is due."""
    with session_scope(engine) as session:
        rows = webhook_outbox.due(session, start, 1, lock=engine.dialect.name == "postgresql")
        if not rows:
            return None
        webhook_outbox.lease(session, rows[0].pk, start + lease)
        return rows[0]


def _record(
    engine: Engine, row: Any, error: str | None, at: dt.datetime, policy: DeliveryPolicy
) -> str:
    """Store one attempt's result: delivered, or when to retry (or that it failed for good)."""
    with session_scope(engine) as session:
        if error is None:
            webhook_outbox.mark_delivered(session, row.pk, at)
            return "delivered"
        attempts = row.attempts + 1
        give_up = attempts >= policy.max_attempts
        webhook_outbox.mark_retry(
            session, row.pk, next_at=at + policy.backoff(attempts), error=error, give_up=give_up
        )
    log.warning(
        "webhook %s to %s failed (attempt %d): %s", row.idempotency_key, row.url, attempts, error
    )
    return "failed" if give_up else "retry"


class Dispatcher:
    """A background thread that delivers the outbox every few seconds."""

    def __init__(self, engine: Engine, policy: DeliveryPolicy, interval_seconds: float) -> None:
        self.engine = engine
        self.policy = policy
        self.interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)
        self._waiting_logged = False

    def start(self) -> None:
        """Begin delivering."""
        self._thread.start()

    def stop(self) -> None:
        """Finish the current batch and stop."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        schema_ready = False
        while not self._stop.wait(self.interval):
            try:
                schema_ready = schema_ready or self._schema_ready()
                if schema_ready:
                    deliver_due(self.engine, self.policy)
            except Exception:  # the database may be briefly down; the outbox keeps everything
                log.exception("webhook delivery pass failed; will retry")

    def _schema_ready(self) -> bool:
        """Whether the outbox exists yet: a server may start before the release step migrates."""
        revision, head = migrate.current_revision(self.engine), migrate.head_revision()
        if revision != head and not self._waiting_logged:
            log.warning(
                "webhook delivery waits for the schema: at revision %s, this release needs %s",
                revision or "none",
                head,
            )
            self._waiting_logged = True
        return revision == head
