"""Migrations: they agree with the models, and go down and up again, on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import inspect

from service import migrate
from service.db import make_engine
from service.settings import Settings


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_models_and_migrations_agree_and_round_trip(new_database: Any, kind: str) -> None:
    engine = make_engine(Settings(database_url=new_database(kind)))
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == "0006"
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
    assert migrate.current_revision(engine) == "0006"
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_unused_hash_index_goes_and_comes_back(new_database: Any, kind: str) -> None:
    engine = make_engine(Settings(database_url=new_database(kind)))

    def head_indexes() -> set[str]:
        return {str(i["name"]) for i in inspect(engine).get_indexes("fhir_resource")}

    migrate.upgrade(engine, "0005")
    assert "ix_fhir_resource_type_hash" in head_indexes()
    migrate.upgrade(engine)
    assert head_indexes() == {"ix_fhir_resource_type_updated"}
    migrate.downgrade(engine, "0005")
    assert head_indexes() == {"ix_fhir_resource_type_updated", "ix_fhir_resource_type_hash"}
    engine.dispose()
