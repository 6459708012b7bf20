"""NCT06088771, CLINICAL.md revision 2: exposure intervals, the irAE exemption, biopsy cores, site
dates and EFS (issue 18, defects 7–11). Known answers worked out by hand from CLINICAL.md, over HTTP.

Every subject is enrolled on 2025-03-03 (ResearchSubject.period.start) and gets both study drugs on
2025-03-10 (Day 1), so Day 1 is the same whether it is anchored on enrollment or on the first dose.
Unless a test says otherwise a subject follows the schedule: three core needle biopsies on Day -20,
a stool sample on Day -5, surgery on Day 18 and a visit 30 days later. The derivation's clock is
2025-06-30 12:00Z: every window has closed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from fhir_mapping.events.data_point import map_diagnostic_report
from fhir_mapping.events.medication_exposure import duration_days, exposure_span
from fhir_mapping.events.model import EventKind, SourceRef, TrialEvent
from fhir_mapping.json_codec import loads
from fhir_mapping.partial_dates import in_zone, parse_partial_date, site_date
from service.infra.settings import Settings
from service.protocol.terminology import build_terminology
from service.studies.interventional.deviation_rules import SubjectContext, detect
from service.studies.interventional.eligibility import evaluate
from service.studies.interventional.protocol import DeviationRule
from service.studies.interventional.subject_outcomes import event_free_survival, last_data_point
from tests.conftest import TEST_DATA
from tests.kit import fhir as kit
from tests.kit import nct
from tests.kit.cli import run_trialbridge
from tests.kit.client import get_json, put_resources
from tests.kit.evidence import cited
from tests.kit.live import Live, api_client, clocked_fixtures, fhir_client, live_app
from tests.kit.mapping import context, events_of, single
from tests.kit.nct import (
    DAY1,
    ENROLLED,
    EX_SMOKER,
    NCT,
    cites,
    core_biopsy_procedures,
    criterion,
    day,
    eligibility,
    on_study,
    study_doses,
    subject_id,
    subject_numbers,
)
from tests.kit.protocols import trial_protocol

TERMS = build_terminology()
PROTOCOL = trial_protocol(TERMS)

NOW = dt.datetime(2025, 6, 30, 12, 0, tzinfo=dt.UTC)
SURGERY = "Right upper lobectomy"
PRED = kit.PREDNISONE  # "predniSONE 20 MG Oral Tablet"
PRED_RXNORM = kit.coded(kit.RXNORM, "312617", PRED)
MTX = "methotrexate 2.5 MG Oral Tablet"
MEDROL = "methylprednisolone sodium succinate 125 MG Injection"

Resources = list[dict[str, Any]]
Row = tuple[
    str, str, int | None, str, str, tuple[str, ...]
]  # number, rule, day, date, message, refs


def before_enrollment(days: int) -> dt.date:
    """The date `days` days before the enrollment day."""
    return ENROLLED - dt.timedelta(days=days)


# -- a server of our own, whose derivation clock the tests set ---------------------------------------


live, api, fhir = clocked_fixtures(NOW)


# -- FHIR (every resource id starts with its patient's id) ---------------------------------------------


def subject(
    pid: str, number: str, *, biopsies: int = 3, extra: Resources | None = None
) -> Resources:
    """An enrolled subject who follows the schedule (`biopsies` core needle biopsies on Day -20)."""
    return [
        kit.research_study(),
        kit.patient(id=pid, mrn=f"MRN-{pid}", gender="female", birth_date="1956-02-11"),
        *on_study(pid, number, surgery=SURGERY).values(),
        *core_biopsy_procedures(pid, biopsies).values(),
        *(extra or []),
    ]


def work_up(pid: str) -> Resources:
    """A screening work-up that settles every criterion but exclusion 8 in the patient's favour."""
    return list(
        nct.work_up(
            pid,
            patient=None,
            problem_list=False,
            resection_text=None,
            resection_on="2025-03-27",
            core_biopsies=0,
            history=(),
            smoker=EX_SMOKER,
        ).values()
    )


# -- reading the API -----------------------------------------------------------------------------------


def deviation_rows(api: httpx.Client) -> list[Row]:
    """The whole deviation log as rows, evidence resolved, sorted by subject number and rule."""
    found = nct.deviations(api)
    numbers = subject_numbers(api)
    rows = [
        (
            numbers[d["subject_id"]],
            d["rule"],
            d["study_day"],
            d["date"],
            d["message"],
            tuple(e["reference"] for e in cited(api, NCT, d["evidence"])),
        )
        for d in found
    ]
    return sorted(rows, key=lambda r: (r[0], r[1], r[2] or 0, r[5]))


def prohibited(
    number: str, start: int, stop: int | None, name: str, ref: str, first: int = 1
) -> Row:
    """The prohibited_medication row of a course from Day `start` to Day `stop` (None: ongoing)."""
    if stop is None:
        days = f"from Day {start}, ongoing"
    elif start == stop:
        days = f"on Day {start}"
    else:
        days = f"from Day {start} to Day {stop}"
    return (
        number,
        "prohibited_medication",
        first,
        day(first).isoformat(),
        f"{name} {days}, between Day 1 and surgery, with no immune-related adverse event before it",
        (f"{ref}/_history/1",),
    )


def screened_with(
    api: httpx.Client, fhir: httpx.Client, record: dict[str, Any]
) -> tuple[dict[str, Any], tuple[str, str, list[tuple[str, str]]]]:
    """p1 (001-001) posted with the work-up and `record`: the stored eligibility, and exclusion 8
    as (verdict, reason, [(reference, value)])."""
    put_resources(fhir, *subject("p1", "001-001", extra=[*work_up("p1"), record]))
    body = eligibility(api, subject_id(api, "001-001"))
    found = criterion(body, "immunomodulators")
    return body, (found["verdict"], found["reason"], cites(found))


