"""Tables: every resource version as received, the current head, and the search indexes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware in and out on every backend (SQLite has no zones of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: timezone-aware datetimes only")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# 64-bit row ids; on SQLite an INTEGER (its integers are 64-bit whatever the declared type)
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")


class ResourceVersion(SQLModel, table=True):
    """One version of one resource, with the JSON exactly as stored and served."""

    __tablename__ = "fhir_resource_version"

    # keyed by the head's sequential row id (0021): a new resource's version appends to the key
    rid: int = Field(sa_column=Column(_ROW_ID, primary_key=True))
    version_id: int = Field(primary_key=True)
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    last_updated: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    content_hash: str = Field(max_length=64)
    deleted: bool = Field(default=False)
    content: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    source: str = Field(max_length=200)
    request_id: str = Field(max_length=36, index=True)
    # the Provenance that recorded this version (`Provenance?target=` reads it by the primary
    # key); empty for versions written before revision 0019, whose Provenance has entity rows
    provenance_id: str | None = Field(default=None, max_length=64)


class ResourceHead(SQLModel, table=True):
    """The current version of each resource; the target of search and the write lock."""

    __tablename__ = "fhir_resource"
    __table_args__ = (
        Index("ix_fhir_resource_type_updated", "resource_type", "last_updated"),
        Index("uq_fhir_resource_rid", "rid", unique=True),
    )

    resource_type: str = Field(primary_key=True, max_length=64)
    resource_id: str = Field(primary_key=True, max_length=64)
    version_id: int
    last_updated: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    content_hash: str = Field(max_length=64)
    deleted: bool = Field(default=False)
    # a sequential row id, handed out when the head is created (`fhir_versions.write_versions`):
    # index rows name their owner by it, so their owner index grows at its end (0020)
    rid: int = Field(sa_column=Column(_ROW_ID, nullable=False))


class ResourceIdentifier(SQLModel, table=True):
    """Identifier (system, value) of a current resource, for `identifier=` and conditional refs.

    Written with its head in one unit of work (`repositories.fhir_versions.write_versions`); heads are never deleted,
    so no foreign key checks it (0006).
    """

    __tablename__ = "fhir_identifier"
    __table_args__ = (
        Index("ix_fhir_identifier_lookup", "resource_type", "value", "system"),
        Index("ix_fhir_identifier_owner_rid", "owner_rid"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    owner_rid: int = Field(sa_column=Column(_ROW_ID, nullable=False))  # the owner head's `rid`
    system: str | None = Field(default=None, max_length=1024)
    value: str = Field(max_length=1024)


class ResourceReference(SQLModel, table=True):
    """A reference search parameter of a current resource (e.g. Observation.patient).

    Kept like `ResourceIdentifier`: with its head, without a foreign key.
    """

    __tablename__ = "fhir_reference"
    __table_args__ = (
        Index("ix_fhir_reference_lookup", "resource_type", "param", "target_type", "target_id"),
        Index("ix_fhir_reference_owner_rid", "owner_rid"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    owner_rid: int = Field(sa_column=Column(_ROW_ID, nullable=False))  # the owner head's `rid`
    param: str = Field(max_length=64)
    target_type: str = Field(max_length=64)
    target_id: str = Field(max_length=64)


class TrialEventRow(SQLModel, table=True):
    """A trial event derived from one resource version; replaced whenever that resource changes."""

    __tablename__ = "trial_event"
    __table_args__ = (
        Index("ix_trial_event_patient_day", "patient_id", "first_day"),
        Index("ix_trial_event_source", "source_type", "source_id"),
        {"sqlite_autoincrement": True},  # ids never reused: caches see replaced events (0005)
    )

    pk: int | None = Field(default=None, primary_key=True)
    source_type: str = Field(max_length=64)
    source_id: str = Field(max_length=64)
    source_version: int
    seq: int
    patient_id: str | None = Field(default=None, max_length=64)
    kind: str = Field(max_length=32)
    first_day: dt.date | None = Field(default=None, sa_column=Column(Date(), nullable=True))
    payload: str = Field(sa_column=Column(Text(), nullable=False))


class EventDependency(SQLModel, table=True):
    """A resource (or identifier) a source's events were computed from: change it, remap the source."""

    __tablename__ = "trial_event_dependency"
    __table_args__ = (Index("ix_trial_event_dependency_target", "target"),)

    source_type: str = Field(primary_key=True, max_length=64)
    source_id: str = Field(primary_key=True, max_length=64)
    target: str = Field(primary_key=True, max_length=512)


