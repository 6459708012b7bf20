"""The cirAE outcomes a paper's reader expects, over HTTP, against independent computations.

A seeded synthetic cohort (tests/synthetic_cirae.py) plus one patient excluded for an undated
death: Table 1's SMDs are recomputed here by hand from the drawn truth; the matched comparisons'
reverse-KM follow-up, KM medians, log-rank tests and unadjusted HRs are recomputed from the
listing with lifelines and scipy; the flow's counts from the truth and the matching summary. A
small hand-built cohort checks the cirAE description (terms, grades, timing, resolution) and
glucocorticoid exposure by group against values worked out from its dates.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, CoxTimeVaryingFitter, KaplanMeierFitter
from scipy.stats import CensoredData, logrank

from tests.conftest import LiveServer
from tests.kit import fhir as kit
from tests.kit.client import put_resources
from tests.kit.cohort import fresh_listing, fresh_outcomes
from tests.synthetic_cirae import SyntheticCohort, Truth, generate

CIRAE = "cirae-dupilumab"
STUDY = f"/studies/{CIRAE}"
SYNTHETIC = generate(150, seed=11)
CONTROLS = ("control_1", "control_2")


def _post(fhir: httpx.Client, cohort: SyntheticCohort) -> None:
    for body in cohort.bundles(50):
        response = fhir.post("", content=json.dumps(body))
        assert response.status_code == 200, response.text[:2000]


def _undated_death(fhir: httpx.Client) -> None:
    put_resources(
        fhir,
        kit.patient(
            id="undated-death", gender="male", birth_date="1950-01-01", deceasedBoolean=True
        ),
        kit.medication_administration(
            id="undated-death-icb",
            patient="undated-death",
            medication="pembrolizumab",
            effective="2021-03-01",
        ),
    )


@pytest.fixture
def api(server: LiveServer, fhir: httpx.Client) -> Iterator[httpx.Client]:
    """A client on /api/v1 over the synthetic cohort and one excluded patient."""
    _post(fhir, SYNTHETIC)
    _undated_death(fhir)
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=300) as client:
        yield client


# -- helpers -----------------------------------------------------------------------------------------


def _listing(api: httpx.Client, limit: int = 40) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        body = fresh_listing(api, CIRAE, limit=limit, cursor=cursor)
        assert len(body["subjects"]) <= limit
        rows += body["subjects"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


def _matched_sets(rows: list[dict[str, Any]], control: str) -> list[tuple[str, list[str]]]:
    """A comparison's matched sets, (case, controls) in set-number order, from each listed
    subject's set and role: the outcomes body counts the sets, the listing says who is in them."""
    members: dict[int, dict[str, list[str]]] = {}
    for r in rows:
        found = r["matched_sets"][control]
        if found is not None:
            members.setdefault(found["set"], {"case": [], "control": []})[found["role"]].append(
                r["subject_id"]
            )
    assert all(len(m["case"]) == 1 for m in members.values())  # one case a set
    return [(members[n]["case"][0], sorted(members[n]["control"])) for n in sorted(members)]


def _patient_of(api: httpx.Client, subject_id: str) -> str:
    """The FHIR patient behind a subject id, through the timeline's evidence (an SDV lookup)."""
    timeline = api.get(f"{STUDY}/subjects/{subject_id}/timeline").json()
    demographics = next(e for e in timeline["events"] if e["kind"] == "demographics")
    cited = api.get(f"{STUDY}/evidence/{demographics['source']['evidence_id']}").json()
    return str(cited["reference"]).split("/")[1]


def _age(t: Truth) -> float:
    return (t.icb_start - t.birth_date).days / 365.25


def _smd_continuous(a: Sequence[float], b: Sequence[float]) -> float:
    pooled = math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)
    return (statistics.mean(a) - statistics.mean(b)) / pooled


def _smd_binary(a: Sequence[bool], b: Sequence[bool]) -> float:
    p1, p2 = sum(a) / len(a), sum(b) / len(b)
    return abs(p1 - p2) / math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / 2)


