"""Migrations: they agree with the models, and go down and up again, on both databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings


def test_head_is_the_newest_packaged_migration() -> None:
    """Other tests compare with head_revision(); this one pins it, so a new migration is a choice."""
    newest = max(
        p.name
        for p in (Path(migrate.__file__).parents[2] / "migrations" / "versions").glob("0*.py")
    )
    assert newest.startswith("0018_")
    assert migrate.head_revision() == "0018"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_models_and_migrations_agree_and_round_trip(new_database: Any, kind: str) -> None:
    engine = make_engine(Settings(database_url=new_database(kind)))
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert migrate.drift(engine) == []  # what `alembic check` verifies
    migrate.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate.upgrade(engine)
    assert migrate.drift(engine) == []
    engine.dispose()


def test_upgrade_is_idempotent(new_database: Any) -> None:
    engine = make_engine(Settings(database_url=new_database("postgres")))
    migrate.upgrade(engine)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_0006_drops_what_only_writes_paid_for_and_keeps_the_rows(
    new_database: Any, kind: str
) -> None:
    engine = make_engine(Settings(database_url=new_database(kind)))

    def shape() -> tuple[set[str], int, int]:
        found = inspect(engine)  # a fresh look after each migration
        return (
            {str(i["name"]) for i in found.get_indexes("fhir_resource")},
            len(found.get_foreign_keys("fhir_identifier")),
            len(found.get_foreign_keys("fhir_reference")),
        )

    migrate.upgrade(engine, "0005")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO fhir_resource (resource_type, resource_id, version_id, last_updated,"
                " content_hash, deleted) VALUES ('Patient', 'p1', 1, '2026-01-01 00:00:00', 'h',"
                " false)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO fhir_identifier (resource_type, resource_id, system, value)"
                " VALUES ('Patient', 'p1', 'urn:mrn', '7')"
            )
        )
    both = {"ix_fhir_resource_type_updated", "ix_fhir_resource_type_hash"}
    assert shape() == (both, 1, 1)
    migrate.upgrade(engine)
    assert shape() == ({"ix_fhir_resource_type_updated"}, 0, 0)
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT resource_id, value FROM fhir_identifier")).all()
    assert [tuple(r) for r in kept] == [("p1", "7")]
    migrate.downgrade(engine, "0005")
    assert shape() == (both, 1, 1)
    engine.dispose()