# -- 7. exposure is an interval -----------------------------------------------------------------------


def test_a_taper_authored_66_days_before_enrollment_for_21_days_is_within_8_weeks(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Exclusion 8: authored on E-66 for 21 days, the taper runs E-66..E-46, inside E-56..E-1: met."""
    taper = kit.medication_request(
        id="p1-taper",
        patient="p1",
        medication=PRED_RXNORM,
        status="completed",
        authored=before_enrollment(66),
        dosageInstruction=[
            {
                "text": "40 mg daily, tapering over three weeks",
                "route": kit.ORAL,
                "timing": {
                    "repeat": {
                        "boundsDuration": {
                            "value": 21,
                            "unit": "days",
                            "system": kit.UCUM,
                            "code": "d",
                        },
                        "frequency": 1,
                        "period": 1,
                        "periodUnit": "d",
                    }
                },
            }
        ],
    )
    body, immunomodulators = screened_with(api, fhir, taper)
    assert immunomodulators == (
        "met",
        f"{PRED} 66 days before the reference day 2025-03-03",
        [("MedicationRequest/p1-taper/_history/1", f"{PRED} 66 days before")],
    )
    # every other criterion is settled in the patient's favour: the taper alone excludes
    assert (body["overall"], body["at_enrollment"]) == ("ineligible", "ineligible")
    assert body["counts"] == {"met": 5, "not_met": 4, "unknown": 0}


def test_a_year_only_date_is_not_inside_the_window(api: httpx.Client, fhir: httpx.Client) -> None:
    """'2025' may be in E-56..E-1 (2025-01-06..2025-03-02) or not: unknown, never met."""
    statement = kit.medication_statement(
        id="p1-pred-2025",
        patient="p1",
        medication=PRED_RXNORM,
        route=kit.ORAL,
        effectiveDateTime="2025",
    )
    body, immunomodulators = screened_with(api, fhir, statement)
    assert immunomodulators == (
        "unknown",
        f"{PRED} dated 2025 may fall in the 56 days before 2025-03-03",
        [("MedicationStatement/p1-pred-2025/_history/1", f"{PRED} dated 2025")],
    )
    assert (body["overall"], body["at_enrollment"]) == ("indeterminate", "indeterminate")
    assert body["missing"] == ["the exact dates of the listed drugs"]


def test_courses_running_into_day_1_are_prohibited_medication(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """An order, a statement and an infusion that start before Day 1 and run into it are each a
    deviation on Day 1; a course that ended on Day -2 is not."""
    order = kit.medication_request(
        id="p1-pred-order",
        patient="p1",
        medication=PRED_RXNORM,
        authored=day(-3),
        dosageInstruction=[
            {
                "route": kit.ORAL,
                "timing": {"repeat": {"boundsPeriod": kit.period(day(-3), day(14))}},
            }
        ],
    )
    statement = kit.medication_statement(
        id="p1-mtx",
        patient="p1",
        medication=MTX,
        route=kit.ORAL,
        effectivePeriod=kit.period(day(-6), day(2)),
    )
    infusion = kit.medication_administration(
        id="p1-medrol",
        patient="p1",
        medication=MEDROL,
        route="Intravenous",
        dose=kit.quantity(125, "mg"),
        effectivePeriod=kit.period("2025-03-09T23:00:00-04:00", "2025-03-10T01:00:00-04:00"),
    )
    finished = kit.medication_statement(
        id="p1-pred-done",
        patient="p1",
        medication=PRED_RXNORM,
        route=kit.ORAL,
        effectivePeriod=kit.period(day(-6), day(-2)),
    )
    put_resources(fhir, *subject("p1", "001-001", extra=[order, statement, infusion, finished]))
    assert deviation_rows(api) == [
        prohibited("001-001", -1, 1, MEDROL, "MedicationAdministration/p1-medrol"),
        prohibited("001-001", -3, 14, PRED, "MedicationRequest/p1-pred-order"),
        prohibited("001-001", -6, 2, MTX, "MedicationStatement/p1-mtx"),
    ]


# -- 8. prohibited medication: the irAE exemption and the peri-operative dose --------------------------

CAUSALITY = f"{kit.HL7}/adverse-event-causality-assess"
COPD = kit.coded(kit.ICD10CM, "J44.1", "Chronic obstructive pulmonary disease with exacerbation")
DEXAMETHASONE_IV = "dexamethasone sodium phosphate 4 MG/ML Injectable Solution"
ROUTE_IV = kit.coded(kit.SNOMED, "47625008", "Intravenous route")


def suspect(drug: str, code: str, display: str) -> dict[str, Any]:
    """A suspectEntity naming a drug, with a causality assessment."""
    return {
        "instance": {"display": drug},
        "causality": [{"assessment": kit.coded(CAUSALITY, code, display)}],
    }


def pred_order(pid: str, rid: str, on: dt.date, **extra: Any) -> dict[str, Any]:
    """A one-day prednisone order."""
    return kit.medication_request(
        id=rid,
        patient=pid,
        medication=PRED_RXNORM,
        status="completed",
        authored=on,
        dosageInstruction=[{"route": kit.ORAL}],
        **extra,
    )


def test_only_an_immune_related_adverse_event_exempts_immunosuppression(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """p1: nausea (cemiplimab 'unlikely') on Day 3, then prednisone for COPD on Day 5: a deviation.
    p2: immune-mediated pneumonitis on Day 6, prednisone on Day 7: treatment of an irAE.
    p3: prednisone on Day 8 whose reasonReference is an immune-related colitis charted on Day 9."""
    nausea = kit.adverse_event(
        id="p1-nausea",
        patient="p1",
        event="Nausea",
        date=day(3),
        grade="1",
        suspectEntity=[suspect("Libtayo 350 MG", "unlikely", "Unlikely")],
    )
    copd = pred_order("p1", "p1-pred", day(5), reasonCode=[COPD])
    pneumonitis = kit.adverse_event(
        id="p2-pneumonitis", patient="p2", event="Immune-mediated pneumonitis", date=day(6)
    )
    colitis = kit.condition(
        id="p3-colitis",
        patient="p3",
        code="Immune-related colitis",
        onset=day(9),
        recorded=day(10),
    )
    put_resources(fhir, *subject("p1", "001-001", extra=[nausea, copd]))
    put_resources(
        fhir, *subject("p2", "001-002", extra=[pneumonitis, pred_order("p2", "p2-pred", day(7))])
    )
    put_resources(
        fhir,
        *subject(
            "p3",
            "001-003",
            extra=[
                colitis,
                pred_order(
                    "p3", "p3-pred", day(8), reasonReference=[kit.reference("Condition/p3-colitis")]
                ),
            ],
        ),
    )
    assert deviation_rows(api) == [
        prohibited("001-001", 5, 5, PRED, "MedicationRequest/p1-pred", first=5),
    ]


def test_a_single_iv_dexamethasone_dose_on_the_surgery_day_is_peri_operative(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Choice: IV dexamethasone on the surgery day (Day 18) is not a deviation; the same dose on
    Day 17, or by mouth on the surgery day, is."""

    def dex(
        pid: str, when: str, route: dict[str, Any], drug: str = DEXAMETHASONE_IV
    ) -> dict[str, Any]:
        return kit.medication_administration(
            id=f"{pid}-dex",
            patient=pid,
            medication=drug,
            effective=when,
            dose=kit.quantity(8, "mg"),
            route=route,
        )

    surgery_day = day(18).isoformat()
    put_resources(
        fhir,
        *subject("p1", "001-001", extra=[dex("p1", f"{surgery_day}T07:40:00-04:00", ROUTE_IV)]),
    )
    put_resources(
        fhir, *subject("p2", "001-002", extra=[dex("p2", f"{day(17)}T21:00:00-04:00", ROUTE_IV)])
    )
    oral = "dexamethasone 4 MG Oral Tablet"
    put_resources(
        fhir,
        *subject(
            "p3", "001-003", extra=[dex("p3", f"{surgery_day}T06:30:00-04:00", kit.ORAL, oral)]
        ),
    )
    assert deviation_rows(api) == [
        prohibited(
            "001-002", 17, 17, DEXAMETHASONE_IV, "MedicationAdministration/p2-dex", first=17
        ),
        prohibited("001-003", 18, 18, oral, "MedicationAdministration/p3-dex", first=18),
    ]


# -- 9. biopsy cores, not procedures -------------------------------------------------------------------

COLLECTION_PROCEDURE = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Specimen.collection.procedure"
)
CORE = "Lung tissue, core needle biopsy"