def _row(panel: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in panel["rows"] if r["name"] == name)


def _medians_by_lifelines(durations: Sequence[float], events: Sequence[bool]) -> set[float]:
    """The KM median by CLINICAL.md rev 2 from lifelines' curve: the first time S(t) <= 0.5,
    except where S(t) sits at 0.5 (within sqrt(eps)) on a flat stretch that later drops below it:
    then R's survfit midpoint of the stretch, and only that (a set of one, to read as `in`)."""
    kmf = KaplanMeierFitter().fit(durations, events)
    median = float(kmf.median_survival_time_)
    curve = kmf.survival_function_.iloc[:, 0]
    at_half = curve[np.isclose(curve.to_numpy(), 0.5, rtol=0.0, atol=math.sqrt(2.2e-16))]
    if at_half.empty:
        return {median}
    start = float(at_half.index[0])
    later = curve[curve.index > at_half.index[-1]]
    end = float(later.index[0]) if not later.empty and later.iloc[0] < 0.5 else math.inf
    return {(start + end) / 2} if math.isfinite(end) else {median}


# -- the synthetic cohort -------------------------------------------------------------------------------


def test_table1_smds_match_hand_computations(api: httpx.Client) -> None:
    """Before matching from the truth; after matching on the reported matched sets."""
    out = fresh_outcomes(api, CIRAE)["outcomes"]
    table = out["table1"]
    assert table["threshold"] == 0.1
    assert [p["key"] for p in table["panels"]] == [
        "before_matching",
        "matched_control_1",
        "matched_control_2",
    ]
    before = table["panels"][0]
    truth = {g: [t for t in SYNTHETIC.truth if t.group == g] for g in ("dupilumab", *CONTROLS)}
    assert [(g["key"], g["n"]) for g in before["groups"]] == [(g, len(v)) for g, v in truth.items()]
    assert [g["label"] for g in before["groups"]] == [
        "Dupilumab",
        "cirAE, no dupilumab",
        "No cirAE",
    ]
    for control in CONTROLS:
        key = f"dupilumab_vs_{control}"
        d, c = truth["dupilumab"], truth[control]
        age = _row(before, "age")["smd"][key]
        assert age["value"] == pytest.approx(
            _smd_continuous([_age(t) for t in d], [_age(t) for t in c]), abs=2e-6
        )
        assert age["balanced"] is (abs(age["value"]) < 0.1)
        for name, level in (
            ("sex", "female"),
            ("stage", "IV"),
            ("icb_type", "PD-1"),
            ("race", "2106-3"),
        ):
            attr = {"sex": "sex", "stage": "stage", "icb_type": "icb_type", "race": "race"}[name]
            want = "Stage IV" if name == "stage" else level
            smd = _row(before, name)["smd"][key]["value"]
            assert smd == pytest.approx(
                _smd_binary(
                    [getattr(t, attr) == want for t in d], [getattr(t, attr) == want for t in c]
                ),
                abs=2e-6,
            ), name
    sex = _row(before, "sex")["by_group"]["dupilumab"]
    assert {lv["level"]: lv["n"] for lv in sex} == dict(Counter(t.sex for t in truth["dupilumab"]))
    race_labels = {lv["label"] for lv in _row(before, "race")["by_group"]["control_2"]}
    assert race_labels == {"White", "Black or African American"}
    # after matching: the matched sets the analysis reported, mapped to their patients
    listing = {r["subject_id"]: r for r in _listing(api)}
    by_patient = {t.patient_id: t for t in SYNTHETIC.truth}
    for control in CONTROLS:
        sets = _matched_sets(list(listing.values()), control)
        assert "matched_sets" not in out["matching"][control]  # counted in the body, not listed
        assert len(sets) == out["matching"][control]["sets"]
        cases = [case for case, _ in sets]
        controls = [c for _, members in sets for c in members]
        panel = table["panels"][CONTROLS.index(control) + 1]
        assert [(g["key"], g["n"]) for g in panel["groups"]] == [
            ("dupilumab", len(cases)),
            (control, len(controls)),
        ]
        truth_of = {sid: by_patient[_patient_of(api, sid)] for sid in cases + controls}
        ages = {sid: _age(t) for sid, t in truth_of.items()}
        smd = _row(panel, "age")["smd"][f"dupilumab_vs_{control}"]["value"]
        assert smd == pytest.approx(
            _smd_continuous([ages[s] for s in cases], [ages[s] for s in controls]), abs=2e-6
        )
        charlson = _row(panel, "charlson")["smd"][f"dupilumab_vs_{control}"]["value"]
        a = [float(listing[s]["charlson"]) for s in cases]
        b = [float(listing[s]["charlson"]) for s in controls]
        if statistics.variance(a) + statistics.variance(b) > 0:
            assert charlson == pytest.approx(_smd_continuous(a, b), abs=2e-6)
        sex = _row(panel, "sex")["smd"][f"dupilumab_vs_{control}"]["value"]
        female = {sid: t.sex == "female" for sid, t in truth_of.items()}
        assert sex == pytest.approx(
            _smd_binary([female[s] for s in cases], [female[s] for s in controls]), abs=2e-6
        )


