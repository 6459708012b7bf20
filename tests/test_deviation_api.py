"""The deviation log over real HTTP, on both backends, with the derivation's clock frozen.

A hand-checked cohort of eight patients goes in through the FHIR API; the log must list exactly
the deviations written in the table below. Then one deviation goes through its life: staff
acknowledge and comment (optimistic locking), the data is corrected (resolved by the system), broken
again (reopened, same id), and `trialbridge reevaluate --as-of` raises what only time reveals.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import httpx
from sqlalchemy import text

from service.studies.interventional.deviation_sync import RESOLVED_BY_DATA
from tests.kit import fhir as kit
from tests.kit.cli import run_trialbridge
from tests.kit.client import put_resources
from tests.kit.clock import FROZEN_INSTANT
from tests.kit.evidence import cited
from tests.kit.live import Live, clocked_fixtures
from tests.kit.nct import NCT, day, deviations

ENROLLED = "2025-03-03"
NOW = dt.datetime(2025, 6, 30, 12, 0, tzinfo=dt.UTC)  # every window of the cohort has closed
NOW_TEXT = "2025-06-30T12:00:00Z"
SYRINGE = "dupilumab 300 MG in 2 ML Prefilled Syringe"
SURGERY = "Right upper lobectomy"

Resources = list[dict[str, Any]]


live, api, fhir = clocked_fixtures(NOW)


# -- FHIR builders (every resource id starts with its patient's id) ----------------------------------

STUDY = kit.research_study()


def subject(
    pid: str,
    number: str,
    *,
    surgery_day: int | None = 18,
    followup_after: int | None = 30,
    dupilumab: tuple[float, ...] = (300, 300),
    cemiplimab: bool = True,
    biopsies: int = 3,
    stool: bool = True,
    extra: Resources | None = None,
) -> Resources:
    """An enrolled subject who follows the schedule except where told otherwise."""
    out: Resources = [
        kit.patient(id=pid, mrn=f"MRN-{pid}", gender="female", birth_date="1956-02-11"),
        kit.research_subject(id=f"{pid}-rs", patient=pid, number=number, start=ENROLLED),
    ]
    for i, mg in enumerate(dupilumab):
        out.append(
            kit.dose(
                id=f"{pid}-dupi-{'ab'[i]}",
                patient=pid,
                drug=SYRINGE,
                amount=mg,
                when=f"2025-03-10T09:0{5 * i}:00-04:00",
            )
        )
    if cemiplimab:
        out.append(
            kit.dose(
                id=f"{pid}-cemi",
                patient=pid,
                drug="Libtayo 350 MG",
                amount=350,
                when="2025-03-10T10:00:00-04:00",
            )
        )
    for i in range(1, biopsies + 1):
        out.append(
            kit.procedure(
                id=f"{pid}-cnb-{i}",
                patient=pid,
                code="CT-guided core needle biopsy of lung",
                performed=day(-20),
            )
        )
    if stool:
        out.append(
            kit.specimen(id=f"{pid}-stool", patient=pid, type="Stool specimen", collected=day(-5))
        )
    if surgery_day is not None:
        out.append(
            kit.procedure(
                id=f"{pid}-surgery", patient=pid, code=SURGERY, performed=day(surgery_day)
            )
        )
        if followup_after is not None:
            out.append(
                kit.encounter(
                    id=f"{pid}-postop",
                    patient=pid,
                    start=f"{day(surgery_day) + dt.timedelta(days=followup_after)}T10:00:00-04:00",
                )
            )
    return out + (extra or [])


# -- reading the log -----------------------------------------------------------------------------------


def subject_ids(api: httpx.Client) -> dict[str, str]:
    """subject_number → pseudonymous subject_id."""
    response = api.get(f"/studies/{NCT}/subjects", params={"limit": 100})
    assert response.status_code == 200, response.text
    return {s["subject_number"]: s["subject_id"] for s in response.json()["subjects"]}


def one(api: httpx.Client, deviation_id: str) -> tuple[dict[str, Any], str]:
    """A deviation with its history, and its ETag."""
    response = api.get(f"/studies/{NCT}/deviations/{deviation_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body, response.headers["etag"]


def history(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(action, actor) of each change, oldest first."""
    return [(h["action"], h["actor"]) for h in body["history"]]