class StudySubject(SQLModel, table=True):
    """A patient who is a subject of a study, under a pseudonymous id."""

    __tablename__ = "study_subject"
    __table_args__ = (
        UniqueConstraint("study_id", "subject_id", name="uq_study_subject_subject_id"),
        Index("ix_study_subject_number", "study_id", "subject_number"),
        # a write reads and renews one patient's rows in every study (migration 0016)
        Index("ix_study_subject_patient", "patient_id"),
    )

    study_id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(primary_key=True, max_length=64)
    subject_id: str = Field(max_length=32)
    subject_number: str | None = Field(default=None, max_length=256)
    status: str = Field(max_length=32)
    enrolled_on: dt.date | None = Field(default=None, sa_column=Column(Date(), nullable=True))
    day1: dt.date | None = Field(default=None, sa_column=Column(Date(), nullable=True))
    updated_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # renewed by every write that re-derives the patient: cached per-subject reads key on it
    read_token: str | None = Field(default=None, max_length=32)


class ServiceSecret(SQLModel, table=True):
    """Secrets the service generates once and keeps (e.g. the subject pseudonym key)."""

    __tablename__ = "service_secret"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=256)


class EligibilityRow(SQLModel, table=True):
    """A candidate's latest screening result, kept current on ingest so reads are cheap."""

    __tablename__ = "eligibility_result"
    __table_args__ = (
        UniqueConstraint("study_id", "subject_id", name="uq_eligibility_subject_id"),
        Index("ix_eligibility_overall", "study_id", "overall"),
    )

    study_id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(primary_key=True, max_length=64)
    subject_id: str = Field(max_length=32)
    overall: str = Field(max_length=16)
    n_met: int
    n_not_met: int
    n_unknown: int
    at_enrollment: str | None = Field(default=None, max_length=16)
    protocol_version: str = Field(max_length=64)
    as_of: dt.date = Field(sa_column=Column(Date(), nullable=False))
    computed_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    payload: str = Field(sa_column=Column(Text(), nullable=False))
    # renewed by every write of the row: the cached stored-eligibility answer keys on it
    read_token: str | None = Field(default=None, max_length=32)


class DeviationRow(SQLModel, table=True):
    """A protocol deviation: computed from data, annotated by staff, never deleted."""

    __tablename__ = "deviation"
    __table_args__ = (
        Index("ix_deviation_study_subject", "study_id", "subject_id"),
        Index("ix_deviation_study_status", "study_id", "status"),
        Index("ix_deviation_study_id", "study_id", "id"),  # pages in id order, no sort
        Index("ix_deviation_study_patient", "study_id", "patient_id"),  # a write's look-up
    )

    id: str = Field(primary_key=True, max_length=40)
    study_id: str = Field(max_length=64)
    patient_id: str = Field(max_length=64)
    subject_id: str = Field(max_length=32)
    rule: str = Field(max_length=32)
    cause: str = Field(max_length=200)
    severity: str = Field(max_length=16)
    study_day: int | None = None
    occurred_on: dt.date | None = Field(default=None, sa_column=Column(Date(), nullable=True))
    message: str = Field(sa_column=Column(Text(), nullable=False))
    evidence: str = Field(sa_column=Column(Text(), nullable=False))
    status: str = Field(max_length=16)
    detected_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    acknowledged_by: str | None = Field(default=None, max_length=200)
    acknowledged_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
    resolved_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
    resolution: str | None = Field(default=None, max_length=400)
    version: int


class DeviationHistoryRow(SQLModel, table=True):
    """Every change to a deviation, by the system or by staff, in order."""

    __tablename__ = "deviation_history"
    __table_args__ = (Index("ix_deviation_history_deviation", "deviation_id", "pk"),)

    pk: int | None = Field(default=None, primary_key=True)
    deviation_id: str = Field(max_length=40)
    at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    actor: str = Field(max_length=200)
    action: str = Field(max_length=32)
    detail: str = Field(sa_column=Column(Text(), nullable=False))


