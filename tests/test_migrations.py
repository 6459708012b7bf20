"""Migrations: they agree with the models, and go down and up again, on both databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, inspect, text
from sqlmodel import Session

from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from service.repositories import audit_records, fhir_versions


def _audit(
    conn: Connection, records: Sequence[tuple[str, str, str]], entities: Sequence[tuple[str, str]]
) -> None:
    """Audit records (id, kind, request id) and their search rows (record id, entity), written
    straight into the tables as an earlier release left them."""
    if records:
        conn.execute(
            text(
                "INSERT INTO audit_record (id, kind, recorded, agent, request_id, content)"
                " VALUES (:id, :kind, '2026-01-01 00:00:00', 'ehr', :r, '{}')"
            ),
            [{"id": i, "kind": k, "r": r} for i, k, r in records],
        )
    if entities:
        conn.execute(
            text("INSERT INTO audit_entity (record_id, entity) VALUES (:i, :e)"),
            [{"i": i, "e": e} for i, e in entities],
        )


def test_head_is_the_newest_packaged_migration() -> None:
    """Other tests compare with head_revision(); this one pins it, so a new migration is a choice."""
    newest = max(
        p.name
        for p in (Path(migrate.__file__).parents[2] / "migrations" / "versions").glob("0*.py")
    )
    assert newest.startswith("0023_")
    assert migrate.head_revision() == "0023"


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
    migrate.upgrade(engine, "0006")
    assert shape() == ({"ix_fhir_resource_type_updated"}, 0, 0)
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT resource_id, value FROM fhir_identifier")).all()
    assert [tuple(r) for r in kept] == [("p1", "7")]
    migrate.downgrade(engine, "0005")
    assert shape() == (both, 1, 1)
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_0019_finds_old_provenances_by_entity_rows_and_new_ones_by_version(
    new_database: Any, kind: str
) -> None:
    engine = make_engine(Settings(database_url=new_database(kind)))
    version = (
        "INSERT INTO fhir_resource_version (resource_type, resource_id, version_id, last_updated,"
        " content_hash, deleted, content, source, request_id{extra}) VALUES ('Patient', 'p1', :v,"
        " '2026-01-01 00:00:00', 'h', false, '{{}}', 's', :r{value})"
    )
    migrate.upgrade(engine, "0018")
    with engine.begin() as conn:  # written as before: the Provenance names its target by row
        conn.execute(
            text(
                "INSERT INTO fhir_resource (resource_type, resource_id, version_id, last_updated,"
                " content_hash, deleted) VALUES ('Patient', 'p1', 1, '2026-01-01 00:00:00', 'h',"
                " false)"
            )
        )
        conn.execute(text(version.format(extra="", value="")), {"v": 1, "r": "r1"})
        _audit(
            conn,
            [("prov-old", "Provenance", "r1"), ("event-old", "AuditEvent", "r1")],
            [("prov-old", "Patient/p1"), ("event-old", "Provenance/prov-old")],
        )
    migrate.upgrade(engine, "0022")
    with engine.begin() as conn:  # written after 0019: the version names its Provenance
        conn.execute(
            text(
                version.format(
                    extra=", provenance_id, rid",
                    value=", :p, (SELECT rid FROM fhir_resource WHERE resource_id = 'p1')",
                )
            ),
            {"v": 2, "r": "r2", "p": "prov-new"},
        )
        _audit(
            conn,
            [("prov-new", "Provenance", "r2"), ("event-new", "AuditEvent", "r2")],
            [("event-new", "Provenance/prov-new")],
        )
    migrate.upgrade(engine)  # 0023: both events get their `wrote:` key, as found before

    def found(kind: str) -> list[str]:
        with Session(engine) as session:
            page, total, _ = audit_records.search(
                session, audit_records.AuditQuery(kind, entities=("Patient/p1",))
            )
        assert total == len(page)
        return sorted(record_id for record_id, _ in page)

    assert found("Provenance") == ["prov-new", "prov-old"]
    assert found("AuditEvent") == ["event-new", "event-old"]
    migrate.downgrade(engine, "0018")  # the new Provenance gets the entity row it lacked
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT record_id, entity FROM audit_entity WHERE record_id LIKE 'prov-%'")
        ).all()
    assert sorted(tuple(r) for r in rows) == [
        ("prov-new", "Patient/p1"),
        ("prov-old", "Patient/p1"),
    ]
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_0020_numbers_the_heads_and_index_rows_follow_their_owner(
    new_database: Any, kind: str
) -> None:
    engine = make_engine(Settings(database_url=new_database(kind)))
    migrate.upgrade(engine, "0019")
    with engine.begin() as conn:  # written as before: index rows name their owner by its id
        for rtype, rid in (("Patient", "p1"), ("Observation", "o1"), ("Observation", "o2")):
            conn.execute(
                text(
                    "INSERT INTO fhir_resource (resource_type, resource_id, version_id,"
                    " last_updated, content_hash, deleted) VALUES (:t, :i, 1,"
                    " '2026-01-01 00:00:00', 'h', false)"
                ),
                {"t": rtype, "i": rid},
            )
        conn.execute(
            text(
                "INSERT INTO fhir_identifier (resource_type, resource_id, system, value)"
                " VALUES ('Patient', 'p1', 'urn:mrn', '7')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO fhir_reference (resource_type, resource_id, param, target_type,"
                " target_id) VALUES (:i_type, :i, 'subject', 'Patient', 'p1')"
            ),
            [{"i_type": "Observation", "i": "o1"}, {"i_type": "Observation", "i": "o2"}],
        )
    migrate.upgrade(engine)
    assert migrate.drift(engine) == []

    def index_rows() -> list[tuple[Any, ...]]:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    text(
                        "SELECT x.resource_id, x.owner_rid = h.rid, x.target_id FROM"
                        " (SELECT resource_type, resource_id, owner_rid, target_id"
                        " FROM fhir_reference UNION ALL SELECT resource_type, resource_id,"
                        " owner_rid, value FROM fhir_identifier) x JOIN fhir_resource h"
                        " ON h.resource_type = x.resource_type AND h.resource_id = x.resource_id"
                        " ORDER BY 1, 3"
                    )
                )
            ]

    with engine.connect() as conn:
        numbered = conn.execute(text("SELECT rid FROM fhir_resource")).scalars().all()
    assert len(set(numbered)) == 3
    assert None not in numbered
    assert index_rows() == [("o1", True, "p1"), ("o2", True, "p1"), ("p1", True, "7")]
    # an update replaces its own rows only; a new head is numbered after every existing one
    with Session(engine) as session:
        heads = fhir_versions.load_heads(session, [("Observation", "o1"), ("Observation", "o3")])
        now = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
        rows = [
            fhir_versions.VersionRow(
                "Observation", oid, version, now, "h2", "{}", [], [("subject", "Patient", "p9")]
            )
            for oid, version in (("o1", 2), ("o3", 1))
        ]
        fhir_versions.write_versions(
            session, rows, heads, source="test", request_id="r", provenance_id="p"
        )
        session.commit()
    assert index_rows() == [
        ("o1", True, "p9"),
        ("o2", True, "p1"),
        ("o3", True, "p9"),
        ("p1", True, "7"),
    ]
    with engine.connect() as conn:
        newest = conn.execute(
            text("SELECT rid FROM fhir_resource WHERE resource_id = 'o3'")
        ).scalar_one()
    assert newest > max(numbered)
    migrate.downgrade(engine, "0019")
    with engine.connect() as conn:
        kept = conn.execute(
            text("SELECT resource_id, target_id FROM fhir_reference ORDER BY 1")
        ).all()
    assert [tuple(r) for r in kept] == [("o1", "p9"), ("o2", "p1"), ("o3", "p9")]
    assert "ix_fhir_reference_owner" in {
        str(i["name"]) for i in inspect(engine).get_indexes("fhir_reference")
    }
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_0020_refuses_a_store_with_a_version_but_no_head(new_database: Any, kind: str) -> None:
    engine = make_engine(Settings(database_url=new_database(kind)))
    migrate.upgrade(engine, "0019")
    with engine.begin() as conn:  # only a change made outside trialbridge leaves such a row
        conn.execute(
            text(
                "INSERT INTO fhir_resource_version (resource_type, resource_id, version_id,"
                " last_updated, content_hash, deleted, content, source, request_id) VALUES"
                " ('Patient', 'lost', 1, '2026-01-01 00:00:00', 'h', false, '{}', 's', 'r')"
            )
        )
    with pytest.raises(RuntimeError, match="1 resource versions have no current head"):
        migrate.upgrade(engine)
    # before anything of 0020 or 0021 was applied, on SQLite too (one transaction per revision)
    assert migrate.current_revision(engine) == "0019"
    assert "rid" not in {c["name"] for c in inspect(engine).get_columns("fhir_resource")}
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_0022_names_each_listing_row_s_listing_and_drops_the_old_snapshots(
    new_database: Any, kind: str
) -> None:
    """Snapshots are derived data: 0022 drops them (a new layout, computed again) and keys the
    listing rows by (study, listing, subject); a downgrade drops them again, keyed as before."""
    engine = make_engine(Settings(database_url=new_database(kind)))
    migrate.upgrade(engine, "0021")
    snapshot = (
        "INSERT INTO cohort_snapshot (study_id, protocol_version, basis, data_as_of, computed_at,"
        " compute_seconds, digest, plots, body) VALUES ('NCT06088771', '1', 'b', 3,"
        " '2026-12-05 00:00:00+00:00', 0.5, 'd', '[]', '{}')"
    )
    with engine.begin() as conn:
        conn.execute(text(snapshot))
        conn.execute(
            text(
                "INSERT INTO cohort_listing (study_id, subject_id, digest, body)"
                " VALUES ('NCT06088771', 'S-1', 'd', '{}')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO cohort_figure (study_id, name, format, etag, body)"
                " VALUES ('NCT06088771', 'os', 'data', 'd', :b)"
            ),
            {"b": b"{}"},
        )

    def counts() -> tuple[int, int, int]:
        with engine.connect() as conn:
            return tuple(  # type: ignore[return-value]
                int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
                for t in ("cohort_snapshot", "cohort_listing", "cohort_figure")
            )

    def key() -> list[str]:
        return list(inspect(engine).get_pk_constraint("cohort_listing")["constrained_columns"])

    def changes() -> list[tuple[int, str]]:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT id, study_id FROM study_change ORDER BY id"))
            return [(int(i), str(s)) for i, s in found]

    assert (counts(), key(), changes()) == ((1, 1, 1), ["study_id", "subject_id"], [])
    migrate.upgrade(engine, "0022")
    assert (counts(), key()) == ((0, 0, 0), ["study_id", "listing", "subject_id"])
    # the next snapshot reflects change 3 again: data_as_of never goes back
    assert changes() == [(3, "NCT06088771")]
    with engine.begin() as conn:
        conn.execute(text(snapshot))
        for listing in ("subjects", "swimmer"):  # one subject in two listings
            conn.execute(
                text(
                    "INSERT INTO cohort_listing (study_id, listing, subject_id, digest, body)"
                    " VALUES ('NCT06088771', :l, 'S-1', 'd', '{}')"
                ),
                {"l": listing},
            )
    assert counts() == (1, 2, 0)
    migrate.downgrade(engine, "0021")
    assert (counts(), key()) == ((0, 0, 0), ["study_id", "subject_id"])
    assert changes() == [(3, "NCT06088771")]  # kept once, though both directions kept it
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_0023_keys_each_write_by_the_provenance_it_wrote_and_no_read(
    new_database: Any, kind: str
) -> None:
    """A write recorded before 0023 (its AuditEvent names its Provenance with the same request id)
    gets the `wrote:` key; a read of that Provenance with another request id does not, nor does
    a Provenance's own row. Downgrade drops the keys."""
    engine = make_engine(Settings(database_url=new_database(kind)))
    migrate.upgrade(engine, "0022")
    with engine.begin() as conn:
        _audit(
            conn,
            [
                ("prov", "Provenance", "w"),
                ("write", "AuditEvent", "w"),
                ("read", "AuditEvent", "x"),
            ],
            [("write", "Provenance/prov"), ("read", "Provenance/prov")],
        )

    def keys() -> list[tuple[str, str]]:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT record_id, entity FROM audit_entity")).all()
        return sorted((str(r[0]), str(r[1])) for r in rows)

    before = [("read", "Provenance/prov"), ("write", "Provenance/prov")]
    assert keys() == before
    migrate.upgrade(engine, "0023")
    assert keys() == [*before, ("write", "wrote:Provenance/prov")]
    migrate.upgrade(engine, "0023")  # already there: nothing twice
    migrate.downgrade(engine, "0022")
    assert keys() == before
    engine.dispose()
