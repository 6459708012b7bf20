"""The study API over real HTTP: studies, subjects, timelines, and events kept in step with FHIR."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from api.app import create_app
from api.auth import router as auth_router
from api.bulk_import import router as bulk_import_router
from api.fhir_routes import audit_router, open_router
from api.fhir_routes import router as fhir_router
from service.infra.settings import Settings
from tests.conftest import LiveServer, counts, start_server, stop_server
from tests.kit import fhir as kit
from tests.kit.cohort import fresh_outcomes
from tests.kit.evidence import cited

NCT = "NCT06088771"


member = partial(kit.patient, gender="female", birth_date="1961-04-02")
STUDY = kit.research_study()


DAY1_DOSES = (  # two dupilumab syringes and cemiplimab (in g) on 2025-03-10, New York (EST)
    (
        "dupi-a",
        "dupilumab 300 MG in 2 ML Prefilled Syringe",
        300,
        "mg",
        "2025-03-10T09:00:00-05:00",
    ),
    (
        "dupi-b",
        "dupilumab 300 MG in 2 ML Prefilled Syringe",
        300,
        "mg",
        "2025-03-10T09:05:00-05:00",
    ),
    ("cemi", "Libtayo", 0.35, "g", "2025-03-10T10:00:00-05:00"),
)
PROCEDURES = (  # the screening biopsy and the lobectomy, late on Day 18
    ("cnb", "CT-guided core needle biopsy of lung", "2025-02-20"),
    ("lob", "Right upper lobectomy", "2025-03-27T23:30:00-05:00"),
)


def _enrolled_patient(fhir: httpx.Client, pid: str = "p1", number: str = "001-003") -> None:
    response = fhir.post(
        "",
        content=kit.put_all(
            STUDY,
            member(id=pid, mrn=f"MRN-{pid}"),
            kit.research_subject(id=f"rs-{pid}", patient=pid, number=number, start="2025-03-03"),
            *(
                kit.dose(id=f"{pid}-{key}", patient=pid, drug=drug, amount=n, unit=unit, when=at)
                for key, drug, n, unit, at in DAY1_DOSES
            ),
            *(
                kit.procedure(id=f"{pid}-{key}", patient=pid, code=text, performed=at)
                for key, text, at in PROCEDURES
            ),
        ),
    )
    assert response.status_code == 200, response.text


def _subjects(api: httpx.Client, study: str = NCT, **params: Any) -> dict[str, Any]:
    response = api.get(f"/studies/{study}/subjects", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _timeline(api: httpx.Client, subject_id: str, study: str = NCT) -> list[dict[str, Any]]:
    response = api.get(f"/studies/{study}/subjects/{subject_id}/timeline")
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = cited(api, study, response.json()["events"])
    return events


def _brief(events: list[dict[str, Any]]) -> list[tuple[str, str | None, int | None, str]]:
    return [
        (
            e["kind"],
            e["date"]["value"] if e["date"] else None,
            e["study_day"],
            e["source"]["reference"],
        )
        for e in events
    ]


# -- studies --------------------------------------------------------------------------------------


def test_studies_are_listed_with_their_protocol_versions(api: httpx.Client) -> None:
    """Trial software discovers which studies (and protocol versions) it is talking to."""
    response = api.get("/studies")
    assert response.status_code == 200
    assert response.json() == {
        "studies": [
            {
                "id": NCT,
                "version": "2.0.0",
                "title": response.json()["studies"][0]["title"],
                "kind": "interventional",
            },
            {
                "id": "cirae-dupilumab",
                "version": "2.0.0",
                "title": response.json()["studies"][1]["title"],
                "kind": "cohort",
            },
        ]
    }
    assert "cemiplimab" in response.json()["studies"][0]["title"]


def test_study_exposes_every_choice_as_a_setting(api: httpx.Client) -> None:
    """The choices of CLINICAL.md are visible settings, not constants hidden in code."""
    body = api.get(f"/studies/{NCT}").json()
    settings = body["settings"]
    schedule = settings["schedule"]
    assert schedule["surgery_window"] == {"start": 15, "end": 22}
    assert schedule["day1"] == "first_study_drug_on_or_after_enrollment"
    assert schedule["day1_without_enrollment"] == ["cemiplimab"]
    assert schedule["dose_tolerance_pct"] == "10"
    assert schedule["screening"]["window_days_before_day1"] == 28
    assert schedule["screening"]["core_biopsies"] == {"min": 3, "max": 6}
    assert schedule["followup"] == {"days_after_surgery": 30, "tolerance_days": 7}
    assert [(d["id"], d["dose_mg"], d["route"]) for d in schedule["study_drugs"]] == [
        ("cemiplimab", "350", "IV"),
        ("dupilumab", "600", "SC"),
    ]
    assert [c["id"] for c in settings["eligibility"]] == [
        "nsclc",
        "stage",
        "resectable",
        "biopsy",
        "autoimmune",
        "metastatic",
        "driver",
        "immunomodulators",
        "never_smoker",
    ]
    assert settings["eligibility"][0]["lung_cancer_without_histology"] == "unknown"
    assert [(d["code"], d["severity"]) for d in settings["deviations"]] == [
        ("ineligible_enrolled", "major"),
        ("dose_mismatch", "major"),
        ("dose_missing", "major"),
        ("dose_extra", "major"),
        ("surgery_window", "major"),
        ("screening_biopsy_count", "minor"),
        ("screening_stool_missing", "minor"),
        ("followup_visit", "minor"),
        ("prohibited_medication", "major"),
    ]
    cohort = api.get("/studies/cirae-dupilumab").json()["settings"]["cohort"]
    assert cohort["matching"]["calipers"] == {"age_years": "5", "charlson": 1, "icb_year": 1}
    assert cohort["matching"]["exact"] == ["sex", "race", "icb_type"]


def test_unknown_study_and_subject_give_the_documented_error(api: httpx.Client) -> None:
    """Every error of the JSON API has one shape, with a stable code."""
    response = api.get("/studies/NCT00000000")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "study_not_found"
    assert response.json()["error"]["status"] == 404
    response = api.get(f"/studies/{NCT}/subjects/S-NOPE/timeline")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "subject_not_found"
    response = api.get(f"/studies/{NCT}/subjects", params={"cursor": "!!!"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"
    response = api.get(f"/studies/{NCT}/subjects", params={"limit": 0})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


# -- subjects and timelines -------------------------------------------------------------------------


def test_research_subject_makes_a_pseudonymous_subject_with_day1(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """A ResearchSubject for the study lists the patient, under an id that is neither MRN nor FHIR id."""
    _enrolled_patient(fhir)
    page = _subjects(api)
    assert len(page["subjects"]) == 1
    subject = page["subjects"][0]
    assert subject["subject_number"] == "001-003"
    assert subject["status"] == "on-study"
    assert subject["enrolled_on"] == "2025-03-03"
    assert subject["day1"] == "2025-03-10"
    assert subject["subject_id"].startswith("S-")
    assert "p1" not in subject["subject_id"]
    assert "MRN" not in subject["subject_id"]
    assert page["next_cursor"] is None
    # cemiplimab is a PD-1 inhibitor, so the same patient is in the ICB cohort of the other study,
    # under a different pseudonym (ids are per study and cannot be linked without the key)
    cohort = _subjects(api, "cirae-dupilumab")["subjects"]
    assert [(s["status"], s["day1"]) for s in cohort] == [("included", "2025-03-10")]
    assert cohort[0]["subject_id"] != subject["subject_id"]


def test_timeline_orders_events_by_study_day_with_evidence(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Events come in date order, with CDISC study days (no Day 0) and their exact source version."""
    _enrolled_patient(fhir)
    subject_id = _subjects(api)["subjects"][0]["subject_id"]
    events = _timeline(api, subject_id)
    assert _brief(events) == [
        ("demographics", None, None, "Patient/p1/_history/1"),  # no birth date: an age
        ("biopsy", "2025-02-20", -18, "Procedure/p1-cnb/_history/1"),
        ("enrollment", "2025-03-03", -7, "ResearchSubject/rs-p1/_history/1"),
        (
            "drug_administration",
            "2025-03-10T09:00:00-05:00",
            1,
            "MedicationAdministration/p1-dupi-a/_history/1",
        ),
        (
            "drug_administration",
            "2025-03-10T09:05:00-05:00",
            1,
            "MedicationAdministration/p1-dupi-b/_history/1",
        ),
        (
            "drug_administration",
            "2025-03-10T10:00:00-05:00",
            1,
            "MedicationAdministration/p1-cemi/_history/1",
        ),
        ("lung_resection", "2025-03-27T23:30:00-05:00", 18, "Procedure/p1-lob/_history/1"),
    ]
    # born 1961-04-02, enrolled 2025-03-03: 63 whole years (the birthday is a month away)
    assert events[0]["values"]["age_at_enrollment"] == 63
    assert "birth_date" not in events[0]["values"]
    cemi = events[5]
    assert cemi["values"]["dose"]["mg"] == "350"
    assert cemi["values"]["dose"]["value"] == "0.35"
    assert [(c["concept"], c["matched_by"]) for c in cemi["concepts"]][:2] == [
        ("cemiplimab", "name"),
        ("pd1_inhibitor", "name"),
    ]
    assert events[6]["date"]["first_day"] == "2025-03-27"  # the local day, not the UTC one
    assert events[6]["values"]["resection_type"] == "lobectomy"
    assert events[1]["values"]["core_needle"] is True