# -- the cohort -------------------------------------------------------------------------------------

Row = tuple[str, str, str, int | None, str, str, tuple[str, ...]]
# subject number, rule, severity, study day, date, message, evidence references


def cohort() -> list[Resources]:
    """Eight patients: one clean subject, six with known deviations, one non-subject candidate."""
    extra_dose = kit.dose(
        id="p6-dupi-c",
        patient="p6",
        drug="Dupixent 300 MG",
        amount=300,
        when=f"{day(8).isoformat()}T09:00:00-04:00",
    )
    steroid = kit.dose(
        id="p5-pred",
        patient="p5",
        drug=kit.PREDNISONE,
        amount=20,
        when=day(5).isoformat(),
        route="oral",
    )
    return [
        subject("p1", "001-001"),
        subject("p2", "001-002", surgery_day=31),
        subject("p3", "001-003", dupilumab=(300, 239), cemiplimab=False),
        subject("p4", "001-004", biopsies=2, stool=False),
        subject("p5", "001-005", surgery_day=None, extra=[steroid]),
        subject(
            "p6",
            "001-006",
            extra=[
                kit.condition(
                    id="p6-ra", patient="p6", code=kit.RHEUMATOID_ARTHRITIS, onset="2019-05-01"
                ),
                extra_dose,
            ],
        ),
        subject("p7", "001-007", followup_after=None),
        # a screening candidate, never enrolled: prednisone and no surgery are not deviations
        [
            kit.patient(id="p8", mrn="MRN-p8", gender="female", birth_date="1956-02-11"),
            kit.condition(id="p8-dx", patient="p8", code=kit.NSCLC, onset="2025-02-01"),
            kit.dose(
                id="p8-pred",
                patient="p8",
                drug=kit.PREDNISONE,
                amount=20,
                when="2025-03-12",
                route="oral",
            ),
        ],
    ]


EXPECTED: list[Row] = [
    ("001-002", "surgery_window", "major", 31, "2025-04-09",
     "surgery on Day 31; window Day 15–22",
     ("Procedure/p2-surgery/_history/1",)),
    ("001-003", "dose_mismatch", "major", 1, "2025-03-10",
     "dupilumab Day-1 total 539 mg (300 + 239); plan 600 mg ± 10 % (540–660 mg)",
     ("MedicationAdministration/p3-dupi-a/_history/1",
      "MedicationAdministration/p3-dupi-b/_history/1")),
    ("001-003", "dose_missing", "major", 1, "2025-03-10",
     "cemiplimab not given on Day 1 (never given); plan 350 mg IV",
     ()),
    ("001-004", "screening_biopsy_count", "minor", None, "2025-03-09",
     "2 core needle biopsies in the screening window Day -28 to Day -1; plan 3–6",
     ("Procedure/p4-cnb-1/_history/1", "Procedure/p4-cnb-2/_history/1")),
    ("001-004", "screening_stool_missing", "minor", None, "2025-03-09",
     "no stool sample in the screening window Day -28 to Day -1",
     ()),
    ("001-005", "surgery_window", "major", 22, "2025-03-31",
     "no surgery by Day 22; window Day 15–22",
     ()),
    ("001-005", "prohibited_medication", "major", 5, "2025-03-14",
     f"{kit.PREDNISONE} on Day 5, between Day 1 and surgery, with no immune-related adverse event before it",
     ("MedicationAdministration/p5-pred/_history/1",)),
    ("001-006", "ineligible_enrolled", "major", -7, "2025-03-03",
     "enrolled on 2025-03-03 while ineligible on that day",
     ("ResearchSubject/p6-rs/_history/1",)),
    ("001-006", "dose_extra", "major", 8, "2025-03-17",
     "dupilumab given again on Day 8; the protocol gives it on Day 1 only",
     ("MedicationAdministration/p6-dupi-c/_history/1",)),
    ("001-007", "followup_visit", "minor", 55, "2025-05-03",
     "no contact in the post-operative window 2025-04-19 to 2025-05-03 (30 ± 7 days after surgery)",
     ("Procedure/p7-surgery/_history/1",)),
]  # fmt: skip


