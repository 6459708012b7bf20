"""The audit trail: AuditEvent and Provenance records, and what each names (for search).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_record",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("recorded", sa.DateTime(timezone=True), nullable=False),
        sa.Column("agent", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_audit_record_agent", "audit_record", ["agent"], unique=False)
    op.create_index("ix_audit_record_recorded", "audit_record", ["recorded"], unique=False)
    op.create_index("ix_audit_record_kind_seq", "audit_record", ["kind", "seq"], unique=False)
    op.create_table(
        "audit_entity",
        sa.Column("record_id", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=300), nullable=False),
        sa.PrimaryKeyConstraint("record_id", "entity"),
    )
    op.create_index("ix_audit_entity_entity", "audit_entity", ["entity"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_entity_entity", table_name="audit_entity")
    op.drop_table("audit_entity")
    op.drop_index("ix_audit_record_kind_seq", table_name="audit_record")
    op.drop_index("ix_audit_record_recorded", table_name="audit_record")
    op.drop_index("ix_audit_record_agent", table_name="audit_record")
    op.drop_table("audit_record")