class SubscriptionRow(SQLModel, table=True):
    """A webhook receiver and the events it wants."""

    __tablename__ = "webhook_subscription"

    id: str = Field(primary_key=True, max_length=40)
    url: str = Field(max_length=2000)
    events: str = Field(max_length=400)
    secret: str = Field(max_length=400)
    created_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class OutboxRow(SQLModel, table=True):
    """A notification written in the same transaction as its cause; delivered at least once."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (Index("ix_webhook_outbox_due", "delivered_at", "next_attempt_at"),)

    pk: int | None = Field(default=None, primary_key=True)
    subscription_id: str = Field(max_length=40)
    event_type: str = Field(max_length=40)
    idempotency_key: str = Field(max_length=80, unique=True)
    payload: str = Field(sa_column=Column(Text(), nullable=False))
    created_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    attempts: int = 0
    next_attempt_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    delivered_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
    failed: bool = False
    last_error: str | None = Field(default=None, max_length=1000)


class ApiClient(SQLModel, table=True):
    """A registered API client (SMART Backend Services): its scopes and the keys it signs with."""

    __tablename__ = "api_client"

    name: str = Field(primary_key=True, max_length=64)
    scopes: str = Field(sa_column=Column(Text(), nullable=False))
    jwks: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    jwks_url: str | None = Field(default=None, max_length=2000)
    created_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    revoked_at: dt.datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )


class ClientAssertion(SQLModel, table=True):
    """A client assertion's `jti`, kept until it expires so no replica accepts it twice."""

    __tablename__ = "client_assertion"

    client: str = Field(primary_key=True, max_length=64)
    jti: str = Field(primary_key=True, max_length=256)
    expires_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))


class SigningKey(SQLModel, table=True):
    """The keys this service signs its access tokens with (private JWK), newest first in use."""

    __tablename__ = "signing_key"

    kid: str = Field(primary_key=True, max_length=64)
    private_jwk: str = Field(sa_column=Column(Text(), nullable=False))
    created_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class AuditRecord(SQLModel, table=True):
    """One AuditEvent or Provenance as served: written once, never changed, never deleted."""

    __tablename__ = "audit_record"
    __table_args__ = (Index("ix_audit_record_kind_seq", "kind", "seq"),)

    # the order records were written in; 64-bit (one row per request), SQLite's rowid there
    seq: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    id: str = Field(max_length=64, unique=True)
    kind: str = Field(max_length=16)  # AuditEvent | Provenance
    recorded: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    agent: str = Field(max_length=64, index=True)  # the client id, or "anonymous"
    request_id: str = Field(max_length=64)
    content: str = Field(sa_column=Column(Text(), nullable=False))


class AuditEntity(SQLModel, table=True):
    """What an audit record names, for search: `Type/id`, or `system|value` of an identifier; a
    write's AuditEvent also `wrote:Provenance/id`, for the Provenance it wrote under."""

    __tablename__ = "audit_entity"

    record_id: str = Field(primary_key=True, max_length=64)
    entity: str = Field(primary_key=True, max_length=300, index=True)


class StudyChange(SQLModel, table=True):
    """One committed write that changed a study's cohort inputs, until a snapshot reflects it.

    Writers only insert (no row every writer must lock); the cohort refresher deletes the rows a
    snapshot consumed. Ids grow and are never reused: a snapshot's `data_as_of` is the highest.
    """

    __tablename__ = "study_change"
    __table_args__ = (
        Index("ix_study_change_study", "study_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    study_id: str = Field(max_length=64)


class CohortSnapshot(SQLModel, table=True):
    """A study's last computed cohort outcomes, as served (evidence already sealed)."""

    __tablename__ = "cohort_snapshot"

    study_id: str = Field(primary_key=True, max_length=64)
    protocol_version: str = Field(max_length=64)
    basis: str = Field(max_length=64)  # digest of the protocol and release that computed it
    data_as_of: int = Field(sa_column=Column(BigInteger(), nullable=False))
    computed_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    compute_seconds: float
    digest: str = Field(max_length=64)  # of everything the body shows but `stale`
    plots: str = Field(sa_column=Column(Text(), nullable=False))  # JSON list of figure names
    body: str = Field(sa_column=Column(Text(), nullable=False))  # the outcomes JSON
    # the report document JSON (report.html renders it); None: the kind has none
    document: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))


