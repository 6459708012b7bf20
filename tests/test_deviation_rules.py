"""Known answers for the NCT06088771 deviation rules, on events the real mappers derive.

One on-protocol subject (Day 1 = 2025-03-10) is built from hand-written FHIR; each test changes one
thing on either side of a rule's boundary and states the exact findings: rule, cause, message, study
day, date and evidence.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from functools import partial
from typing import Any

import pytest

from fhir_mapping.events.model import SourceRef, TrialEvent
from service.protocol.terminology import build_terminology
from service.studies.interventional.deviation_rules import Finding, SubjectContext, detect
from service.studies.interventional.eligibility import evaluate
from service.studies.interventional.membership import trial_membership
from tests.kit import fhir as kit
from tests.kit.mapping import events_of as map_all
from tests.kit.protocols import trial_protocol

TERMINOLOGY = build_terminology()
PROTOCOL = trial_protocol(TERMINOLOGY)

DAY1 = dt.date(2025, 3, 10)
ENROLLED = dt.date(2025, 3, 3)
LATER = dt.date(2025, 12, 31)  # every window has closed
Resources = dict[str, dict[str, Any]]


def day(n: int) -> dt.date:
    """The calendar date of study day n (CDISC: no Day 0)."""
    return DAY1 + dt.timedelta(days=n - 1 if n > 0 else n)


def ref(resource_type: str, resource_id: str) -> SourceRef:
    """Evidence: version 1 of a resource (every test resource is a first version)."""
    return SourceRef(resource_type, resource_id, 1)


# -- p1's FHIR: the kit's builders with this subject's defaults ---------------------------------------

enrollment = partial(kit.research_subject, id="rs-p1", number="001-001", start=ENROLLED)
biopsy = partial(kit.procedure, code="CT-guided core needle biopsy of lung")
surgery = partial(kit.procedure, id="surgery", code="Right upper lobectomy")
stool = partial(kit.specimen, id="stool", status="available", type="Stool specimen")


def at_ten(day: dt.date) -> str:
    """10:00 on a day in New York (EST), when the clinic charts its visits."""
    return f"{day.isoformat()}T10:00:00-05:00"


# Surgery on Day 18; the post-operative window is then 2025-04-19 .. 2025-05-03 (Day 41 .. Day 55).
SURGERY_DAY = day(18)
FOLLOWUP_FIRST = SURGERY_DAY + dt.timedelta(days=23)
FOLLOWUP_LAST = SURGERY_DAY + dt.timedelta(days=37)
WINDOW_TEXT = "post-operative window 2025-04-19 to 2025-05-03 (30 ± 7 days after surgery)"


def on_protocol() -> Resources:
    """A subject who followed the schedule exactly: no deviation at any as-of day."""
    resources = [
        kit.research_study(),
        kit.patient(id="p1", gender="male", birth_date="1957-06-14"),
        enrollment(),
        kit.dose(
            id="dupi-a",
            drug="dupilumab 300 MG in 2 ML Prefilled Syringe",
            amount=300,
            when="2025-03-10T09:00:00-05:00",
        ),
        kit.dose(
            id="dupi-b",
            drug="dupilumab 300 MG in 2 ML Prefilled Syringe",
            amount=300,
            when="2025-03-10T09:05:00-05:00",
        ),
        kit.dose(
            id="cemi",
            drug="Libtayo 350 MG in 7 ML Injection",
            amount=0.35,
            unit="g",
            when="2025-03-10T10:00:00-05:00",
        ),
        biopsy(id="cnb-1", performed=day(-20)),
        biopsy(id="cnb-2", performed=day(-20)),
        biopsy(id="cnb-3", performed=day(-19)),
        stool(collected=day(-5)),
        surgery(performed=SURGERY_DAY),
        kit.encounter(id="postop", start=at_ten(SURGERY_DAY + dt.timedelta(days=30))),
    ]
    return {r["id"]: r for r in resources}


SECOND_SYRINGE = "2025-03-10T09:05:00-05:00"


def with_(base: Resources, *resources: dict[str, Any]) -> Resources:
    """The resources, with these added or replacing those of the same id."""
    return {**base, **{r["id"]: r for r in resources}}


def without(base: Resources, *ids: str) -> Resources:
    """The resources, without these ids."""
    return {k: v for k, v in base.items() if k not in ids}


def events_of(resources: Resources) -> list[TrialEvent]:
    """What the real mappers derive from the resources (each at version 1)."""
    return map_all(TERMINOLOGY, resources.values())


def context(events: list[TrialEvent]) -> SubjectContext:
    """What the service derives besides events: membership, Day 1, eligibility at enrollment."""
    facts = trial_membership(PROTOCOL, events)
    assert facts is not None
    at_enrollment = None
    if facts.enrolled_on is not None:
        at_enrollment = evaluate(
            PROTOCOL,
            events,
            as_of=facts.enrolled_on,
            enrolled_on=facts.enrolled_on,
            day1=facts.day1,
        ).overall
    return SubjectContext(
        day1=facts.day1,
        enrolled_on=facts.enrolled_on,
        status=facts.status,
        eligible_at_enrollment=at_enrollment,
        enrollment_source=facts.evidence[0] if facts.evidence else None,
    )


def findings(resources: Resources, as_of: dt.date = LATER) -> list[Finding]:
    """Every deviation the resources show as of a day."""
    events = events_of(resources)
    return detect(PROTOCOL, events, context(events), as_of=as_of)


def only(rule: str, found: Iterable[Finding]) -> list[Finding]:
    """The findings of one rule."""
    return [f for f in found if f.rule == rule]


# -- the baseline -------------------------------------------------------------------------------------


def test_on_protocol_subject_has_no_deviation_on_any_day() -> None:
    """The baseline every other test changes must be clean, or their exact lists prove nothing."""
    events = events_of(on_protocol())
    ctx = context(events)
    assert ctx.day1 == DAY1
    assert ctx.enrolled_on == ENROLLED
    assert ctx.status == "on-study"
    for as_of in (day(1), day(22), day(23), FOLLOWUP_LAST, FOLLOWUP_LAST + dt.timedelta(1), LATER):
        assert detect(PROTOCOL, events, ctx, as_of=as_of) == [], as_of


def test_no_day1_means_no_time_relative_rule_fires() -> None:
    """Before the first dose there is no Day 1: schedule rules cannot be placed and must stay quiet."""
    base = without(on_protocol(), "dupi-a", "dupi-b", "cemi")
    assert findings(base) == []


def test_nothing_is_judged_as_of_a_day_before_day1() -> None:
    """As of Day −1 the doses are still to come, not "never given" (backfills; doses east of UTC)."""
    assert findings(on_protocol(), as_of=day(-1)) == []
    east = with_(
        on_protocol(),
        kit.dose(id="dupi-a", drug="Dupixent", amount=300, when="2025-03-10T08:00:00+09:00"),
        kit.dose(id="dupi-b", drug="Dupixent", amount=300, when="2025-03-10T08:05:00+09:00"),
        kit.dose(id="cemi", drug="Libtayo", amount=350, when="2025-03-10T09:00:00+09:00"),
    )
    assert findings(east, as_of=dt.date(2025, 3, 9)) == []  # 2025-03-09T23:00Z
    assert findings(east, as_of=DAY1) == []


def test_ineligible_enrollment_before_day1_has_no_study_day_yet() -> None:
    """As of a day before the first dose the deviation is known, but not its study day."""
    base = with_(on_protocol(), rheumatoid_arthritis(dt.date(2019, 5, 1)))
    assert [(f.rule, f.study_day) for f in findings(base, as_of=dt.date(2025, 3, 5))] == [
        ("ineligible_enrolled", None)
    ]
    assert [(f.rule, f.study_day) for f in findings(base, as_of=DAY1)] == [
        ("ineligible_enrolled", -7)
    ]


def test_findings_do_not_depend_on_the_order_events_arrive_in() -> None:
    """Storage may return events in any order; messages and evidence must come out the same."""
    base = with_(
        without(on_protocol(), "cnb-3"),
        kit.dose(id="dupi-b", drug="Dupixent", amount=239, when=SECOND_SYRINGE),
        kit.dose(id="dupi-c", drug="Dupixent", amount=300, when=day(8)),
    )
    events = events_of(base)
    ctx = context(events)
    expected = detect(PROTOCOL, events, ctx, as_of=LATER)
    assert [f.rule for f in expected] == ["dose_mismatch", "dose_extra", "screening_biopsy_count"]
    assert detect(PROTOCOL, list(reversed(events)), ctx, as_of=LATER) == expected
    assert detect(PROTOCOL, events[3:] + events[:3], ctx, as_of=LATER) == expected


# -- surgery_window -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("study_day", "date"), [(15, day(15)), (22, day(22))])
def test_surgery_on_the_window_edges_is_on_protocol(study_day: int, date: dt.date) -> None:
    """Day 15 and Day 22 are both inside the inclusive window Day 15–22."""
    assert date == DAY1 + dt.timedelta(days=study_day - 1)
    assert findings(with_(on_protocol(), surgery(performed=date))) == []


@pytest.mark.parametrize(
    ("date", "message", "study_day"),
    [
        (dt.date(2025, 4, 1), "surgery on Day 23; window Day 15–22", 23),
        (dt.date(2025, 3, 23), "surgery on Day 14; window Day 15–22", 14),
    ],
    ids=["day23", "day14"],
)
def test_surgery_one_day_outside_the_window(date: dt.date, message: str, study_day: int) -> None:
    """One day past either edge is a major deviation naming the day and the window."""
    assert findings(with_(on_protocol(), surgery(performed=date))) == [
        Finding(
            "surgery_window", "surgery", message, study_day, date, (ref("Procedure", "surgery"),)
        )
    ]


def test_no_surgery_is_raised_only_once_day_22_has_passed() -> None:
    """Missing surgery is not a deviation while it can still happen in the window (Day 22)."""
    base = without(on_protocol(), "surgery")
    assert findings(base, as_of=dt.date(2025, 3, 31)) == []  # Day 22
    assert findings(base, as_of=dt.date(2025, 4, 1)) == [  # Day 23
        Finding(
            "surgery_window",
            "surgery",
            "no surgery by Day 22; window Day 15–22",
            22,
            dt.date(2025, 3, 31),
            (),
        )
    ]


def test_planned_surgery_is_not_surgery() -> None:
    """A resection still in preparation has not happened: Day 23 without one is a deviation."""
    base = with_(
        on_protocol(),
        kit.procedure(
            id="surgery", code="Right upper lobectomy", performed=day(25), status="preparation"
        ),
    )
    assert findings(base, as_of=day(23)) == [
        Finding(
            "surgery_window",
            "surgery",
            "no surgery by Day 22; window Day 15–22",
            22,
            day(22),
            (),
        )
    ]


def test_surgery_recorded_after_the_as_of_day_is_not_known_yet() -> None:
    """Evaluating as of a past day ignores a surgery dated later (backfills are honest)."""
    base = with_(on_protocol(), surgery(performed=day(31)))
    assert only("surgery_window", findings(base, as_of=day(30))) == [
        Finding(
            "surgery_window",
            "surgery",
            "no surgery by Day 22; window Day 15–22",
            22,
            day(22),
            (),
        )
    ]
    assert only("surgery_window", findings(base, as_of=day(31))) == [
        Finding(
            "surgery_window",
            "surgery",
            "surgery on Day 31; window Day 15–22",
            31,
            dt.date(2025, 4, 9),
            (ref("Procedure", "surgery"),),
        )
    ]


# -- doses ----------------------------------------------------------------------------------------------


def test_two_syringes_of_300_mg_are_the_600_mg_plan() -> None:
    """Dupilumab is often charted as 2 × 300 mg: the Day-1 total is what counts."""
    events = events_of(on_protocol())
    doses = [e.values["dose"]["mg"] for e in events if "dupilumab" in e.concept_ids]
    assert doses == ["300", "300"]
    assert findings(on_protocol()) == []


def test_540_mg_is_within_ten_percent_of_600() -> None:
    """The lower tolerance edge (600 − 10 % = 540 mg) is on-protocol."""
    base = with_(
        on_protocol(), kit.dose(id="dupi-b", drug="Dupixent", amount=240, when=SECOND_SYRINGE)
    )
    assert findings(base) == []


def test_539_mg_is_a_dose_mismatch() -> None:
    """One milligram under the tolerance is a major deviation that shows the sum and the range."""
    base = with_(
        on_protocol(), kit.dose(id="dupi-b", drug="Dupixent", amount=239, when=SECOND_SYRINGE)
    )
    assert findings(base) == [
        Finding(
            "dose_mismatch",
            "dupilumab",
            "dupilumab Day-1 total 539 mg (300 + 239); plan 600 mg ± 10 % (540–660 mg)",
            1,
            DAY1,
            (ref("MedicationAdministration", "dupi-a"), ref("MedicationAdministration", "dupi-b")),
        )
    ]


def test_661_mg_is_a_dose_mismatch_and_660_is_not() -> None:
    """The upper tolerance edge is inclusive too."""
    at_edge = with_(
        on_protocol(), kit.dose(id="dupi-b", drug="Dupixent", amount=360, when=SECOND_SYRINGE)
    )
    assert findings(at_edge) == []
    over = with_(
        on_protocol(), kit.dose(id="dupi-b", drug="Dupixent", amount=361, when=SECOND_SYRINGE)
    )
    assert [(f.rule, f.message) for f in findings(over)] == [
        (
            "dose_mismatch",
            "dupilumab Day-1 total 661 mg (300 + 361); plan 600 mg ± 10 % (540–660 mg)",
        )
    ]


@pytest.mark.parametrize(
    ("value", "unit"), [(350, "mg"), (0.35, "g"), (350000, "ug")], ids=["mg", "g", "ug"]
)
def test_cemiplimab_doses_are_normalised_to_mg(value: float, unit: str) -> None:
    """350 mg, 0.35 g and 350000 ug are the same dose (UCUM units are converted before checking)."""
    base = with_(
        on_protocol(), kit.dose(id="cemi", drug="Libtayo", amount=value, unit=unit, when=day(1))
    )
    assert findings(base) == []


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        pytest.param(
            kit.dose(id="cemi", drug="Libtayo", amount=0.3, unit="g", when=day(1)),
            Finding(
                "dose_mismatch",
                "cemiplimab",
                "cemiplimab Day-1 total 300 mg (300); plan 350 mg ± 10 % (315–385 mg)",
                1,
                DAY1,
                (ref("MedicationAdministration", "cemi"),),
            ),
            id="cemiplimab-in-grams-below-tolerance",
        ),
        pytest.param(
            kit.dose(id="cemi", drug="Libtayo", amount=7, unit="mL", when=day(1)),
            Finding(
                "dose_mismatch",
                "cemiplimab",
                "cemiplimab Day-1 dose not in a mass unit; plan 350 mg",
                1,
                DAY1,
                (ref("MedicationAdministration", "cemi"),),
            ),
            id="dose-in-a-non-mass-unit-cannot-be-checked",
        ),
        pytest.param(
            kit.dose(id="cemi", drug="Libtayo", amount=350, when=day(3)),
            Finding(
                "dose_missing",
                "cemiplimab",
                "cemiplimab not given on Day 1 (first given on Day 3); plan 350 mg IV",
                1,
                DAY1,
                (ref("MedicationAdministration", "cemi"),),
            ),
            id="first-given-on-day-3-is-missing-not-extra",
        ),
        pytest.param(
            kit.dose(id="dupi-c", drug="Dupixent", amount=300, when=day(8)),
            Finding(
                "dose_extra",
                "dupilumab:day8",
                "dupilumab given again on Day 8; the protocol gives it on Day 1 only",
                8,
                dt.date(2025, 3, 17),
                (ref("MedicationAdministration", "dupi-c"),),
            ),
            id="given-again-on-day-8",
        ),
    ],
)
def test_one_changed_dose_is_exactly_one_finding(
    changed: dict[str, Any], expected: Finding
) -> None:
    """One finding per change: g said in mg, mL unchecked, a late first dose missing, a rerun extra."""
    assert findings(with_(on_protocol(), changed)) == [expected]


def test_study_drug_never_given() -> None:
    """A study drug with no administration at all is dose_missing on Day 1, with no evidence."""
    base = without(on_protocol(), "cemi")
    assert findings(base) == [
        Finding(
            "dose_missing",
            "cemiplimab",
            "cemiplimab not given on Day 1 (never given); plan 350 mg IV",
            1,
            DAY1,
            (),
        )
    ]


def test_not_done_administration_is_not_a_dose() -> None:
    """A charted-but-not-given dose (status not-done) is neither a dose nor an extra dose."""
    skipped = {
        **kit.dose(id="dupi-c", drug="Dupixent", amount=300, when=day(8)),
        "status": "not-done",
    }
    assert findings(with_(on_protocol(), skipped)) == []


# -- screening ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "deviation"), [(2, True), (3, False), (6, False), (7, True)], ids=str
)
def test_core_biopsy_count_boundaries(count: int, deviation: bool) -> None:
    """3–6 core biopsies in the screening window are on-protocol; 2 and 7 are minor deviations."""
    base = without(on_protocol(), "cnb-1", "cnb-2", "cnb-3")
    ids = [f"cnb-{i}" for i in range(1, count + 1)]
    base = with_(base, *(biopsy(id=i, performed=day(-10)) for i in ids))
    expected = [
        Finding(
            "screening_biopsy_count",
            "screening",
            f"{count} core needle biopsies in the screening window Day -28 to Day -1; plan 3–6",
            None,
            day(-1),
            tuple(ref("Procedure", i) for i in ids),
        )
    ]
    assert findings(base) == (expected if deviation else [])


def test_biopsy_on_day_minus_28_counts_and_day_minus_29_does_not() -> None:
    """The screening window is the 28 days before Day 1: Day −28 is in, Day −29 is out."""
    assert findings(with_(on_protocol(), biopsy(id="cnb-3", performed=day(-28)))) == []
    outside = with_(on_protocol(), biopsy(id="cnb-3", performed=day(-29)))
    assert day(-29) == dt.date(2025, 2, 9)
    assert findings(outside) == [
        Finding(
            "screening_biopsy_count",
            "screening",
            "2 core needle biopsies in the screening window Day -28 to Day -1; plan 3–6",
            None,
            dt.date(2025, 3, 9),
            (ref("Procedure", "cnb-1"), ref("Procedure", "cnb-2")),
        )
    ]


def test_a_lung_biopsy_that_is_not_core_needle_does_not_count() -> None:
    """A bronchoscopic lung biopsy is not one of the planned core needle biopsies."""
    base = with_(
        on_protocol(), kit.procedure(id="cnb-3", code="Biopsy of lung", performed=day(-19))
    )
    assert [(f.rule, f.evidence) for f in findings(base)] == [
        ("screening_biopsy_count", (ref("Procedure", "cnb-1"), ref("Procedure", "cnb-2")))
    ]


def test_stool_missing_vs_present_on_day_minus_5() -> None:
    """The stool sample is required in the screening window; Day −5 is inside it."""
    assert findings(with_(on_protocol(), stool(collected=day(-5)))) == []
    assert findings(without(on_protocol(), "stool")) == [
        Finding(
            "screening_stool_missing",
            "screening",
            "no stool sample in the screening window Day -28 to Day -1",
            None,
            dt.date(2025, 3, 9),
            (),
        )
    ]


def test_stool_collected_on_day_1_is_not_a_screening_sample() -> None:
    """Screening is before Day 1: a sample on the dosing day does not satisfy it."""
    assert [f.rule for f in findings(with_(on_protocol(), stool(collected=day(1))))] == [
        "screening_stool_missing"
    ]


# -- followup_visit ---------------------------------------------------------------------------------


def test_followup_at_surgery_plus_23_is_inside_the_window() -> None:
    """30 − 7 = 23 days after surgery is the first day of the post-operative window."""
    base = with_(
        on_protocol(), kit.encounter(id="postop", start=at_ten(SURGERY_DAY + dt.timedelta(days=23)))
    )
    assert findings(base) == []


def test_followup_at_surgery_plus_22_is_outside_once_the_window_has_passed() -> None:
    """An early contact is a deviation, but only once the window closed without one inside it."""
    early = SURGERY_DAY + dt.timedelta(days=22)
    base = with_(on_protocol(), kit.encounter(id="postop", start=at_ten(early)))
    assert findings(base, as_of=FOLLOWUP_LAST) == []  # a visit may still come
    assert findings(base, as_of=FOLLOWUP_LAST + dt.timedelta(days=1)) == [
        Finding(
            "followup_visit",
            "followup",
            f"post-operative contact on 2025-04-18, outside the {WINDOW_TEXT}",
            55,
            dt.date(2025, 5, 3),
            (ref("Encounter", "postop"), ref("Procedure", "surgery")),
        )
    ]


def test_no_followup_contact_at_all() -> None:
    """No contact after surgery is raised the day after the window ends, never before."""
    base = without(on_protocol(), "postop")
    assert findings(base, as_of=dt.date(2025, 5, 3)) == []
    assert findings(base, as_of=dt.date(2025, 5, 4)) == [
        Finding(
            "followup_visit",
            "followup",
            f"no contact in the {WINDOW_TEXT}",
            55,
            dt.date(2025, 5, 3),
            (ref("Procedure", "surgery"),),
        )
    ]


def test_followup_at_surgery_plus_37_is_inside_and_38_is_not() -> None:
    """30 + 7 = 37 days after surgery is the last day of the window."""
    assert (
        findings(with_(on_protocol(), kit.encounter(id="postop", start=at_ten(FOLLOWUP_LAST))))
        == []
    )
    late = with_(
        on_protocol(),
        kit.encounter(id="postop", start=at_ten(FOLLOWUP_LAST + dt.timedelta(days=1))),
    )
    assert [(f.rule, f.message) for f in findings(late)] == [
        ("followup_visit", f"post-operative contact on 2025-05-04, outside the {WINDOW_TEXT}")
    ]


def test_planned_encounter_is_not_a_contact() -> None:
    """A booked (planned) visit inside the window is not a contact that took place."""
    planned = {
        **kit.encounter(id="postop", start=at_ten(SURGERY_DAY + dt.timedelta(days=30))),
        "status": "planned",
    }
    assert [f.message for f in findings(with_(on_protocol(), planned))] == [
        f"no contact in the {WINDOW_TEXT}"
    ]


# -- prohibited_medication --------------------------------------------------------------------------


def test_prednisone_between_day1_and_surgery_is_prohibited() -> None:
    """Systemic glucocorticoid before surgery with no irAE is a major deviation, per administration."""
    base = with_(
        on_protocol(),
        kit.dose(id="pred", drug=kit.PREDNISONE, amount=20, when=day(3), route="oral"),
    )
    assert findings(base) == [
        Finding(
            "prohibited_medication",
            "MedicationAdministration/pred",
            f"{kit.PREDNISONE} on Day 3, between Day 1 and surgery, with no immune-related "
            "adverse event before it",
            3,
            dt.date(2025, 3, 12),
            (ref("MedicationAdministration", "pred"),),
        )
    ]


def _related_rash(onset: dt.date) -> dict[str, Any]:
    """An AdverseEvent rash with cemiplimab as a suspect assessed probably related: an irAE."""
    return kit.adverse_event(
        id="rash",
        event="Maculopapular rash",
        date=onset,
        suspectEntity=[
            {
                "instance": {"reference": "Medication/cemi", "display": "Libtayo 350 MG"},
                "causality": [
                    {
                        "assessment": kit.coded(
                            f"{kit.HL7}/adverse-event-causality-assess",
                            "probably-likely",
                            "Probably/Likely",
                        )
                    }
                ],
            }
        ],
    )


def test_prednisone_after_an_irae_onset_is_allowed() -> None:
    """Treating an immune-related adverse event (rash on Day 2, cemiplimab probably related) is
    not a protocol deviation (CLINICAL.md rev 2: the record must say the AE is immune-related)."""
    rash = _related_rash(day(2))
    base = with_(
        on_protocol(),
        rash,
        kit.dose(id="pred", drug=kit.PREDNISONE, amount=20, when=day(3), route="oral"),
    )
    assert findings(base) == []


def test_prednisone_before_the_irae_onset_is_still_prohibited() -> None:
    """An irAE that starts after the steroid does not justify it."""
    rash = _related_rash(day(4))
    base = with_(
        on_protocol(),
        rash,
        kit.dose(id="pred", drug=kit.PREDNISONE, amount=20, when=day(3), route="oral"),
    )
    assert [(f.rule, f.study_day) for f in findings(base)] == [("prohibited_medication", 3)]


def test_topical_steroid_is_allowed() -> None:
    """A cream is local, not systemic immunosuppression."""
    cream = kit.dose(
        id="hc",
        drug="hydrocortisone 10 MG/ML Topical Cream",
        amount=1,
        unit="g",
        when=day(3),
        route="topical",
    )
    assert findings(with_(on_protocol(), cream)) == []


def test_prednisone_after_surgery_is_not_this_rule() -> None:
    """The rule covers Day 1 to surgery; post-operative steroids are outside it."""
    base = with_(
        on_protocol(),
        kit.dose(id="pred", drug=kit.PREDNISONE, amount=20, when=day(19), route="oral"),
    )
    assert findings(base) == []


def test_prednisone_on_the_day_of_surgery_is_inside_the_rule() -> None:
    """The surgery day is the last day of the period (inclusive)."""
    base = with_(
        on_protocol(),
        kit.dose(id="pred", drug=kit.PREDNISONE, amount=20, when=SURGERY_DAY, route="oral"),
    )
    assert [(f.rule, f.study_day) for f in findings(base)] == [("prohibited_medication", 18)]


def test_prednisone_before_day1_is_not_this_rule() -> None:
    """Before Day 1 it is the eligibility washout's business, not this deviation's."""
    base = with_(
        on_protocol(),
        kit.dose(id="pred", drug=kit.PREDNISONE, amount=20, when=day(-3), route="oral"),
    )
    assert only("prohibited_medication", findings(base)) == []


# -- ineligible_enrolled ------------------------------------------------------------------------------


def rheumatoid_arthritis(onset: dt.date) -> dict[str, Any]:
    """An autoimmune condition: exclusion 5 makes the patient ineligible from its onset."""
    return kit.condition(id="ra", code=kit.RHEUMATOID_ARTHRITIS, onset=onset)


def test_enrolled_while_ineligible_on_the_enrollment_day() -> None:
    """An on-study subject who was ineligible on the enrollment day is a major deviation."""
    base = with_(on_protocol(), rheumatoid_arthritis(dt.date(2019, 5, 1)))
    events = events_of(base)
    assert context(events).eligible_at_enrollment == "ineligible"
    assert findings(base) == [
        Finding(
            "ineligible_enrolled",
            "enrollment",
            "enrolled on 2025-03-03 while ineligible on that day",
            -7,
            ENROLLED,
            (ref("ResearchSubject", "rs-p1"),),
        )
    ]


def test_ineligibility_that_appears_after_enrollment_is_not_this_deviation() -> None:
    """Eligibility is judged on the enrollment day: a diagnosis dated later does not count."""
    base = with_(on_protocol(), rheumatoid_arthritis(day(5)))
    assert context(events_of(base)).eligible_at_enrollment != "ineligible"
    assert findings(base) == []


def test_ineligible_candidate_who_was_never_enrolled_is_not_a_deviation() -> None:
    """A screen failure (status candidate) was not enrolled: nothing to deviate from."""
    base = with_(
        on_protocol(), enrollment(status="candidate"), rheumatoid_arthritis(dt.date(2019, 5, 1))
    )
    assert context(events_of(base)).eligible_at_enrollment == "ineligible"
    assert only("ineligible_enrolled", findings(base)) == []


# -- several rules at once ---------------------------------------------------------------------------


def test_several_deviations_are_listed_in_rule_order() -> None:
    """One subject can break several rules; each is its own finding with its own cause."""
    base = without(on_protocol(), "stool")
    base = with_(
        base,
        surgery(performed=day(31)),
        kit.dose(id="dupi-c", drug="Dupixent", amount=300, when=day(8)),
        kit.dose(id="pred", drug=kit.PREDNISONE, amount=20, when=day(10), route="oral"),
    )
    assert [(f.rule, f.cause, f.study_day) for f in findings(base)] == [
        ("dose_extra", "dupilumab:day8", 8),
        ("surgery_window", "surgery", 31),
        ("screening_stool_missing", "screening", None),
        ("followup_visit", "followup", 68),
        ("prohibited_medication", "MedicationAdministration/pred", 10),
    ]