def test_subject_list_filters_and_pages(api: httpx.Client, fhir: httpx.Client) -> None:
    """Staff find a subject by the study's own number, or by status, a page at a time."""
    for i in range(3):
        _enrolled_patient(fhir, pid=f"p{i}", number=f"001-00{i}")
    first = _subjects(api, limit=2)
    assert len(first["subjects"]) == 2
    second = _subjects(api, limit=2, cursor=first["next_cursor"])
    assert len(second["subjects"]) == 1
    assert second["next_cursor"] is None
    seen = [s["subject_id"] for s in first["subjects"] + second["subjects"]]
    assert seen == sorted(seen)
    assert len(set(seen)) == 3
    by_number = _subjects(api, subject_number="001-001")["subjects"]
    assert [s["subject_number"] for s in by_number] == ["001-001"]
    assert _subjects(api, status="withdrawn")["subjects"] == []
    assert len(_subjects(api, status="on-study")["subjects"]) == 3


def test_entered_in_error_retracts_only_that_resources_events(
    api: httpx.Client, fhir: httpx.Client, engine: Engine
) -> None:
    """Marking a record entered-in-error removes its events in the same transaction, nothing else."""
    _enrolled_patient(fhir)
    subject_id = _subjects(api)["subjects"][0]["subject_id"]
    before = _brief(_timeline(api, subject_id))
    lob = kit.procedure(
        id="p1-lob",
        patient="p1",
        code="Right upper lobectomy",
        performed="2025-03-27T23:30:00-05:00",
    )
    lob["status"] = "entered-in-error"
    assert fhir.put("/Procedure/p1-lob", content=json.dumps(lob)).status_code == 200
    after = _brief(_timeline(api, subject_id))
    assert after == before[:-1]
    assert counts(engine)["trial_event"] == len(after)


