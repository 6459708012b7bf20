"""FHIR store: every resource version, the current heads, identifier and reference indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OWNER_FK = (
    ["resource_type", "resource_id"],
    ["fhir_resource.resource_type", "fhir_resource.resource_id"],
)


def upgrade() -> None:
    op.create_table(
        "fhir_resource",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "resource_id"),
    )
    op.create_index(
        "ix_fhir_resource_type_hash", "fhir_resource", ["resource_type", "content_hash"]
    )
    op.create_index(
        "ix_fhir_resource_type_updated", "fhir_resource", ["resource_type", "last_updated"]
    )

    op.create_table(
        "fhir_resource_version",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "resource_id", "version_id"),
    )
    op.create_index("ix_fhir_resource_version_request_id", "fhir_resource_version", ["request_id"])

    op.create_table(
        "fhir_identifier",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=1024), nullable=True),
        sa.Column("value", sa.String(length=1024), nullable=False),
        sa.ForeignKeyConstraint(*_OWNER_FK, ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index(
        "ix_fhir_identifier_lookup", "fhir_identifier", ["resource_type", "value", "system"]
    )
    op.create_index("ix_fhir_identifier_owner", "fhir_identifier", ["resource_type", "resource_id"])

    op.create_table(
        "fhir_reference",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(*_OWNER_FK, ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index(
        "ix_fhir_reference_lookup",
        "fhir_reference",
        ["resource_type", "param", "target_type", "target_id"],
    )
    op.create_index("ix_fhir_reference_owner", "fhir_reference", ["resource_type", "resource_id"])


def downgrade() -> None:
    op.drop_table("fhir_reference")
    op.drop_table("fhir_identifier")
    op.drop_table("fhir_resource_version")
    op.drop_table("fhir_resource")
