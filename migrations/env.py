"""Alembic environment: runs on the connection `service.infra.migrate` hands over."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import service.infra.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

target_metadata = SQLModel.metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=True,  # SQLite needs table rebuilds for ALTERs
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `trialbridge migrate` (service.infra.migrate)")
_run(connection)