def biopsy(pid: str, n: int, cores: int) -> Resources:
    """Core needle biopsy n on Day -20, and the `cores` Specimens it collected (R5's
    Specimen.collection.procedure as its R4 cross-version extension)."""
    procedure = kit.procedure(
        id=f"{pid}-bx{n}",
        patient=pid,
        code="CT-guided core needle biopsy of lung",
        performed=day(-20),
    )
    specimens = [
        kit.specimen(
            id=f"{pid}-bx{n}-core{i}",
            patient=pid,
            type=CORE,
            collection={
                "collectedDateTime": day(-20).isoformat(),
                "extension": [
                    {
                        "url": COLLECTION_PROCEDURE,
                        "valueReference": kit.reference(f"Procedure/{pid}-bx{n}"),
                    }
                ],
            },
        )
        for i in range(1, cores + 1)
    ]
    return [procedure, *specimens]


def test_biopsy_cores_are_counted_not_procedures(api: httpx.Client, fhir: httpx.Client) -> None:
    """p1: one biopsy yielding four cores (4, inside 3–6). p2: one biopsy, eight cores (8 > 6).
    p3: a biopsy with two cores and one with no linked Specimen (2 + 1 = 3)."""
    put_resources(fhir, *subject("p1", "001-001", biopsies=0, extra=biopsy("p1", 1, 4)))
    put_resources(fhir, *subject("p2", "001-002", biopsies=0, extra=biopsy("p2", 1, 8)))
    put_resources(
        fhir,
        *subject("p3", "001-003", biopsies=0, extra=[*biopsy("p3", 1, 2), *biopsy("p3", 2, 0)]),
    )
    assert deviation_rows(api) == [
        (
            "001-002",
            "screening_biopsy_count",
            None,
            day(-1).isoformat(),
            "8 core needle biopsies in the screening window Day -28 to Day -1; plan 3–6",
            (
                "Procedure/p2-bx1/_history/1",
                *(f"Specimen/p2-bx1-core{i}/_history/1" for i in range(1, 9)),
            ),
        )
    ]


# -- 10. dates in the site's time zone -----------------------------------------------------------------

SITE = "America/New_York"  # UTC-5 in January
WINTER_DAY1 = dt.date(2025, 1, 6)
# 03:30Z on 2025-06-30 is still 2025-06-29 (23:30 EDT) at the site
SITE_NOW = dt.datetime(2025, 6, 30, 3, 30, tzinfo=dt.UTC)


def winter_day(n: int) -> dt.date:
    """Study day n of a subject whose Day 1 is 2025-01-06."""
    return day(n, WINTER_DAY1)


@pytest.fixture(scope="module")
def live_site(backend: str, new_database: Any) -> Iterator[Live]:
    """A second app whose site is in New York (TRIALBRIDGE_SITE_TIMEZONE)."""
    with live_app(str(new_database(backend)), SITE_NOW, site_timezone=SITE) as state:
        yield state