def test_deleting_doses_moves_day1_and_deleting_the_enrollment_removes_the_subject(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Day 1 and membership are recomputed from the data whenever it changes."""
    _enrolled_patient(fhir)
    subject_id = _subjects(api)["subjects"][0]["subject_id"]
    for mid in ("p1-dupi-a", "p1-dupi-b", "p1-cemi"):
        assert fhir.delete(f"/MedicationAdministration/{mid}").status_code in (200, 204)
    subject = _subjects(api)["subjects"][0]
    assert subject["subject_id"] == subject_id  # stable across recomputation
    assert subject["day1"] is None
    assert all(e["study_day"] is None for e in _timeline(api, subject_id))
    rs = kit.research_subject(
        id="rs-p1", patient="p1", number="001-003", start="2025-03-03", status="withdrawn"
    )
    assert fhir.put("/ResearchSubject/rs-p1", content=json.dumps(rs)).status_code == 200
    assert [s["status"] for s in _subjects(api)["subjects"]] == ["withdrawn"]
    assert fhir.delete("/ResearchSubject/rs-p1").status_code in (200, 204)
    assert _subjects(api)["subjects"] == []


def test_reference_by_identifier_resolves_when_the_patient_arrives_later(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """An event whose subject is named only by MRN joins the patient once that Patient is posted."""
    early = kit.dose(
        id="early", patient="x", drug="Keytruda 100 MG/4ML", amount=200, when="2024-01-05"
    )
    early["subject"] = {"identifier": {"system": "urn:mrn", "value": "MRN-late"}}
    assert fhir.put("/MedicationAdministration/early", content=json.dumps(early)).status_code == 201
    assert _subjects(api, "cirae-dupilumab")["subjects"] == []
    late = member(id="late", mrn="MRN-late")
    assert fhir.put("/Patient/late", content=json.dumps(late)).status_code == 201
    cohort = _subjects(api, "cirae-dupilumab")["subjects"]
    assert [(s["status"], s["day1"], s["enrolled_on"]) for s in cohort] == [
        ("included", "2024-01-05", "2024-01-05")
    ]
    kinds = [e["kind"] for e in _timeline(api, cohort[0]["subject_id"], "cirae-dupilumab")]
    assert kinds == ["demographics", "drug_administration"]


def test_failed_transaction_writes_no_events(fhir: httpx.Client, engine: Engine) -> None:
    """A refused transaction leaves no events or subjects behind either."""
    body = kit.put_all(STUDY, member(id="p9", mrn="MRN-9"))
    broken = json.loads(body)
    broken["entry"].append(kit.put_entry({"resourceType": "Patient", "id": "bad", "active": "yes"}))
    assert fhir.post("", content=json.dumps(broken)).status_code == 400
    assert counts(engine)["trial_event"] == 0
    assert counts(engine)["study_subject"] == 0


# -- terminology extended by a site -----------------------------------------------------------------


# a dose coded only in the site's pharmacy system
LOCAL_DUPILUMAB = {"coding": [{"system": "urn:site:pharmacy", "code": "DUPI-300"}]}
local_dose = partial(
    kit.medication_administration,
    id="local",
    medication=LOCAL_DUPILUMAB,
    effective="2025-03-10",
    dose=kit.quantity(300, "mg"),
)


def test_site_extends_a_value_set_with_a_fhir_valueset(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Posting a ValueSet with our canonical url adds a local code and remaps what was stored."""
    assert (
        fhir.put(
            "/MedicationAdministration/local", content=json.dumps(local_dose(patient="p1"))
        ).status_code
        == 201
    )
    valueset = {
        "resourceType": "ValueSet",
        "id": "site-dupilumab",
        "url": "urn:trialbridge:valueset:dupilumab",
        "status": "active",
        "compose": {
            "include": [{"system": "urn:site:pharmacy", "concept": [{"code": "DUPI-300"}]}]
        },
    }
    assert fhir.put("/ValueSet/site-dupilumab", content=json.dumps(valueset)).status_code == 201
    _enrolled_patient(fhir)
    subject_id = _subjects(api)["subjects"][0]["subject_id"]
    local = [e for e in _timeline(api, subject_id) if e["source"]["id"] == "local"]
    assert [(c["concept"], c["matched_by"], c["code"]) for c in local[0]["concepts"]] == [
        ("dupilumab", "code", "DUPI-300")
    ]
    valueset["status"] = "retired"
    assert fhir.put("/ValueSet/site-dupilumab", content=json.dumps(valueset)).status_code == 200
    local = [e for e in _timeline(api, subject_id) if e["source"]["id"] == "local"]
    assert local[0]["concepts"] == []


def test_site_extends_a_value_set_with_a_file(tmp_path: Path, new_database: Any) -> None:
    """A site's value-set file adds codes without a code change."""
    site = tmp_path / "terminology"
    site.mkdir()
    (site / "local.toml").write_text(
        '[dupilumab]\ntitle = "site codes"\ncodes = [{ system = "urn:site:pharmacy", code = "DUPI-300" }]\n'
    )
    settings = Settings(database_url=new_database("sqlite"), terminology_dir=site)
    srv, thread, url = start_server(settings)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            body = kit.put_all(
                STUDY,
                member(id="p1", mrn="MRN-1"),
                kit.research_subject(id="rs-p1", patient="p1", number="7", start="2025-03-01"),
                local_dose(patient="p1"),
            )
            assert (
                client.post(
                    "/fhir", content=body, headers={"content-type": "application/fhir+json"}
                ).status_code
                == 200
            )
            subject = client.get(f"/api/v1/studies/{NCT}/subjects").json()["subjects"][0]
            assert subject["day1"] == "2025-03-10"
    finally:
        stop_server(srv, thread)


def test_urn_uuid_references_map_to_the_created_patient(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Within a transaction, urn:uuid references are rewritten before mapping, so events join up."""
    p_urn = "urn:uuid:6c0f3b7e-3d1b-4c55-9f0e-2a1b3c4d5e6f"
    given = kit.dose(drug="Tecentriq 1200 MG/20ML", amount=1200, when="2024-02-01", patient=None)
    given["subject"] = kit.reference(p_urn)
    body = kit.transaction(
        kit.post_entry(kit.patient(gender="male"), full_url=p_urn),
        kit.post_entry(given),
    )
    response = fhir.post("", content=body)
    assert response.status_code == 200, response.text
    patient_id = response.json()["entry"][0]["response"]["location"].split("/")[1]
    cohort = _subjects(api, "cirae-dupilumab")["subjects"]
    assert len(cohort) == 1
    events = _timeline(api, cohort[0]["subject_id"], "cirae-dupilumab")
    assert [(e["kind"], e["study_day"]) for e in events] == [
        ("drug_administration", 1),
        ("demographics", None),  # no birth date: undated events come last
    ]
    assert events[1]["source"]["id"] == patient_id
    assert [c["concept"] for c in events[0]["concepts"]] == ["pdl1_inhibitor"]


def test_out_of_order_versions_leave_the_latest_content_in_force(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Whatever order corrections arrive in, the timeline shows the current version only, once."""
    _enrolled_patient(fhir)
    subject_id = _subjects(api)["subjects"][0]["subject_id"]
    original = kit.procedure(
        id="p1-lob",
        patient="p1",
        code="Right upper lobectomy",
        performed="2025-03-27T23:30:00-05:00",
    )
    corrected = kit.procedure(
        id="p1-lob", patient="p1", code="Right upper lobectomy", performed="2025-03-31"
    )
    assert fhir.put("/Procedure/p1-lob", content=json.dumps(corrected)).status_code == 200
    assert fhir.put("/Procedure/p1-lob", content=json.dumps(original)).status_code == 200
    surgery = [e for e in _timeline(api, subject_id) if e["kind"] == "lung_resection"]
    assert [(e["date"]["value"], e["study_day"], e["source"]["version"]) for e in surgery] == [
        ("2025-03-27T23:30:00-05:00", 18, "3")
    ]


def test_openapi_documents_the_study_api_and_its_error_shape(server: LiveServer) -> None:
    """Trial software can generate a client: every route, its response and error bodies are described."""
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    paths = {p for p in schema["paths"] if p.startswith("/api/v1")}
    assert paths == {
        "/api/v1/studies",
        "/api/v1/studies/{study_id}",
        "/api/v1/studies/{study_id}/subjects",
        "/api/v1/studies/{study_id}/subjects/{subject_id}/timeline",
        "/api/v1/studies/{study_id}/eligibility",
        "/api/v1/studies/{study_id}/subjects/{subject_id}/eligibility",
        "/api/v1/studies/{study_id}/subjects/{subject_id}/outcomes",
        "/api/v1/studies/{study_id}/outcomes",
        "/api/v1/studies/{study_id}/outcomes/plots/{plot}",
        "/api/v1/studies/{study_id}/outcomes/subjects",
        "/api/v1/studies/{study_id}/outcomes/swimmer",
        "/api/v1/studies/{study_id}/outcomes/excluded",
        "/api/v1/studies/{study_id}/outcomes/report.html",
        "/api/v1/studies/{study_id}/outcomes/report.pdf",
        "/api/v1/studies/{study_id}/deviations",
        "/api/v1/studies/{study_id}/deviations/{deviation_id}",
        "/api/v1/studies/{study_id}/evidence/{evidence_id}",
        "/api/v1/studies/{study_id}/export/sdtm/define.xml",
        "/api/v1/studies/{study_id}/export/sdtm/{file}",
        "/api/v1/subscriptions",
        "/api/v1/subscriptions/{subscription_id}",
        "/api/v1/sources/{source_id}/sync",
        "/api/v1/sources/{source_id}/sync/{job_id}",
    }
    plot = "/api/v1/studies/{study_id}/outcomes/plots/{plot}"
    for path in paths - {
        "/api/v1/subscriptions/{subscription_id}",
        "/api/v1/sources/{source_id}/sync",
    }:
        responses = schema["paths"][path]["get"]["responses"]
        snapshot = {
            plot,
            "/api/v1/studies/{study_id}/outcomes",
            "/api/v1/studies/{study_id}/outcomes/subjects",
            "/api/v1/studies/{study_id}/outcomes/swimmer",
            "/api/v1/studies/{study_id}/outcomes/excluded",
            "/api/v1/studies/{study_id}/outcomes/report.html",
            "/api/v1/studies/{study_id}/outcomes/report.pdf",
        }
        cached = {"304"} if path in snapshot else set()
        negotiated = {"406"} if path == "/api/v1/studies/{study_id}/deviations" else set()
        assert set(responses) == {"200", "400", "404", "422", "503"} | cached | negotiated
        assert responses["404"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
    event = schema["components"]["schemas"]["Event"]["properties"]
    assert event["values"]["examples"][0]["route_class"] == "systemic"
    assert set(schema["components"]["schemas"]["ErrorDetail"]["properties"]) == {
        "status",
        "code",
        "message",
        "details",
    }


def test_an_identifier_too_long_for_a_subject_number_is_passed_over(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Accepted alike on both databases; the next identifier that fits is the subject number."""
    rs = kit.research_subject(id="rs-long", patient="p9", number="S" * 257, start="2025-03-03")
    rs["identifier"].append({"system": "urn:study:nct06088771:subject", "value": "001-009"})
    response = fhir.post("", content=kit.put_all(STUDY, member(id="p9", mrn="MRN-p9"), rs))
    assert response.status_code == 200, response.text
    assert [s["subject_number"] for s in _subjects(api)["subjects"]] == ["001-009"]
    stored = fhir.get("/ResearchSubject/rs-long").json()
    assert stored["identifier"][0]["value"] == "S" * 257


@pytest.mark.parametrize("day", ["0001-01-01", "0001-01-05", "9999-12-30", "9999-12-31"])
def test_dates_at_the_ends_of_the_calendar_are_stored_and_derived(
    api: httpx.Client, fhir: httpx.Client, day: str
) -> None:
    """FHIR allows years 1 and 9999: windows counted from them are open at the calendar's end."""
    when = f"{day}T10:00:00Z"
    dupilumab = "dupilumab 300 MG in 2 ML Prefilled Syringe"
    response = fhir.post(
        "",
        content=kit.put_all(
            STUDY,
            {**member(id="edge", mrn="MRN-edge"), "deceasedDateTime": when},
            kit.research_subject(id="rs-edge", patient="edge", number="001-099", start=day),
            kit.dose(id="edge-dupi", patient="edge", drug=dupilumab, amount=300, when=when),
            kit.dose(id="edge-cemi", patient="edge", drug="Libtayo", amount=350, when=when),
            kit.procedure(
                id="edge-lob", patient="edge", code="Right upper lobectomy", performed=day
            ),
            {
                "resourceType": "AdverseEvent",
                "id": "edge-ae",
                "actuality": "actual",
                "subject": {"reference": "Patient/edge"},
                "event": {"text": "dermatitis"},
                "date": when,
            },
        ),
    )
    assert response.status_code == 200, response.text
    [subject] = _subjects(api)["subjects"]
    assert subject["day1"] == day
    sid = subject["subject_id"]
    fresh_outcomes(api, NCT)
    fresh_outcomes(api, "cirae-dupilumab")
    for path in (
        f"/studies/{NCT}/subjects/{sid}/timeline",
        f"/studies/{NCT}/subjects/{sid}/eligibility",
        f"/studies/{NCT}/subjects/{sid}/outcomes",
        f"/studies/{NCT}/eligibility",
        f"/studies/{NCT}/deviations",
        f"/studies/{NCT}/outcomes",
        "/studies/cirae-dupilumab/outcomes",
        f"/studies/{NCT}/outcomes/plots/swimmer.svg",
    ):
        answer = api.get(path)
        assert answer.status_code == 200, (path, answer.text[:500])


def _head(template: str) -> str:
    """A route template's literal start: every path it matches begins with it."""
    return template.split("{", 1)[0]


def test_study_routes_tried_first_cannot_take_a_path_of_a_router_declared_before_them() -> None:
    """Routing tries the study routes first (api.app.routing_order): that changes no answer only
    if no route declared before them matches a path they match. Two templates can match one path
    only if one's literal start begins the other's; the OpenAPI document keeps the declared order."""
    app = create_app()
    paths = list(app.openapi()["paths"])
    first_study = next(n for n, p in enumerate(paths) if p.startswith("/api/v1/studies"))
    before, study = paths[:first_study], [p for p in paths if p.startswith("/api/v1/studies")]
    assert len(before) == 14  # /auth (2), /fhir (12), as declared
    assert paths.index("/api/v1/studies/{study_id}/subjects/{subject_id}/timeline") > first_study
    routers = (auth_router, open_router, audit_router, bulk_import_router, fhir_router)
    hidden = [getattr(r, "path", "") for router in routers for r in router.routes]  # and /fhir/
    before += [p for p in hidden if p not in before]
    assert len(before) == 15
    for template in study:
        for earlier in before:
            a, b = _head(template), _head(earlier)
            assert not a.startswith(b), (template, earlier)
            assert not b.startswith(a), (template, earlier)