def load_cohort(fhir: httpx.Client) -> None:
    """Write the study, then each patient in its own transaction."""
    put_resources(fhir, STUDY)
    for resources in cohort():
        put_resources(fhir, *resources)


def rows(api: httpx.Client, found: list[dict[str, Any]], numbers: dict[str, str]) -> list[Row]:
    """The log as table rows, in table order (subject number, then the table's rule order).

    Evidence is cited by opaque ids; each is resolved to the version it cites, as a monitor would.
    """
    by_subject = {v: k for k, v in numbers.items()}
    order = {(r[0], r[1]): i for i, r in enumerate(EXPECTED)}
    out = [
        (
            by_subject[d["subject_id"]],
            d["rule"],
            d["severity"],
            d["study_day"],
            d["date"],
            d["message"],
            tuple(e["reference"] for e in cited(api, NCT, d["evidence"])),
        )
        for d in found
    ]
    return sorted(out, key=lambda r: order.get((r[0], r[1]), len(order)))


def test_cohort_log_is_exactly_the_hand_checked_table(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """Every rule fires on the subject built to break it, and nowhere else (major/minor, day, text)."""
    load_cohort(fhir)
    numbers = subject_ids(api)
    assert sorted(numbers) == [f"001-00{i}" for i in range(1, 8)]  # p8 is not a subject
    found = deviations(api)
    assert rows(api, found, numbers) == EXPECTED
    assert [d["id"] for d in found] == sorted(d["id"] for d in found)  # the log is in id order
    for d in found:
        assert d["study_id"] == NCT
        assert d["status"] == "open"
        assert d["detected_at"] == d["updated_at"] == NOW_TEXT
        assert (d["acknowledged_by"], d["acknowledged_at"], d["resolved_at"]) == (None,) * 3
        assert d["resolution"] is None
        assert d["version"] == 1
        assert d["id"].startswith("DEV-")


def test_cohort_filters(api: httpx.Client, fhir: httpx.Client) -> None:
    """Monitors slice the log by subject, rule, severity, status and date; filters combine."""
    load_cohort(fhir)
    numbers = subject_ids(api)

    def table(**params: Any) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in rows(api, deviations(api, **params), numbers)]

    assert table(subject=numbers["001-003"]) == [
        ("001-003", "dose_mismatch"),
        ("001-003", "dose_missing"),
    ]
    assert table(subject=numbers["001-001"]) == []
    assert table(rule="surgery_window") == [
        ("001-002", "surgery_window"),
        ("001-005", "surgery_window"),
    ]
    assert table(severity="minor") == [
        ("001-004", "screening_biopsy_count"),
        ("001-004", "screening_stool_missing"),
        ("001-007", "followup_visit"),
    ]
    assert len(table(severity="major")) == 7
    assert len(table(status="open")) == 10
    assert table(status="resolved") == []
    assert table(date_from="2025-03-10", date_to="2025-03-17") == [
        ("001-003", "dose_mismatch"),
        ("001-003", "dose_missing"),
        ("001-005", "prohibited_medication"),
        ("001-006", "dose_extra"),
    ]
    assert table(date_from="2025-03-31") == [
        ("001-002", "surgery_window"),
        ("001-005", "surgery_window"),
        ("001-007", "followup_visit"),
    ]
    assert table(date_to="2025-03-09") == [
        ("001-004", "screening_biopsy_count"),
        ("001-004", "screening_stool_missing"),
        ("001-006", "ineligible_enrolled"),
    ]
    assert table(severity="major", date_from="2025-03-31") == [
        ("001-002", "surgery_window"),
        ("001-005", "surgery_window"),
    ]
    assert table(subject=numbers["001-005"], rule="prohibited_medication") == [
        ("001-005", "prohibited_medication")
    ]