def winter_subject(pid: str, number: str) -> Resources:
    """Enrolled 2024-12-30, dosed 2025-01-06 (Day 1), surgery charted at 2025-01-28T02:30:00Z:
    21:30 on 2025-01-27 in New York, Day 22, the window's last day."""
    return [
        kit.research_study(),
        kit.patient(id=pid, mrn=f"MRN-{pid}", gender="male", birth_date="1950-07-04"),
        kit.research_subject(id=f"{pid}-rs", patient=pid, number=number, start=winter_day(-7)),
        # 10:00 in New York for cemiplimab, charted in UTC: the same day either way
        *study_doses(
            pid, WINTER_DAY1, ("09:00:00-05:00", "09:05:00-05:00", "2025-01-06T15:00:00Z")
        ).values(),
        *core_biopsy_procedures(pid, 3, on=winter_day(-20)).values(),
        kit.specimen(
            id=f"{pid}-stool", patient=pid, type="Stool specimen", collected=winter_day(-5)
        ),
        kit.procedure(
            id=f"{pid}-surgery", patient=pid, code=SURGERY, performed="2025-01-28T02:30:00Z"
        ),
        kit.encounter(id=f"{pid}-postop", patient=pid, start="2025-02-26T10:00:00-05:00"),
    ]


def test_a_utc_timestamp_is_the_site_s_calendar_day(live_site: Live) -> None:
    """At a New York site, surgery charted at 02:30Z on 2025-01-28 is 2025-01-27, Day 22: no
    surgery_window deviation, on time; and "today" (eligibility as of) is the site's day."""
    with api_client(live_site, SITE_NOW) as api, fhir_client(live_site) as fhir:
        put_resources(fhir, *winter_subject("p1", "001-001"))
        assert deviation_rows(api) == []
        sid = subject_id(api, "001-001")
        outcomes = nct.outcomes(api, sid)
        assert (
            outcomes["day1"],
            outcomes["time_to_surgery_days"],
            outcomes["on_time_surgery"],
        ) == (
            "2025-01-06",
            21,
            True,
        )
        assert (outcomes["surgery"]["date"], outcomes["surgery"]["study_day"]) == ("2025-01-27", 22)
        stored = get_json(api, f"/studies/{NCT}/subjects/{sid}/eligibility")
        assert stored["as_of"] == "2025-06-29"  # 23:30 in New York, though 03:30Z on the 30th
        timeline = get_json(api, f"/studies/{NCT}/subjects/{sid}/timeline")
        [surgery] = [e for e in timeline["events"] if e["kind"] == "lung_resection"]
        assert (surgery["study_day"], surgery["date"]["value"]) == (22, "2025-01-28T02:30:00Z")


def test_the_same_chart_at_a_utc_site_is_day_23(api: httpx.Client, fhir: httpx.Client) -> None:
    """With the default site zone (UTC) the same surgery is 2025-01-28, Day 23: outside the window."""
    put_resources(fhir, *winter_subject("p1", "001-001"))
    assert deviation_rows(api) == [
        (
            "001-001",
            "surgery_window",
            23,
            "2025-01-28",
            "surgery on Day 23; window Day 15–22",
            ("Procedure/p1-surgery/_history/1",),
        )
    ]


def test_an_unknown_site_time_zone_stops_start_up(tmp_path: Any) -> None:
    """A bad TRIALBRIDGE_SITE_TIMEZONE is refused before anything runs, naming the variable."""
    done = run_trialbridge(
        f"sqlite:///{tmp_path / 'tz.db'}",
        "reevaluate",
        env={"TRIALBRIDGE_SITE_TIMEZONE": "Mars/Olympus_Mons"},
    )
    assert done.returncode == 2, done.stderr
    assert (
        "TRIALBRIDGE_SITE_TIMEZONE 'Mars/Olympus_Mons' is not an IANA time zone name" in done.stderr
    )
    assert not (tmp_path / "tz.db").exists()  # stopped before opening the database


# -- 11. event-free survival: recurrence Conditions and the last data point ----------------------------

BRAIN_MET = kit.coded(kit.ICD10CM, "C79.31", "Secondary malignant neoplasm of brain")
NODES = kit.coded(
    kit.ICD10CM,
    "C77.1",
    "Secondary and unspecified malignant neoplasm of intrathoracic lymph nodes",
)


def outcomes(api: httpx.Client, number: str) -> dict[str, Any]:
    """A subject's per-subject outcomes, evidence resolved."""
    sid = subject_id(api, number)
    body: dict[str, Any] = cited(api, NCT, nct.outcomes(api, sid))
    return body


def survival(body: dict[str, Any], which: str) -> tuple[Any, ...]:
    """(days, event, censored, event_type, date, evidence reference) of EFS or OS."""
    t = body[which]
    evidence = t["evidence"]["reference"] if t["evidence"] else None
    return (t["days"], t["event"], t["censored"], t["event_type"], t["date"], evidence)