def test_matched_comparisons_against_lifelines_and_scipy(api: httpx.Client) -> None:
    """Sizes, deaths, reverse-KM follow-up, KM medians, log-rank and unadjusted HRs."""
    out = fresh_outcomes(api, CIRAE)["outcomes"]
    listing = {r["subject_id"]: r for r in _listing(api)}
    for control in CONTROLS:
        comparison = out["comparisons"][control]
        assert (
            comparison["label"]
            == f"Dupilumab vs {'cirAE, no dupilumab' if control == 'control_1' else 'No cirAE'}"
        )
        sets = _matched_sets(list(listing.values()), control)
        set_of = {sid: i for i, (case, members) in enumerate(sets, 1) for sid in (case, *members)}
        rows = [listing[sid] for sid in set_of]
        assert comparison["matched_sets"] == len(sets)
        assert comparison["n"] == len(rows) == out["cox"][control]["primary"]["n_subjects"]
        assert comparison["deaths"] == sum(r["died"] for r in rows)
        for group in ("dupilumab", control):
            mine = [r for r in rows if r["group"] == group]
            g = comparison["groups"][group]
            assert (g["n"], g["deaths"]) == (len(mine), sum(r["died"] for r in mine))
            days = [float(r["os_days"]) for r in mine]
            died = [bool(r["died"]) for r in mine]
            assert g["follow_up"]["median_days"] in _medians_by_lifelines(
                days, [not e for e in died]
            )
            assert g["km"]["median_days"] in _medians_by_lifelines(days, died)
            for r in mine:
                assert r["matched_sets"][control] == {
                    "set": set_of[r["subject_id"]],
                    "role": "case" if group == "dupilumab" else "control",
                }
        everyone_days = [float(r["os_days"]) for r in rows]
        alive = [not r["died"] for r in rows]
        assert comparison["follow_up"]["median_days"] in _medians_by_lifelines(everyone_days, alive)

        def censored(group_rows: list[dict[str, Any]]) -> CensoredData:
            return CensoredData(
                uncensored=[r["os_days"] for r in group_rows if r["died"]],
                right=[r["os_days"] for r in group_rows if not r["died"]],
            )

        cases = [r for r in rows if r["group"] == "dupilumab"]
        controls = [r for r in rows if r["group"] != "dupilumab"]
        expected = logrank(censored(cases), censored(controls))
        assert comparison["log_rank"]["p"] == pytest.approx(float(expected.pvalue), rel=1e-6)
        assert comparison["log_rank"]["statistic"] == pytest.approx(
            float(expected.statistic) ** 2, abs=2e-6
        )
        table = pd.DataFrame(
            {
                "time": [float(r["os_days"]) or 0.5 for r in rows],
                "event": [int(r["died"]) for r in rows],
                "dupilumab": [float(r["group"] == "dupilumab") for r in rows],
                "set": [set_of[r["subject_id"]] for r in rows],
            }
        )
        plain = CoxPHFitter().fit(table[["time", "event", "dupilumab"]], "time", "event")
        robust = CoxPHFitter().fit(table, "time", "event", cluster_col="set")
        fixed = comparison["hazard_ratios"]["unadjusted_fixed_group"]
        assert fixed["estimable"] is True
        assert fixed["hr"] == pytest.approx(math.exp(plain.params_["dupilumab"]), abs=2e-6)
        ci = plain.confidence_intervals_.loc["dupilumab"].to_numpy()
        assert (fixed["ci_lower"], fixed["ci_upper"]) == pytest.approx(tuple(np.exp(ci)), abs=2e-6)
        rci = robust.confidence_intervals_.loc["dupilumab"].to_numpy()
        assert (fixed["robust"]["ci_lower"], fixed["robust"]["ci_upper"]) == pytest.approx(
            tuple(np.exp(rci)), abs=2e-6
        )
        long_rows = []
        for r in rows:
            end = float(r["os_days"]) or 0.5
            d = r["days_to_dupilumab"]
            if r["group"] == "dupilumab" and d is not None and 0 < d < end:
                long_rows += [
                    {"id": r["subject_id"], "start": 0.0, "stop": float(d), "x": 0.0, "event": 0},
                    {
                        "id": r["subject_id"],
                        "start": float(d),
                        "stop": end,
                        "x": 1.0,
                        "event": int(r["died"]),
                    },
                ]
            else:
                x = float(r["group"] == "dupilumab" and d is not None and d <= 0)
                long_rows.append(
                    {
                        "id": r["subject_id"],
                        "start": 0.0,
                        "stop": end,
                        "x": x,
                        "event": int(r["died"]),
                    }
                )
        tv = CoxTimeVaryingFitter().fit(
            pd.DataFrame(long_rows),
            event_col="event",
            start_col="start",
            stop_col="stop",
            id_col="id",
        )
        varying = comparison["hazard_ratios"]["unadjusted_time_varying"]
        assert varying["hr"] == pytest.approx(math.exp(tv.params_["x"]), abs=2e-6)
        adjusted = comparison["hazard_ratios"]["adjusted"]
        model = out["cox"][control]["primary"]  # revision 2: the primary model
        if model["estimable"]:
            assert adjusted["hr"] == model["dupilumab"]["hr"]
        else:
            assert adjusted == {"estimable": False, "reason": model["reason"]}


