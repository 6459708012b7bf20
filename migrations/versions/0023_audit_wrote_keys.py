"""A write's AuditEvent is found through its Provenance by a key of its own (`wrote:Provenance/id`).

`AuditEvent?entity=Patient/1` finds a write by the Provenance it wrote under. It matched any
AuditEvent naming that Provenance with the write's request id, and a client may send its own
`X-Request-Id`: a later read of the Provenance sent with the write's id was taken for the write.
Writes now add the `wrote:` key, and the search follows only it. Older writes get it here by the
rule they were found by until now (their AuditEvent names the Provenance and has its request id),
so the search finds what it found before; only requests from here on are told apart exactly.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # one pass over the entity rows; the AuditEvent and the Provenance are found by their ids
    op.execute(
        "INSERT INTO audit_entity (record_id, entity)"
        " SELECT e.record_id, 'wrote:' || e.entity"
        " FROM audit_entity e"
        " JOIN audit_record r ON r.id = e.record_id AND r.kind = 'AuditEvent'"
        " JOIN audit_record p ON p.id = substr(e.entity, 12) AND p.kind = 'Provenance'"
        " WHERE substr(e.entity, 1, 11) = 'Provenance/' AND r.request_id = p.request_id"
        " AND NOT EXISTS (SELECT 1 FROM audit_entity w"
        " WHERE w.record_id = e.record_id AND w.entity = 'wrote:' || e.entity)"
    )


def downgrade() -> None:
    op.execute("DELETE FROM audit_entity WHERE entity LIKE 'wrote:%'")