def test_efs_a_distant_metastasis_after_surgery_is_a_recurrence(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """p1: brain metastasis (C79.31) with onset 2025-06-01, after surgery on 2025-03-27: an EFS
    event at 83 days. p3: nodal disease (C77.1) after surgery is not distant: no event, censored
    at its onset (a data point), 83 days."""
    put_resources(
        fhir,
        *subject(
            "p1",
            "001-001",
            extra=[kit.condition(id="p1-met", patient="p1", code=BRAIN_MET, onset="2025-06-01")],
        ),
    )
    put_resources(
        fhir,
        *subject(
            "p3",
            "001-003",
            extra=[kit.condition(id="p3-nodes", patient="p3", code=NODES, onset="2025-06-01")],
        ),
    )
    p1, p3 = (outcomes(api, n) for n in ("001-001", "001-003"))
    assert survival(p1, "efs") == (
        83,
        True,
        False,
        "progression_or_recurrence",
        "2025-06-01",
        "Condition/p1-met/_history/1",
    )
    assert survival(p1, "os") == (
        83,
        False,
        True,
        None,
        "2025-06-01",
        "Condition/p1-met/_history/1",
    )
    assert survival(p3, "efs") == (
        83,
        False,
        True,
        None,
        "2025-06-01",
        "Condition/p3-nodes/_history/1",
    )


def test_efs_is_censored_at_the_last_performed_fact(api: httpx.Client, fhir: httpx.Client) -> None:
    """p2: no event; a lab on 2025-05-20 and a CT report on 2025-06-10 are data points, a
    procedure in preparation on 2025-06-25 and a biopsy ordered for 2025-07-15 are not: EFS and
    OS are censored at 2025-06-10, 92 days after Day 1."""
    lab = kit.observation(
        id="p2-hb",
        patient="p2",
        code=kit.coded(kit.LOINC, "718-7", "Hemoglobin [Mass/volume] in Blood"),
        effective="2025-05-20T08:10:00-04:00",
        valueQuantity=kit.quantity(12.9, "g/dL"),
    )
    ct = {
        "resourceType": "DiagnosticReport",
        "id": "p2-ct",
        "status": "final",
        "code": kit.coded(kit.LOINC, "24627-2", "CT Chest"),
        "subject": kit.reference("Patient/p2"),
        "effectiveDateTime": "2025-06-10T14:00:00-04:00",
        "conclusion": "No evidence of recurrence.",
    }
    planned = kit.procedure(
        id="p2-bronch",
        patient="p2",
        code="Bronchoscopy",
        status="preparation",
        performed="2025-06-25",
    )
    ordered = kit.service_request(
        id="p2-bx-order",
        patient="p2",
        code="CT-guided core needle biopsy of lung",
        authored="2025-06-10",
        occurrence="2025-07-15",
    )
    put_resources(fhir, *subject("p2", "001-002", extra=[lab, ct, planned, ordered]))
    p2 = outcomes(api, "001-002")
    censored_at_ct = (92, False, True, None, "2025-06-10", "DiagnosticReport/p2-ct/_history/1")
    assert (survival(p2, "efs"), survival(p2, "os")) == (censored_at_ct, censored_at_ct)
    # without the report, the lab is the last data point (71 days)
    fhir.delete("DiagnosticReport/p2-ct").raise_for_status()
    censored_at_lab = (71, False, True, None, "2025-05-20", "Observation/p2-hb/_history/1")
    assert survival(outcomes(api, "001-002"), "efs") == censored_at_lab


# -- 7, pure: the interval a record stands for --------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "days"),
    [
        ({"value": 21, "unit": "days", "system": kit.UCUM, "code": "d"}, 21),
        ({"value": 3, "unit": "weeks", "system": kit.UCUM, "code": "wk"}, 21),
        ({"value": 12, "unit": "h", "system": kit.UCUM, "code": "h"}, 1),
        ({"value": 1.5, "unit": "d", "system": kit.UCUM, "code": "d"}, 2),
        ({"value": 1, "unit": "month", "system": kit.UCUM, "code": "mo"}, 31),  # 30.4375 days
        ({"value": 10, "unit": "days"}, 10),  # no code: the unit word
        ({"value": 2, "unit": "cycles"}, None),
        ({"value": 0, "unit": "d", "system": kit.UCUM, "code": "d"}, None),
        ({"unit": "d", "system": kit.UCUM, "code": "d"}, None),
    ],
)
def test_duration_in_calendar_days(duration: dict[str, Any], days: int | None) -> None:
    """A Duration covers ceil(value × UCUM days) days: 21 d, 3 wk = 21; 12 h = 1; 1 mo = 31."""
    assert duration_days(duration) == days


def _order(**extra: Any) -> TrialEvent:
    """The one event of a prednisone order with these elements."""
    resource = kit.medication_request(
        id="rx", medication=PRED_RXNORM, authored="2025-01-06", **extra
    )
    return single(events_of(TERMS, [resource]))


def _bounds(days: int, sequence: int | None = None) -> dict[str, Any]:
    duration = {"value": days, "unit": "d", "system": kit.UCUM, "code": "d"}
    dosage: dict[str, Any] = {"timing": {"repeat": {"boundsDuration": duration}}}
    return {**dosage, "sequence": sequence} if sequence is not None else dosage


@pytest.mark.parametrize(
    ("extra", "course", "last"),
    [
        ({"dosageInstruction": [_bounds(21)]}, 21, "2025-01-26"),
        # a taper in three steps one after the other: 7 + 7 + 7 days
        ({"dosageInstruction": [_bounds(7, 1), _bounds(7, 2), _bounds(7, 3)]}, 21, "2025-01-26"),
        # two dosages of one step run together: the longer one
        ({"dosageInstruction": [_bounds(7, 1), _bounds(10, 1)]}, 10, "2025-01-15"),
        (
            {"dispenseRequest": {"expectedSupplyDuration": {"value": 30, "unit": "days"}}},
            30,
            "2025-02-04",
        ),
        # an end date wins over a length
        (
            {
                "dosageInstruction": [
                    {"timing": {"repeat": {"boundsPeriod": kit.period("2025-01-06", "2025-01-08")}}}
                ],
                "dispenseRequest": {"expectedSupplyDuration": {"value": 30, "unit": "days"}},
            },
            None,
            "2025-01-08",
        ),
    ],
    ids=[
        "bounds-duration",
        "sequential-taper",
        "concurrent-dosages",
        "dispense-duration",
        "period",
    ],
)
def test_a_course_runs_from_its_start_for_its_length(
    extra: dict[str, Any], course: int | None, last: str
) -> None:
    """Started on 2025-01-06, a 21-day course's last day is 2025-01-26 (start + 21 - 1)."""
    event = _order(**extra)
    assert event.values["course_days"] == course
    span = exposure_span(event)
    assert span is not None
    assert (span.earliest_start, span.latest_start) == (dt.date(2025, 1, 6),) * 2
    assert (span.earliest_end, span.latest_end, span.ongoing) == (
        dt.date.fromisoformat(last),
        dt.date.fromisoformat(last),
        False,
    )


