"""NCT06088771 patients for cohort-level tests: a screening work-up and the trial's milestones.

Every resource id starts with the patient id. `work_up` settles all nine criteria in the patient's
favour (eligible); a test varies one resource to make a known verdict. The milestones (enrollment,
Day-1 doses, surgery, percent viable tumour) follow the schedule: enrolled 2025-03-03, Day 1
2025-03-10, lobectomy 2025-03-27 (Day 18).
"""

from __future__ import annotations

from typing import Any

from tests.kit import fhir as kit

Resources = dict[str, dict[str, Any]]
ENROLLED = "2025-03-03"
DAY1 = "2025-03-10"
SURGERY = "2025-03-27"


def _by_id(*resources: dict[str, Any]) -> Resources:
    return {r["id"]: r for r in resources}


def problem(**fields: Any) -> dict[str, Any]:
    """A problem-list Condition."""
    return kit.condition(category=kit.condition_category("problem-list-item"), **fields)


def work_up(pid: str, **patient: Any) -> Resources:
    """A complete screening work-up settling every criterion in the patient's favour (eligible).

    The medication history is one amlodipine dose in 2024: criterion 8 needs some record to say
    "no listed drug in the 56 days".
    """
    return _by_id(
        kit.patient(id=pid, gender="female", birth_date="1958-11-30", **patient),
        problem(id=f"{pid}-dx", patient=pid, code=kit.NSCLC, onset="2025-01-20"),
        problem(id=f"{pid}-htn", patient=pid, code=kit.HYPERTENSION, onset="2016-02-02"),
        kit.observation(
            id=f"{pid}-t",
            patient=pid,
            code=kit.T_CLINICAL,
            effective="2025-02-12",
            valueCodeableConcept={"text": "cT2a"},
        ),
        kit.observation(
            id=f"{pid}-m",
            patient=pid,
            code=kit.M_CLINICAL,
            effective="2025-02-12",
            valueCodeableConcept=kit.coded(kit.AJCC, "cM0", "cM0"),
        ),
        kit.service_request(
            id=f"{pid}-sr",
            patient=pid,
            code={**kit.LOBECTOMY, "text": "VATS right upper lobectomy"},
            authored="2025-02-25",
            occurrence="2025-03-25",
        ),
        kit.procedure(
            id=f"{pid}-bx",
            patient=pid,
            code="CT-guided core needle biopsy, right upper lobe of lung",
            performed="2025-02-20",
        ),
        *(
            kit.genomic_variant(
                id=f"{pid}-{name}", patient=pid, gene=gene, present=False, effective="2025-02-14"
            )
            for name, gene in (("egfr", kit.EGFR), ("alk", kit.ALK), ("ros1", kit.ROS1))
        ),
        kit.medication_administration(
            id=f"{pid}-amlo",
            patient=pid,
            medication="amlodipine 5 MG Oral Tablet",
            effective="2024-06-01",
            route=kit.ORAL,
        ),
        kit.smoking_status(
            id=f"{pid}-smk",
            patient=pid,
            finding=kit.coded(kit.SNOMED, "8517006", "Former smoker (finding)"),
            effective="2025-02-03",
        ),
    )


def autoimmune(pid: str) -> Resources:
    """Rheumatoid arthritis since 2019: exclusion 5 met."""
    return _by_id(
        problem(id=f"{pid}-ra", patient=pid, code=kit.RHEUMATOID_ARTHRITIS, onset="2019-06-01")
    )


def enrollment(pid: str, *, status: str = "on-study") -> Resources:
    """The ResearchSubject for NCT06088771, enrolled on 2025-03-03."""
    return _by_id(kit.research_subject(id=f"{pid}-rs", patient=pid, status=status, start=ENROLLED))


def day1_doses(pid: str) -> Resources:
    """Dupilumab 2 × 300 mg and cemiplimab 350 mg on Day 1 (2025-03-10)."""
    doses = (("dupi-a", "Dupixent 300 MG", 300), ("dupi-b", "Dupixent 300 MG", 300))
    return _by_id(
        *(
            kit.medication_administration(
                id=f"{pid}-{key}",
                patient=pid,
                medication=drug,
                effective=f"{DAY1}T09:00:00-04:00",
                dose=kit.quantity(mg, "mg"),
            )
            for key, drug, mg in (*doses, ("cemi", "cemiplimab", 350))
        )
    )


def surgery(pid: str) -> Resources:
    """A performed lobectomy on Day 18."""
    return _by_id(
        kit.procedure(id=f"{pid}-lob", patient=pid, code="Left lower lobectomy", performed=SURGERY)
    )


def viable_tumour(pid: str, percent: int) -> Resources:
    """Percent viable tumour of the resected primary (makes MPR evaluable)."""
    return _by_id(
        kit.observation(
            id=f"{pid}-viable",
            patient=pid,
            code="Percent viable tumor, primary",
            effective="2025-04-02",
            valueQuantity=kit.quantity(percent, "%"),
        )
    )


def flow_cohort() -> list[dict[str, Any]]:
    """Eleven candidates, one per row of tests/test_trial_flow_api.py's table."""
    out: Resources = {"rs-nct": kit.research_study()}
    for pid in ("e1", "e2", "e3", "e4", "e5", "e6", "c1", "x1", "i1", "i2"):
        out |= work_up(pid)
    for pid in ("e1", "e2", "e3", "e4", "e5", "x1"):
        out |= enrollment(pid)
    out |= enrollment("e6", status="screening")
    for pid in ("e1", "e2", "e3", "e4", "x1"):
        out |= day1_doses(pid)
    for pid in ("e1", "e2", "x1"):
        out |= surgery(pid)
    out |= viable_tumour("e1", 5) | viable_tumour("x1", 0)
    out["e4"]["deceasedDateTime"] = "2025-03-20"
    out |= autoimmune("x1") | autoimmune("i1")
    out["i2-t"]["valueCodeableConcept"] = {"text": "cT1a"}
    out |= {
        "n1": kit.patient(id="n1", gender="male", birth_date="1950-05-05"),
        "n1-dx": problem(id="n1-dx", patient="n1", code=kit.LUNG_CANCER_C34_90, onset="2025-01-20"),
    }
    return list(out.values())