def test_flow_counts_and_listing(api: httpx.Client) -> None:
    """ICB recipients → cohort → cirAE → groups → matched → analysed, reconciled with the truth."""
    out = fresh_outcomes(api, CIRAE)["outcomes"]
    flow = out["flow"]
    stages = {s["key"]: {b["key"]: b for b in s["boxes"]} for s in flow["stages"]}
    assert list(stages) == ["icb", "cohort", "cirae", "groups", "matched", "analysed"]
    sizes = Counter(t.group for t in SYNTHETIC.truth)
    assert stages["icb"]["icb"]["n"] == len(SYNTHETIC.truth) + 1
    cohort = stages["cohort"]["cohort"]
    assert cohort["n"] == len(SYNTHETIC.truth)
    assert cohort["excluded"] == [{"reason": "death recorded without a date", "n": 1}]
    assert stages["cirae"]["cirae"]["n"] == sizes["dupilumab"] + sizes["control_1"]
    assert stages["cirae"]["no_cirae"]["n"] == sizes["control_2"]
    assert {k: b["n"] for k, b in stages["groups"].items()} == dict(sizes)
    assert [b["label"] for b in stages["groups"].values()] == [
        "Dupilumab",
        "cirAE, no dupilumab",
        "No cirAE",
    ]
    for control in CONTROLS:
        matching = out["matching"][control]
        box = stages["matched"][f"matched_{control}"]
        assert box["n"] == matching["sets"] + matching["matched_controls"]
        lost = {c["reason"]: c["n"] for c in box["excluded"]}
        unmatched = sizes["dupilumab"] - matching["sets"]
        assert lost.get("Dupilumab cases without an eligible control", 0) == unmatched
        assert matching["unmatched"] == unmatched
        label = "cirAE, no dupilumab" if control == "control_1" else "No cirAE"
        not_chosen = sizes[control] - matching["matched_controls"]
        assert lost.get(f"{label} patients not selected as controls", 0) == not_chosen
        analysed = stages["analysed"][f"analysed_{control}"]
        assert analysed["n"] == out["cox"][control]["primary"]["n_subjects"] == box["n"]
        assert analysed["excluded"] == []
    # the listing: every analysed subject once, in order, pseudonymous and without dates
    rows = _listing(api, limit=37)
    ids = [r["subject_id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(SYNTHETIC.truth)
    assert ids == sorted(ids)
    assert Counter(r["group"] for r in rows) == sizes
    text = json.dumps(rows)
    assert "syn-cirae" not in text
    assert not re.search(r"\d{4}-\d{2}-\d{2}", text)
    assert set(rows[0]) == {
        "subject_id",
        "group",
        "group_label",
        "matched_sets",
        "icb_year",
        "icb_type",
        "age_years",
        "sex",
        "race",
        "charlson",
        "cancer_type",
        "stage",
        "days_to_cirae_onset",
        "days_to_dupilumab",
        "days_to_glucocorticoid",
        "resolution",
        "days_to_resolution",  # revision 2
        "glucocorticoid_flag",  # revision 2
        "os_days",
        "died",
    }
    bad = api.get(f"{STUDY}/outcomes/subjects", params={"cursor": "not-ours"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_cursor")
    assert api.get(f"{STUDY}/outcomes/subjects", params={"limit": 0}).status_code == 422
    assert api.get("/studies/NCT0000/outcomes/subjects").status_code == 404


# -- a hand-built cohort for the description --------------------------------------------------------

ICB = dt.date(2021, 1, 4)


def _day(days: int) -> str:
    return (ICB + dt.timedelta(days=days)).isoformat()


def _base(pid: str) -> list[dict[str, Any]]:
    return [
        kit.patient(id=pid, gender="female", birth_date="1955-05-05"),
        kit.medication_administration(
            id=f"{pid}-icb", patient=pid, medication="pembrolizumab 100 MG/4ML", effective=_day(0)
        ),
        kit.encounter(id=f"{pid}-last", patient=pid, start=_day(365), end=_day(365)),
    ]


def _prednisone_course(pid: str, day: int) -> dict[str, Any]:
    return kit.medication_request(
        id=f"{pid}-pred",
        patient=pid,
        status="completed",
        medication=kit.coded(kit.RXNORM, "8640", "prednisone", text="prednisone"),
        authored=_day(day),
        dosageInstruction=[
            {
                "route": kit.ORAL,
                "timing": {"repeat": {"boundsPeriod": kit.period(_day(day), _day(day + 13))}},
            }
        ],
    )


def _grade(n: str) -> dict[str, Any]:
    return {"url": kit.AE_GRADE, "valueCodeableConcept": {"coding": [{"code": n}]}}


def _hand_cohort() -> list[dict[str, Any]]:
    """h1 dupilumab, h2 and h3 cirAE without dupilumab, h4 no cirAE (days from ICB initiation).

    h1: AE bullous pemphigoid day 30, grade 3, resolved day 90 (60 days after onset); dupilumab
        days 40 and 70 (10 days after onset; duration 30 days).
    h2: Condition pruritus day 20, resolved, abatement day 50 (30 days); prednisone from day 22.
    h3: Condition maculopapular rash day 40, grade 2, active; prednisone from day 10 (before onset).
    h4: prednisone from day 56.
    """
    h1 = [
        *_base("h1"),
        kit.adverse_event(
            id="h1-ae",
            patient="h1",
            event="Bullous pemphigoid",
            date=_day(30),
            grade="3",
            outcome="resolved",
            extension=[
                _grade("3"),
                {"url": f"{kit.AE_BACKPORT}/resolveDate", "valueDateTime": _day(90)},
            ],
        ),
        *(
            kit.medication_administration(
                id=f"h1-dupi-{d}",
                patient="h1",
                medication="dupilumab 300 MG/2ML",
                effective=_day(d),
            )
            for d in (40, 70)
        ),
    ]
    h2 = [
        *_base("h2"),
        kit.condition(
            id="h2-cirae",
            patient="h2",
            code="Pruritus",
            clinical="resolved",
            onset=_day(20),
            abatementDateTime=_day(50),
        ),
        _prednisone_course("h2", 22),
    ]
    h3 = [
        *_base("h3"),
        kit.condition(
            id="h3-cirae",
            patient="h3",
            code="Maculopapular rash",
            clinical="active",
            onset=_day(40),
            extension=[_grade("2")],
        ),
        _prednisone_course("h3", 10),
    ]
    h4 = [*_base("h4"), _prednisone_course("h4", 56)]
    return [*h1, *h2, *h3, *h4]


def test_cirae_description_and_glucocorticoids_by_hand(
    server: LiveServer, fhir: httpx.Client
) -> None:
    """Terms, grades, times and resolution of the index cirAE; glucocorticoid timing by group."""
    put_resources(fhir, *_hand_cohort())
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=120) as api:
        out = fresh_outcomes(api, CIRAE)["outcomes"]
    assert out["groups"] == {"dupilumab": 1, "control_1": 2, "control_2": 1}
    d = out["cirae_description"]
    assert d["n"] == {"dupilumab": 1, "control_1": 2}
    assert d["terms"] == [
        {"term": "Bullous pemphigoid", "dupilumab": 1, "control_1": 0, "total": 1},
        {"term": "Maculopapular rash", "dupilumab": 0, "control_1": 1, "total": 1},
        {"term": "Pruritus", "dupilumab": 0, "control_1": 1, "total": 1},
    ]
    grades = {g["grade"]: (g["dupilumab"], g["control_1"]) for g in d["grades"]}
    assert grades == {
        "1": (0, 0),
        "2": (0, 1),
        "3": (1, 0),
        "4": (0, 0),
        "5": (0, 0),
        "ungraded": (0, 1),
    }
    assert d["days_icb_to_onset"]["dupilumab"] == {
        "n": 1,
        "median": 30.0,
        "q1": 30.0,
        "q3": 30.0,
        "min": 30.0,
        "max": 30.0,
    }
    assert d["days_icb_to_onset"]["control_1"] == {
        "n": 2,
        "median": 30.0,
        "q1": 25.0,
        "q3": 35.0,
        "min": 20.0,
        "max": 40.0,
    }
    assert (d["days_onset_to_dupilumab"]["n"], d["days_onset_to_dupilumab"]["median"]) == (1, 10.0)
    assert (d["dupilumab_duration_days"]["n"], d["dupilumab_duration_days"]["median"]) == (1, 30.0)
    assert d["resolution"] == {
        "dupilumab": {"complete": 1, "partial": 0, "none": 0},
        "control_1": {"complete": 1, "partial": 0, "none": 1},
    }
    to_resolution = d["days_onset_to_resolution"]
    assert (to_resolution["dupilumab"]["n"], to_resolution["dupilumab"]["median"]) == (1, 60.0)
    assert (to_resolution["control_1"]["n"], to_resolution["control_1"]["median"]) == (1, 30.0)
    assert to_resolution["control_1"]["resolved_without_date"] == 0
    gc = out["glucocorticoids"]["by_group"]
    assert (gc["dupilumab"]["n"], gc["dupilumab"]["exposed"]) == (1, 0)
    c1 = gc["control_1"]
    assert (c1["n"], c1["exposed"], c1["before_cirae_onset"], c1["on_or_after_cirae_onset"]) == (
        2,
        2,
        1,
        1,
    )
    assert c1["days_icb_to_first_exposure"]["median"] == 16.0
    assert (
        gc["control_2"]["exposed"],
        gc["control_2"]["days_icb_to_first_exposure"]["median"],
    ) == (1, 56.0)