def test_an_open_active_order_runs_on_and_a_completed_one_is_one_day() -> None:
    """No end and no length: an active order is ongoing; a completed one covers its day only."""
    active = exposure_span(_order())
    done = exposure_span(_order(status="completed"))
    assert active is not None
    assert done is not None
    assert (active.ongoing, done.ongoing) == (True, False)
    assert (done.earliest_end, done.latest_end) == (dt.date(2025, 1, 6),) * 2


def _exclusion_8(*resources: dict[str, Any]) -> tuple[str, str]:
    """Exclusion 8's verdict and reason for a patient enrolled on 2025-03-03."""
    result = evaluate(
        PROTOCOL,
        events_of(TERMS, resources),
        as_of=dt.date(2025, 3, 31),
        enrolled_on=ENROLLED,
        day1=DAY1,
    )
    [found] = [c for c in result.criteria if c.criterion.id == "immunomodulators"]
    return found.verdict, found.reason


def _taper(authored: dt.date, days: int) -> dict[str, Any]:
    return kit.medication_request(
        id="taper",
        medication=PRED_RXNORM,
        status="completed",
        authored=authored,
        dosageInstruction=[{"route": kit.ORAL, **_bounds(days)}],
    )


def _reported(effective: str) -> dict[str, Any]:
    return kit.medication_statement(
        id="said",
        medication=PRED_RXNORM,
        route=kit.ORAL,
        effectiveDateTime=effective,
    )


NO_DRUG = ("not_met", "no listed drug in the 56 days before 2025-03-03")


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        # E-65 + 10 days: last day E-56, the window's first day
        (_taper(before_enrollment(65), 10), ("met", f"{PRED} 65 days before the reference day 2025-03-03")),
        # E-66 + 10 days: last day E-57, the day before the window
        (_taper(before_enrollment(66), 10), NO_DRUG),
        # February 2025 lies wholly inside 2025-01-06..2025-03-02
        (_reported("2025-02"), ("met", f"{PRED} 30 days before the reference day 2025-03-03")),
        # January 2025 straddles the window's first day
        (_reported("2025-01"), ("unknown", f"{PRED} dated 2025-01 may fall in the 56 days before 2025-03-03")),
        (_reported("2024-10"), NO_DRUG),
        (_reported("2024"), NO_DRUG),
    ],
    ids=["course-ends-on-E-56", "course-ends-on-E-57", "month-inside", "month-straddles", "month-before", "year-before"],
)  # fmt: skip
def test_exclusion_8_window_edges_with_intervals_and_partial_dates(
    resource: dict[str, Any], expected: tuple[str, str]
) -> None:
    """The window is E-56..E-1: a course counts when it overlaps it; a partial date straddling
    its edge is unknown, one wholly inside is met, one wholly outside is not."""
    assert _exclusion_8(resource) == expected


# -- 8, pure: what says a drug treats an irAE, and the peri-operative choice -----------------------------


def test_the_adverse_event_records_which_suspects_are_related() -> None:
    """R4 causality (coded or productRelatedness) and the backport IG's entityRelatedness."""
    ae = kit.adverse_event(
        id="ae",
        event="Pneumonitis",
        date="2025-03-20",
        suspectEntity=[
            suspect("Libtayo 350 MG", "probably-likely", "Probably/Likely"),
            suspect("Dupixent 300 MG", "unlikely", "Unlikely"),
            {
                "instance": {"display": "prednisone"},
                "causality": [{"productRelatedness": "not related"}],
            },
        ],
        extension=[
            {
                "url": f"{kit.AE_BACKPORT}/suspect-entity",
                "extension": [
                    {"url": "instance", "valueCodeableConcept": {"text": "dupilumab 300 MG/2ML"}},
                    {
                        "url": "causality",
                        "extension": [
                            {
                                "url": "entityRelatedness",
                                "valueCodeableConcept": {"text": "Possibly Related"},
                            }
                        ],
                    },
                ],
            }
        ],
    )
    event = single(events_of(TERMS, [ae]))
    assert event.values["related_suspects"] == [
        {"medication": "Libtayo 350 MG", "drugs": ["cemiplimab", "pd1_inhibitor"]},
        {"medication": "dupilumab 300 MG/2ML", "drugs": ["dupilumab"]},
    ]
    assert event.concept_ids == frozenset()  # "Pneumonitis" alone does not say immune-related


@pytest.mark.parametrize(
    ("resource", "immune_related"),
    [
        (kit.adverse_event(id="a", event="Immune-mediated hepatitis"), True),
        (kit.adverse_event(id="a", event="Colitis", category=[{"text": "irAE"}]), True),
        (kit.adverse_event(id="a", event="Colitis, not immune-related"), False),
        (kit.condition(id="c", code="Immune related thyroiditis"), True),
        (kit.condition(id="c", code=COPD), False),
    ],
)
def test_immune_related_by_term_or_category(resource: dict[str, Any], immune_related: bool) -> None:
    """The irAE value set matches an AdverseEvent's term or category, or a Condition's code."""
    event = single(events_of(TERMS, [resource]))
    assert ("immune_related_ae" in event.concept_ids) is immune_related


def _deviations(*extra: dict[str, Any], biopsies: int = 3) -> list[tuple[str, int | None]]:
    """(rule, study day) of p1's deviations as of 2025-06-30, p1 following the schedule."""
    events = events_of(TERMS, subject("p1", "001-001", biopsies=biopsies, extra=list(extra)))
    context = SubjectContext(
        day1=DAY1,
        enrolled_on=ENROLLED,
        status="on-study",
        eligible_at_enrollment="indeterminate",
        enrollment_source=None,
    )
    return [(f.rule, f.study_day) for f in detect(PROTOCOL, events, context, as_of=NOW.date())]


