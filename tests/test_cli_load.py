"""The installed `trialbridge` console script, run as a real subprocess on a fresh database."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine, inspect

from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.conftest import TEST_DATA, counts
from tests.kit.cli import run_trialbridge
from tests.kit.store import store_counts

SYNTHEA_DIR = TEST_DATA / "synthea-10"
SYNTHEA_FILES = 9
SYNTHEA_LINES = 5842


def _engine(database_url: str) -> Engine:
    return make_engine(Settings(database_url=database_url))


def _store_counts(database_url: str) -> dict[str, int]:
    engine = _engine(database_url)
    try:
        return counts(engine)
    finally:
        engine.dispose()


def test_load_synthea_then_reload_is_unchanged(
    backend: str, new_database: object, tmp_path: Path
) -> None:
    url = str(new_database(backend))  # type: ignore[operator]
    first = run_trialbridge(url, "load", str(SYNTHEA_DIR), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"loaded {SYNTHEA_FILES} file(s): {SYNTHEA_LINES} created\n"
    assert _store_counts(url)["fhir_resource_version"] == SYNTHEA_LINES
    assert _store_counts(url)["fhir_resource"] == SYNTHEA_LINES

    second = run_trialbridge(url, "load", str(SYNTHEA_DIR), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == f"loaded {SYNTHEA_FILES} file(s): {SYNTHEA_LINES} unchanged\n"
    assert _store_counts(url)["fhir_resource_version"] == SYNTHEA_LINES


def test_load_names_the_bad_line_and_keeps_the_good_ones(
    backend: str, new_database: object, tmp_path: Path
) -> None:
    url = str(new_database(backend))  # type: ignore[operator]
    folder = tmp_path / "feed"
    folder.mkdir()
    good = [
        {
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [{"system": "urn:mrn", "value": "1"}],
        },
        {
            "resourceType": "Patient",
            "id": "p3",
            "identifier": [{"system": "urn:mrn", "value": "3"}],
        },
    ]
    bad_file = folder / "file.ndjson"
    bad_file.write_text(
        json.dumps(good[0])
        + "\n"
        + '{"resourceType": "Patient", "id": \n'
        + json.dumps(good[1])
        + "\n"
    )
    result = run_trialbridge(url, "load", str(folder), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == "loaded 1 file(s): 2 created, 1 rejected\n"
    errors = [line for line in result.stderr.splitlines() if line.startswith(str(bad_file))]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"{bad_file}:2: 400 line 2: malformed JSON"), errors[0]
    assert f"{bad_file}:1" not in result.stderr
    assert f"{bad_file}:3" not in result.stderr
    assert _store_counts(url)["fhir_resource"] == 2


def test_migrate_a_fresh_database_reports_the_revision(
    backend: str, new_database: object, tmp_path: Path
) -> None:
    url = str(new_database(backend))  # type: ignore[operator]
    result = run_trialbridge(url, "migrate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"database at revision {migrate.head_revision()}\n"
    assert _store_counts(url) == store_counts()
    again = run_trialbridge(url, "migrate", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"database at revision {migrate.head_revision()}\n"


def test_unsupported_database_url_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = run_trialbridge("mysql://x", "load", str(SYNTHEA_DIR), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert "DATABASE_URL" in result.stderr
    assert "'mysql'" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no default SQLite file was created either


def test_remap_recomputes_the_same_events_and_subjects(
    backend: str, new_database: object, tmp_path: Path
) -> None:
    """`trialbridge remap` (after an upgrade) rebuilds events from the stored data, idempotently."""
    url = str(new_database(backend))  # type: ignore[operator]
    feed = tmp_path / "feed.ndjson"
    feed.write_text(
        "\n".join(
            json.dumps(r)
            for r in (
                {"resourceType": "Patient", "id": "p1", "gender": "male"},
                {
                    "resourceType": "MedicationAdministration",
                    "id": "ma1",
                    "status": "completed",
                    "medicationCodeableConcept": {"text": "Opdivo 240 MG"},
                    "subject": {"reference": "Patient/p1"},
                    "effectiveDateTime": "2024-05-02",
                },
            )
        )
    )
    assert run_trialbridge(url, "load", str(feed), cwd=tmp_path).returncode == 0
    before = _store_counts(url)
    assert (before["trial_event"], before["study_subject"]) == (2, 1)
    result = run_trialbridge(url, "remap", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "remapped: 2 event(s), 1 subject(s)\n"
    assert _store_counts(url) == before


def test_commands_leave_the_schema_to_the_release_step_when_auto_migration_is_off(
    new_database: object, tmp_path: Path
) -> None:
    """With TRIALBRIDGE_AUTO_MIGRATE=false only `trialbridge migrate` changes the schema; other
    commands on a schema behind the release stop before writing, naming the step to run."""
    url = str(new_database("sqlite"))  # type: ignore[operator]
    off = {"TRIALBRIDGE_AUTO_MIGRATE": "false"}
    for command in (("reevaluate",), ("client", "list")):
        refused = run_trialbridge(url, *command, cwd=tmp_path, env=off)
        assert refused.returncode == 2, refused.stderr
        assert "run `trialbridge migrate`" in refused.stderr
    engine = _engine(url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
    assert run_trialbridge(url, "migrate", cwd=tmp_path, env=off).returncode == 0
    after = run_trialbridge(url, "reevaluate", cwd=tmp_path, env=off)
    assert (after.returncode, after.stdout) == (0, "re-evaluated 0 patient(s)\n"), after.stderr