class CohortListing(SQLModel, table=True):
    """One subject's row of one of a study's snapshot listings (`subjects`, `swimmer`, `excluded`;
    evidence sealed), paged by subject id."""

    __tablename__ = "cohort_listing"

    study_id: str = Field(primary_key=True, max_length=64)
    listing: str = Field(primary_key=True, max_length=16)
    subject_id: str = Field(primary_key=True, max_length=64)
    digest: str = Field(max_length=64)  # the snapshot the row belongs to
    body: str = Field(sa_column=Column(Text(), nullable=False))


class CohortFigure(SQLModel, table=True):
    """A figure of a study's snapshot, rendered when the snapshot was computed."""

    __tablename__ = "cohort_figure"

    study_id: str = Field(primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=64)
    format: str = Field(primary_key=True, max_length=8)
    etag: str = Field(max_length=80)
    body: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))


class CohortLease(SQLModel, table=True):
    """Which process computes a study's cohort now; another may take over once `until` passed."""

    __tablename__ = "cohort_lease"

    study_id: str = Field(primary_key=True, max_length=64)
    owner: str = Field(max_length=64)
    until: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class SourceState(SQLModel, table=True):
    """Per hospital source: the `transactionTime` of its last complete pull, the next `_since`."""

    __tablename__ = "source_state"

    source_id: str = Field(primary_key=True, max_length=64)
    transaction_time: str = Field(max_length=64)
    updated_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class PullJob(SQLModel, table=True):
    """One pull from a hospital source (API, schedule or CLI): its state, progress and lease."""

    __tablename__ = "pull_job"
    # the lease: one running job per source, whichever process runs it
    __table_args__ = (
        Index(
            "uq_pull_job_running",
            "source_id",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: str = Field(primary_key=True, max_length=36)
    source_id: str = Field(max_length=64, index=True)
    status: str = Field(max_length=16)
    started_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    finished_at: dt.datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    progress: str = Field(sa_column=Column(Text(), nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text()))
    lease_until: dt.datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class BulkJob(SQLModel, table=True):
    """An asynchronous `$import` (or a CLI load): its inputs, its checkpoint and its outcome.

    The checkpoint is written in the same transaction as the lines it counts, so a job resumed
    after a crash starts after the last committed line and never writes a line twice.
    """

    __tablename__ = "bulk_job"

    id: str = Field(primary_key=True, max_length=36)
    kind: str = Field(max_length=16)
    owner: str = Field(max_length=200, index=True)
    status: str = Field(max_length=16, index=True)
    cancel_requested: bool = Field(default=False)
    created_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    started_at: dt.datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    finished_at: dt.datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    # who runs it (a token new at each claim) and until when: a dead runner's job is taken over
    runner: str | None = Field(default=None, max_length=36)
    lease_until: dt.datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    attempts: int = Field(default=0)
    # JSON: the inputs (url, path, spooled), the checkpoint, the outcomes per input
    inputs: str = Field(sa_column=Column(Text(), nullable=False))
    checkpoint: str = Field(sa_column=Column(Text(), nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text()))


class BulkJobError(SQLModel, table=True):
    """One rejected line of a bulk job, as the OperationOutcome its errors NDJSON serves."""

    __tablename__ = "bulk_job_error"

    job_id: str = Field(primary_key=True, max_length=36)
    input_index: int = Field(primary_key=True)
    line: int = Field(primary_key=True)
    status: int
    outcome: str = Field(sa_column=Column(Text(), nullable=False))


class ImportSpoolChunk(SQLModel, table=True):
    """A piece of an asynchronous `$import` body, kept until its job ends.

    Spooled here rather than on disk when jobs run on the PostgreSQL queue, so a job worker on
    any machine reads what any server received: no volume shared by the servers and workers.
    """

    __tablename__ = "import_spool"

    spool_id: str = Field(primary_key=True, max_length=36)
    seq: int = Field(primary_key=True)
    created_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    data: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))