def test_a_reason_that_is_not_an_irae_does_not_exempt() -> None:
    """prednisone whose reasonReference is COPD (Day 2) is prohibited; naming an irAE is not."""
    copd = kit.condition(id="p1-copd", patient="p1", code=COPD, onset=day(2))
    colitis = kit.condition(
        id="p1-colitis", patient="p1", code="Immune-related colitis", onset=day(2)
    )

    def pred(reason: str) -> dict[str, Any]:
        return pred_order("p1", "p1-pred", day(4), reasonReference=[kit.reference(reason)])

    assert _deviations(copd, pred("Condition/p1-copd")) == [("prohibited_medication", 4)]
    assert _deviations(colitis, pred("Condition/p1-colitis")) == []


def test_an_immune_related_condition_without_a_link_does_not_exempt() -> None:
    """CLINICAL.md names an AdverseEvent starting before the drug; a problem-list Condition needs
    the drug's reasonReference (a Condition recorded as an adverse event counts like one)."""
    colitis = kit.condition(
        id="p1-colitis", patient="p1", code="Immune-related colitis", onset=day(2)
    )
    as_ae = {**colitis, "category": [{"text": "Adverse event"}]}
    pred = pred_order("p1", "p1-pred", day(4))
    assert _deviations(colitis, pred) == [("prohibited_medication", 4)]
    assert _deviations(as_ae, pred) == []


def test_a_course_on_the_surgery_day_and_after_is_not_single_day() -> None:
    """IV dexamethasone from the surgery day for three days is a course, not a peri-operative dose."""
    course = kit.medication_request(
        id="p1-dex",
        patient="p1",
        medication=DEXAMETHASONE_IV,
        authored=day(18),
        dosageInstruction=[
            {
                "route": ROUTE_IV,
                "timing": {"repeat": {"boundsPeriod": kit.period(day(18), day(20))}},
            }
        ],
    )
    assert _deviations(course) == [("prohibited_medication", 18)]


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ({"code": "prohibited_medication"}, "needs `irae_valueset`"),
        ({"code": "dose_extra", "irae_valueset": "immune_related_ae"}, "takes no `irae_valueset`"),
        (
            {"code": "surgery_window", "perioperative": [{"valueset": "dexamethasone"}]},
            "takes no `irae_valueset` or `perioperative`",
        ),
    ],
)
def test_only_prohibited_medication_takes_irae_and_perioperative_settings(
    rule: dict[str, Any], error: str
) -> None:
    """The irAE value set is required where it is read and refused where it would be ignored."""
    with pytest.raises(ValueError, match=error):
        DeviationRule.model_validate({"severity": "major", "description": "x", **rule})


# -- 9, pure: which Specimens are a biopsy's cores ---------------------------------------------------------


def test_a_specimen_names_the_procedure_that_collected_it() -> None:
    """The cross-version extension on Specimen.collection (or, leniently, on the Specimen)."""
    on_collection, *_ = biopsy("p1", 1, 1)[1:]
    on_root = {
        **kit.specimen(id="s2", type=CORE, collected=day(-20)),
        "extension": [
            {"url": COLLECTION_PROCEDURE, "valueReference": kit.reference("Procedure/bx9")}
        ],
    }
    unlinked = kit.specimen(id="s3", type=CORE, collected=day(-20))
    found = [
        single(events_of(TERMS, [r])).values["procedure"]
        for r in (on_collection, on_root, unlinked)
    ]
    assert found == ["p1-bx1", "bx9", None]


def test_aliquots_of_a_core_are_not_more_cores() -> None:
    """A Specimen derived from another (a parent) is not a new core: 3 cores + 2 aliquots = 3."""
    procedure, *cores = biopsy("p1", 1, 3)
    parent = [kit.reference(f"Specimen/{cores[0]['id']}")]
    aliquots = [{**cores[0], "id": f"p1-aliquot{i}", "parent": parent} for i in (1, 2)]
    assert _deviations(procedure, *cores, *aliquots, biopsies=0) == []
    assert _deviations(procedure, *cores[:2], *aliquots, biopsies=0) == [
        ("screening_biopsy_count", None)
    ]


# -- 10, pure: one conversion to the site's calendar ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "zone", "day"),
    [
        ("2025-01-28T02:30:00Z", SITE, "2025-01-27"),  # UTC: the site's day
        ("2025-01-28T02:30:00+00:00", SITE, "2025-01-27"),  # an offset of zero is UTC too
        ("2025-01-28T02:30:00Z", "UTC", "2025-01-28"),
        ("2025-01-28T02:30:00Z", "Asia/Tokyo", "2025-01-28"),  # 11:30 in Tokyo
        ("2025-01-27T21:30:00-05:00", "Asia/Tokyo", "2025-01-27"),  # its own offset: its own day
        ("2025-01-27T23:30:00+14:00", SITE, "2025-01-27"),
        ("2025-01-28", SITE, "2025-01-28"),  # a date is a calendar day already
    ],
)
def test_in_zone_moves_only_utc_timestamps(text: str, zone: str, day: str) -> None:
    """CLINICAL.md: a timestamp keeps its own offset; the site's zone is for UTC ones."""
    parsed = parse_partial_date(text)
    assert parsed is not None
    local = in_zone(parsed, ZoneInfo(zone))
    assert (local.first, local.last, local.text) == (dt.date.fromisoformat(day),) * 2 + (text,)