def test_cohort_filter_values_are_checked(api: httpx.Client, fhir: httpx.Client) -> None:
    """A misspelt enum or date is an error, not silently an empty (or unfiltered) log."""
    load_cohort(fhir)
    for params in ({"severity": "critical"}, {"status": "closed"}, {"date_from": "03/10/2025"}):
        response = api.get(f"/studies/{NCT}/deviations", params=params)
        assert response.status_code == 422, params
        assert response.json()["error"]["code"] == "invalid_request"
    bad_cursor = api.get(f"/studies/{NCT}/deviations", params={"cursor": "bm90LW91cnM"})
    assert bad_cursor.status_code == 400
    assert bad_cursor.json()["error"]["code"] == "invalid_cursor"
    cohort_study = api.get("/studies/cirae-dupilumab/deviations")
    assert cohort_study.status_code == 404
    assert cohort_study.json()["error"]["code"] == "not_applicable"
    unknown = api.get(f"/studies/{NCT}/deviations/DEV-NOSUCHTHING")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "deviation_not_found"


def test_cohort_cursor_paging(api: httpx.Client, fhir: httpx.Client) -> None:
    """Pages of 3 walk the whole log once, in id order, and the last page says there is no more."""
    load_cohort(fhir)
    everything = [d["id"] for d in deviations(api)]
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = api.get(f"/studies/{NCT}/deviations", params=params).json()
        sizes.append(len(body["deviations"]))
        seen += [d["id"] for d in body["deviations"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sizes == [3, 3, 3, 1]
    assert seen == everything
    minor = api.get(f"/studies/{NCT}/deviations", params={"limit": 2, "severity": "minor"}).json()
    rest = api.get(
        f"/studies/{NCT}/deviations",
        params={"limit": 2, "severity": "minor", "cursor": minor["next_cursor"]},
    ).json()
    assert len(minor["deviations"]) == 2
    assert len(rest["deviations"]) == 1
    assert rest["next_cursor"] is None
    assert all(d["severity"] == "minor" for d in minor["deviations"] + rest["deviations"])


def test_cohort_as_csv(api: httpx.Client, fhir: httpx.Client) -> None:
    """Accept: text/csv gives a spreadsheet: a header row and one exact row per deviation."""
    load_cohort(fhir)
    numbers = subject_ids(api)
    logged = {(r[0], r[1]): d for d in deviations(api) for r in rows(api, [d], numbers)}
    ids = {key: d["id"] for key, d in logged.items()}
    sealed = {  # the CSV cites evidence as the JSON does: by evidence id, in the same order
        key: " ".join(e["evidence_id"] for e in d["evidence"]) for key, d in logged.items()
    }
    response = api.get(f"/studies/{NCT}/deviations", headers={"Accept": "text/csv"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert "link" not in response.headers
    table = list(csv.reader(io.StringIO(response.text)))
    assert table[0] == [
        "id",
        "subject_id",
        "rule",
        "severity",
        "status",
        "study_day",
        "date",
        "message",
        "evidence",
        "detected_at",
        "updated_at",
        "acknowledged_by",
        "acknowledged_at",
        "resolved_at",
        "resolution",
    ]
    expected = [
        [
            ids[(number, rule)],
            numbers[number],
            rule,
            severity,
            "open",
            "" if study_day is None else str(study_day),
            date,
            message,
            sealed[(number, rule)],
            NOW_TEXT,
            NOW_TEXT,
            "",
            "",
            "",
            "",
        ]
        for number, rule, severity, study_day, date, message, evidence in EXPECTED
    ]
    assert table[1:] == sorted(expected)  # rows in id order, like the JSON log


def test_csv_pages_follow_the_link_header_with_the_same_filters(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """A spreadsheet export walks its pages by `Link: rel=next`, which keeps filters and limit."""
    load_cohort(fhir)
    url = f"/studies/{NCT}/deviations"
    csv_only = {"Accept": "text/csv"}
    majors = [d["id"] for d in deviations(api, severity="major")]
    assert len(majors) == 7
    json_first = api.get(url, params={"limit": 4, "severity": "major"}).json()
    first = api.get(url, params={"limit": 4, "severity": "major"}, headers=csv_only)
    next_cursor = json_first["next_cursor"]
    assert first.headers["link"] == (f'<?limit=4&severity=major&cursor={next_cursor}>; rel="next"')
    link = first.headers["link"].removeprefix("<").split(">", 1)[0]
    second = api.get(url + link, headers=csv_only)
    assert second.status_code == 200
    assert "link" not in second.headers
    ids = [
        row[0]
        for text_ in (first.text, second.text)
        for row in list(csv.reader(io.StringIO(text_)))[1:]
    ]
    assert ids == majors


# -- one deviation's life -----------------------------------------------------------------------------


def late_surgery_subject(fhir: httpx.Client) -> None:
    """p1 operated on Day 31 (visit on 2025-05-03, inside the window of Day 31 and of Day 20)."""
    put_resources(fhir, STUDY)
    put_resources(
        fhir,
        *subject("p1", "001-001", surgery_day=31, followup_after=None),
        kit.encounter(id="p1-postop", patient="p1", start=f"{dt.date(2025, 5, 3)}T10:00:00-04:00"),
    )


def test_acknowledge_needs_the_current_etag(
    api: httpx.Client, fhir: httpx.Client, live: Live
) -> None:
    """Staff may only change what they saw: 428 without If-Match, 412 with a stale one."""
    late_surgery_subject(fhir)
    [found] = deviations(api)
    assert (found["rule"], found["message"]) == (
        "surgery_window",
        "surgery on Day 31; window Day 15–22",
    )
    body, etag = one(api, found["id"])
    assert etag == 'W/"1"'
    assert history(body) == [("opened", "system")]
    assert body["history"][0]["at"] == NOW_TEXT
    assert body["history"][0]["detail"] == {"message": "surgery on Day 31; window Day 15–22"}
    url = f"/studies/{NCT}/deviations/{found['id']}"
    patch = {"by": "j.doe@site.org", "status": "acknowledged", "comment": "surgeon on leave"}

    missing = api.patch(url, json=patch)
    assert missing.status_code == 428
    assert missing.json()["error"]["code"] == "precondition_required"
    stale = api.patch(url, json=patch, headers={"If-Match": 'W/"7"'})
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "version_mismatch"
    assert stale.json()["error"]["details"] == [{"current_etag": 'W/"1"'}]
    garbage = api.patch(url, json=patch, headers={"If-Match": "yesterday"})
    assert garbage.status_code == 400
    assert garbage.json()["error"]["code"] == "invalid_if_match"
    empty = api.patch(url, json={"by": "j.doe@site.org"}, headers={"If-Match": etag})
    assert empty.status_code == 400
    assert empty.json()["error"]["code"] == "nothing_to_change"
    unchanged, _ = one(api, found["id"])
    assert (unchanged["version"], history(unchanged)) == (1, [("opened", "system")])

    done = api.patch(url, json=patch, headers={"If-Match": etag})
    assert done.status_code == 200, done.text
    assert done.headers["etag"] == 'W/"2"'
    after = done.json()
    assert after["status"] == "acknowledged"
    assert after["acknowledged_by"] == "j.doe@site.org"
    acknowledged_at = dt.datetime.fromisoformat(after["acknowledged_at"])  # the wall clock's
    assert FROZEN_INSTANT <= acknowledged_at <= dt.datetime.now(dt.UTC)
    assert after["version"] == 2
    assert history(after) == [
        ("opened", "system"),
        ("acknowledged", "j.doe@site.org"),
        ("commented", "j.doe@site.org"),
    ]
    assert after["history"][2]["detail"] == {"comment": "surgeon on leave"}
    with live.engine.connect() as conn:  # stored with the change, in its transaction
        [recorded] = conn.execute(
            text("SELECT content FROM audit_record WHERE request_id = :r"),
            {"r": done.headers["x-request-id"]},
        ).scalars()
    event = json.loads(recorded)
    assert (event["action"], event["outcome"], "outcomeDesc" in event) == ("U", "0", False)
    named = [e["what"]["identifier"]["value"] for e in event["entity"] if "what" in e]
    assert named[:2] == [NCT, found["id"]]
    replay = api.patch(url, json=patch, headers={"If-Match": etag})  # a double-click
    assert replay.status_code == 412
    assert deviations(api, status="acknowledged") == [
        {k: v for k, v in after.items() if k != "history"}
    ]


def test_correction_resolves_keeps_annotations_and_rebreaking_reopens(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """A fixed record resolves the deviation by itself; staff notes survive; a relapse reopens it."""
    late_surgery_subject(fhir)
    [found] = deviations(api)
    dev_id = found["id"]
    _, etag = one(api, dev_id)
    url = f"/studies/{NCT}/deviations/{dev_id}"
    patch = {"by": "j.doe@site.org", "status": "acknowledged", "comment": "date under query"}
    assert api.patch(url, json=patch, headers={"If-Match": etag}).status_code == 200

    corrected_at = dt.datetime(2025, 7, 1, 9, 30, tzinfo=dt.UTC)
    live.now = corrected_at
    put_resources(
        fhir, kit.procedure(id="p1-surgery", patient="p1", code=SURGERY, performed=day(20))
    )  # the site corrects the surgery date
    body, etag = one(api, dev_id)
    assert body["status"] == "resolved"
    assert body["resolved_at"] == "2025-07-01T09:30:00Z"
    assert body["resolution"] == RESOLVED_BY_DATA
    assert body["acknowledged_by"] == "j.doe@site.org"
    assert body["message"] == "surgery on Day 31; window Day 15–22"  # what it was about
    assert history(body) == [
        ("opened", "system"),
        ("acknowledged", "j.doe@site.org"),
        ("commented", "j.doe@site.org"),
        ("resolved", "system"),
    ]
    assert body["history"][2]["detail"] == {"comment": "date under query"}
    assert body["history"][3] == {
        "at": "2025-07-01T09:30:00Z",
        "actor": "system",
        "action": "resolved",
        "detail": {"reason": RESOLVED_BY_DATA},
    }
    assert etag == f'W/"{body["version"]}"'
    assert deviations(api, status="open") == []
    assert [d["id"] for d in deviations(api, status="resolved")] == [dev_id]
    assert cited(api, NCT, body["evidence"])[0]["reference"] == "Procedure/p1-surgery/_history/1"
    exported = api.get(
        f"/studies/{NCT}/deviations", params={"status": "resolved"}, headers={"Accept": "text/csv"}
    )
    assert list(csv.reader(io.StringIO(exported.text)))[1][4:] == [
        "resolved",
        "31",
        "2025-04-09",
        "surgery on Day 31; window Day 15–22",
        body["evidence"][0]["evidence_id"],  # cited as the JSON log cites it
        NOW_TEXT,
        "2025-07-01T09:30:00Z",
        "j.doe@site.org",
        body["acknowledged_at"],  # staff actions are stamped by the wall clock
        "2025-07-01T09:30:00Z",
        RESOLVED_BY_DATA,
    ]
    refused = api.patch(url, json={"by": "x", "status": "acknowledged"}, headers={"If-Match": etag})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "already_resolved"

    live.now = dt.datetime(2025, 7, 2, 8, 0, tzinfo=dt.UTC)
    put_resources(
        fhir, kit.procedure(id="p1-surgery", patient="p1", code=SURGERY, performed=day(31))
    )  # the correction is undone
    [reopened] = deviations(api)
    assert reopened["id"] == dev_id
    body, _ = one(api, dev_id)
    assert body["status"] == "open"
    assert (body["resolved_at"], body["resolution"]) == (None, None)
    assert cited(api, NCT, body["evidence"])[0]["reference"] == "Procedure/p1-surgery/_history/3"
    assert history(body) == [
        ("opened", "system"),
        ("acknowledged", "j.doe@site.org"),
        ("commented", "j.doe@site.org"),
        ("resolved", "system"),
        ("reopened", "system"),
    ]
    assert body["history"][4]["at"] == "2025-07-02T08:00:00Z"


def test_same_cause_keeps_the_same_id_across_recomputation(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """Unrelated updates recompute the subject without touching the deviation; evidence updates it."""
    put_resources(fhir, STUDY)
    put_resources(fhir, *subject("p3", "001-003", dupilumab=(300, 239)))
    [before] = deviations(api)
    assert before["message"] == (
        "dupilumab Day-1 total 539 mg (300 + 239); plan 600 mg ± 10 % (540–660 mg)"
    )

    live.now = NOW + dt.timedelta(days=1)
    put_resources(
        fhir, kit.patient(id="p3", mrn="MRN-p3", gender="male", birth_date="1956-02-11")
    )  # nothing a rule reads
    put_resources(
        fhir, kit.encounter(id="p3-postop", patient="p3", start=f"{day(50)}T10:00:00-04:00")
    )  # another visit inside the follow-up window
    [same] = deviations(api)
    assert same == before

    # A new version of the first syringe's record (a note only): same cause, same id and message;
    # only the evidence now names version 2.
    first = kit.dose(
        id="p3-dupi-a",
        patient="p3",
        drug=SYRINGE,
        amount=300,
        when="2025-03-10T09:00:00-04:00",
    )
    put_resources(fhir, {**first, "note": [{"text": "lot 4711"}]})
    [updated] = deviations(api)
    assert updated["id"] == before["id"]
    assert updated["message"] == before["message"]
    assert [e["reference"] for e in cited(api, NCT, updated["evidence"])] == [
        "MedicationAdministration/p3-dupi-a/_history/2",
        "MedicationAdministration/p3-dupi-b/_history/1",
    ]
    assert updated["version"] == 2
    body, _ = one(api, before["id"])
    assert history(body) == [("opened", "system"), ("updated", "system")]


def test_two_subjects_with_the_same_cause_have_different_ids(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """The id is per subject (keyed hash), so two late surgeries are two deviations."""
    put_resources(fhir, STUDY)
    put_resources(fhir, *subject("p1", "001-001", surgery_day=31))
    put_resources(fhir, *subject("p2", "001-002", surgery_day=31))
    found = deviations(api, rule="surgery_window")
    assert len({d["id"] for d in found}) == 2
    assert len({d["subject_id"] for d in found}) == 2


def test_deleting_the_subject_record_resolves_its_deviations(
    api: httpx.Client, fhir: httpx.Client
) -> None:
    """A patient who stops being a subject keeps a log entry, resolved with the reason."""
    put_resources(fhir, STUDY)
    put_resources(fhir, *subject("p2", "001-002", surgery_day=31))
    [found] = deviations(api)
    assert fhir.delete("ResearchSubject/p2-rs").status_code == 204
    body, _ = one(api, found["id"])
    assert body["status"] == "resolved"
    assert body["resolution"] == (
        "resolved by the system: the patient is no longer a subject of the study"
    )


# -- time passing: trialbridge reevaluate --as-of -------------------------------------------------------


def reevaluate(live: Live, as_of: str) -> str:
    """Run the installed console script against the test database."""
    result = run_trialbridge(live.database_url, "reevaluate", "--as-of", as_of, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_reevaluate_as_of_raises_no_surgery_once_the_window_closed(
    live: Live, api: httpx.Client, fhir: httpx.Client
) -> None:
    """Nothing is written on Day 23, yet the deviation must appear: the daily re-check raises it."""
    live.now = dt.datetime(2025, 3, 29, 15, 0, tzinfo=dt.UTC)  # Day 20: surgery may still come
    put_resources(fhir, STUDY)
    put_resources(fhir, *subject("p5", "001-005", surgery_day=None))
    assert deviations(api) == []

    assert reevaluate(live, "2025-03-31") == "re-evaluated 1 patient(s)\n"  # Day 22
    assert deviations(api) == []

    assert reevaluate(live, "2025-04-01") == "re-evaluated 1 patient(s)\n"  # Day 23
    [found] = deviations(api)
    assert (found["rule"], found["severity"], found["study_day"], found["date"]) == (
        "surgery_window",
        "major",
        22,
        "2025-03-31",
    )
    assert found["message"] == "no surgery by Day 22; window Day 15–22"
    assert found["detected_at"] == "2025-04-01T12:00:00Z"
    assert found["evidence"] == []

    # Re-checking on later days keeps the deviation as it is: no new version, no noise.
    assert reevaluate(live, "2025-04-02") == "re-evaluated 1 patient(s)\n"
    body, etag = one(api, found["id"])
    assert (body["version"], etag) == (1, 'W/"1"')
    assert history(body) == [("opened", "system")]

    live.now = dt.datetime(2025, 4, 3, 10, 0, tzinfo=dt.UTC)
    put_resources(
        fhir, kit.procedure(id="p5-surgery", patient="p5", code=SURGERY, performed=day(25))
    )  # operated late after all: the cause is now the date
    [late] = deviations(api)
    assert late["id"] == found["id"]
    assert late["message"] == "surgery on Day 25; window Day 15–22"
    assert late["status"] == "open"