def test_site_today_and_settings() -> None:
    """'Today' is the site's day at the instant; the setting defaults to UTC and refuses bad names."""
    assert site_date(SITE_NOW, ZoneInfo(SITE)) == dt.date(2025, 6, 29)
    assert site_date(SITE_NOW, dt.UTC) == dt.date(2025, 6, 30)
    assert str(Settings(site_timezone=SITE).site_zone()) == SITE
    assert Settings().site_timezone == "UTC"
    for bad in ("Mars/Olympus_Mons", "America", "utc", "", "../etc/passwd"):
        with pytest.raises(ValueError, match="is not an IANA time zone name"):
            Settings(site_timezone=bad)


# -- 11, pure: what a data point is, and when a metastasis is a recurrence -----------------------------


def test_the_official_diagnostic_reports_are_data_points() -> None:
    """Every HL7 DiagnosticReport example (all final) is one data point on its effective date (when
    the patient was examined), not on the later `issued` date."""
    found = {}
    for path in sorted((TEST_DATA / "fhir-r4-examples").glob("DiagnosticReport-*.json")):
        resource = loads(path.read_bytes())
        events = map_diagnostic_report(
            resource, SourceRef("DiagnosticReport", resource["id"], 1), context(TERMS)
        )
        found[resource["id"]] = [(e.kind, e.date.text if e.date else None) for e in events]
    assert found == {
        "102": [(EventKind.DATA_POINT, "2008-06-17")],
        "example-pgx": [(EventKind.DATA_POINT, "2016-10-15T12:34:56+11:00")],
        "f201": [(EventKind.DATA_POINT, "2012-12-01T12:00:00+01:00")],
        "gingival-mass": [(EventKind.DATA_POINT, "2017-03-02")],
        "pap": [(EventKind.DATA_POINT, "2013-02-11T10:33:33+11:00")],
        "ultrasound": [(EventKind.DATA_POINT, "2012-12-01T12:00:00+01:00")],
    }


@pytest.mark.parametrize(
    ("status", "kinds"),
    [
        ("final", [EventKind.DATA_POINT]),
        ("preliminary", [EventKind.DATA_POINT]),
        ("amended", [EventKind.DATA_POINT]),
        ("registered", []),  # ordered, no result yet
        ("cancelled", []),
        ("entered-in-error", []),
    ],
)
def test_a_lab_is_a_data_point_once_resulted(status: str, kinds: list[EventKind]) -> None:
    """A heart rate maps to no trial event but is a data point; not before it has a result."""
    heart_rate = kit.observation(
        id="hr",
        code=kit.coded(kit.LOINC, "8867-4", "Heart rate"),
        status=status,
        effective="2025-05-20T08:10:00-04:00",
        valueQuantity=kit.quantity(72, "/min"),
    )
    assert [e.kind for e in events_of(TERMS, [heart_rate])] == kinds


def _last(*resources: dict[str, Any]) -> str | None:
    """The last data point's day (ISO) of these resources, from Day 1 = 2025-03-10."""
    found = last_data_point(events_of(TERMS, resources), DAY1)
    return found[0].isoformat() if found else None


@pytest.mark.parametrize(
    ("resource", "last"),
    [
        (kit.procedure(id="x", code="Bronchoscopy", performed="2025-06-25"), "2025-06-25"),
        (kit.procedure(id="x", code="Bronchoscopy", status="preparation", performed="2025-06-25"), None),
        (kit.service_request(id="x", code=SURGERY, authored="2025-05-01", occurrence="2025-06-25"), None),
        (kit.encounter(id="x", status="planned", start="2025-06-25"), None),
        (kit.encounter(id="x", klass="IMP", start="2025-06-20", end="2025-06-25"), "2025-06-25"),
        (kit.medication_request(id="x", medication=PRED, authored="2025-06-25"), None),
        (kit.medication_statement(id="x", medication=PRED, status="intended", effectiveDateTime="2025-06-25"), None),
        (kit.medication_statement(id="x", medication=PRED, effectiveDateTime="2025-06-25"), "2025-06-25"),
        (kit.dose(id="x", drug=PRED, amount=20, when="2025-06-25"), "2025-06-25"),
        (kit.adverse_event(id="x", event="Fatigue", date="2025-06-25"), "2025-06-25"),
        (kit.condition(id="x", code=kit.HYPERTENSION, onset="2025-06-25"), "2025-06-25"),
        (kit.condition(id="x", code=kit.HYPERTENSION, recorded="2025-06-25"), "2025-06-25"),
        (kit.specimen(id="x", type="Blood", collected="2025-06-25"), "2025-06-25"),
        (kit.encounter(id="x", start="2025-03-01"), None),  # before Day 1
    ],
    ids=[
        "performed-procedure", "procedure-in-preparation", "service-request", "planned-visit",
        "finished-stay-ends", "order", "intended-use", "reported-use", "administration", "adverse-event", "condition-onset",
        "condition-recorded", "specimen", "before-day-1",
    ],
)  # fmt: skip
def test_only_performed_facts_are_data_points(resource: dict[str, Any], last: str | None) -> None:
    """CLINICAL.md: any performed, dated fact; never a planned one."""
    assert _last(resource) == last


def test_a_distant_metastasis_before_surgery_is_not_a_recurrence() -> None:
    """C79.31 found on Day 10, before surgery on Day 18, is not a recurrence (nor, alone,
    progression); the same after surgery is."""
    base = subject("p1", "001-001")

    def efs(onset: dt.date) -> tuple[bool, int | None]:
        met = kit.condition(id="p1-met", patient="p1", code=BRAIN_MET, onset=onset)
        t = event_free_survival(
            events_of(TERMS, [*base, met]), DAY1, recurrence_valueset="distant_metastasis"
        )
        return t.event, t.days

    assert efs(day(10)) == (False, 47)  # censored at the post-operative visit (Day 48)
    assert efs(day(18)) == (False, 47)  # found at surgery: not after it
    assert efs(day(19)) == (True, 18)
