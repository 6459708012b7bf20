"""A seeded generator of realistic cohorts for the benchmarks, written as FHIR R4 files, streamed.

`python bench/generate.py --patients 10000 --seed 1 --out DIR [--format ndjson|bundles]` writes
DIR/part-00000.ndjson … (or transaction Bundles, PUT by id) and DIR/plan.json, the counts the
service should find (NCT06088771 subjects, cirAE cohort groups). Patients are drawn one at a time
from `random.Random(f"{seed}:{index}")`, so the output is the same for a seed, any size takes
constant memory, and a patient does not change when the cohort grows.

Who is drawn (CLINICAL.md, both studies):

* NCT06088771 subjects: NSCLC (SNOMED 254637007, or ICD-10-CM C34.x with the histology in text),
  TNM T/N/M, PD-L1, EGFR/ALK/ROS1 variants, smoking status, 3–6 screening biopsies, a
  ResearchSubject, cemiplimab 350 mg IV and dupilumab 2 × 300 mg SC on Day 1 (RxNorm clinical-drug
  codings, or the name alone), lung resection, percent viable tumour, non-cutaneous AdverseEvents,
  the follow-up visit, some deaths. Cemiplimab is a PD-1 inhibitor, so each subject is also in
  the cirAE cohort, where it fits no group (CLINICAL.md revision 2: the controls never received
  dupilumab) and is excluded ("dupilumab without a cirAE (another indication)").
* NCT06088771 candidates: the same work-up with no ResearchSubject and no study drugs.
* ICB patients of the cirAE cohort: first ICB dose(s) (PD-1, PD-L1, CTLA-4 or ipilimumab +
  nivolumab), the cancer with its stage, comorbidities (ICD-10-CM), a cutaneous irAE (Condition or
  AdverseEvent) after ICB start in the dupilumab and control 1 groups, dupilumab after its onset
  in the dupilumab group, systemic glucocorticoids (RxNorm-coded orders and named
  administrations), deaths, the last contact.
* Noise: every patient also has unrelated visits and labs with unit variants (UCUM and not,
  g/dL vs g/L, mg/dL vs umol/L), and a third of the patients are noise only.

The RxNorm codes of the clinical drugs (SCD) are illustrative: CLINICAL.md marks the dupilumab and
cemiplimab codes unverified, and the service matches these drugs by the names in their displays.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

Json = dict[str, Any]

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
HGNC = "http://www.genenames.org/geneId"
HL7 = "http://terminology.hl7.org/CodeSystem"
OMB = "urn:oid:2.16.840.1.113883.6.238"
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
AE_GRADE = "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade"
MRN = "urn:bench:mrn"
SUBJECT_NUMBER = "urn:study:nct06088771:subject"
STUDY_ID = "bench-rs-nct06088771"

# who a patient is, with its weight
KINDS = (("nct_subject", 0.06), ("nct_candidate", 0.06), ("icb", 0.55), ("noise", 0.33))
CIRAE_GROUPS = (("dupilumab", 0.12), ("control_1", 0.33), ("control_2", 0.55))
RACES = (("2106-3", "White", 0.75), ("2054-5", "Black or African American", 0.25))
CIRAE_TERMS = (
    "Maculopapular rash",
    "Pruritus",
    "Eczematous dermatitis",
    "Lichenoid dermatitis",
    "Bullous pemphigoid",
    "Psoriasiform dermatitis",
)
NON_SKIN_AES = ("Fatigue", "Nausea", "Diarrhoea", "Pneumonitis", "Hypothyroidism", "Anaemia")
COMORBIDITIES = (
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("I50.9", "Heart failure, unspecified"),
    ("J44.9", "Chronic obstructive pulmonary disease, unspecified"),
    ("N18.3", "Chronic kidney disease, stage 3 (moderate)"),
    ("I10", "Essential (primary) hypertension"),
)
CANCERS = (
    ("C34.90", "Malignant neoplasm of unspecified part of unspecified bronchus or lung"),
    ("C43.9", "Malignant melanoma of skin, unspecified"),
    ("C64.9", "Malignant neoplasm of unspecified kidney, except renal pelvis"),
    ("C67.9", "Malignant neoplasm of bladder, unspecified"),
)
# (display of an RxNorm clinical drug, illustrative RxCUI, ICB class); some feeds send only a name
ICB_DRUGS = (
    ("pembrolizumab 100 MG in 4 ML Injection", "1547553", "pd1"),
    ("nivolumab 240 MG in 24 ML Injection", "1597878", "pd1"),
    ("atezolizumab 1200 MG in 20 ML Injection", "1792780", "pdl1"),
    ("durvalumab 500 MG in 10 ML Injection", "1919511", "pdl1"),
    ("ipilimumab 50 MG in 10 ML Injection", "1094836", "ctla4"),
)
DUPILUMAB_SCD = ("dupilumab 300 MG in 2 ML Prefilled Syringe", "1876380")
CEMIPLIMAB_SCD = ("cemiplimab-rwlc 350 MG in 7 ML Injection", "2058845")
# (LOINC, name, [(value range, unit, UCUM?)]): the same lab in the units feeds really use
LABS: tuple[tuple[str, str, tuple[tuple[float, float, str, bool], ...]], ...] = (
    ("718-7", "Hemoglobin [Mass/volume] in Blood", ((11, 16, "g/dL", True), (110, 160, "g/L", True), (11, 16, "g/dl", False))),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", ((0.6, 1.4, "mg/dL", True), (50, 120, "umol/L", True))),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", ((70, 180, "mg/dL", True), (3.9, 10, "mmol/L", True), (70, 180, "mg/dl", False))),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", ((7, 56, "U/L", True), (7, 56, "IU/L", False))),
)  # fmt: skip
ADMIN_END = dt.date(2025, 6, 30)


# -- data types ------------------------------------------------------------------------------------


def coded(system: str, code: str, display: str, text: str | None = None) -> Json:
    """A CodeableConcept of one coding."""
    out: Json = {"coding": [{"system": system, "code": code, "display": display}]}
    return {**out, "text": text} if text else out


def status(system: str, code: str) -> Json:
    """A coded status of an HL7 code system."""
    return {"coding": [{"system": f"{HL7}/{system}", "code": code}]}


def qty(value: float, unit: str, ucum: bool = True) -> Json:
    """A Quantity, UCUM-coded or with the unit as written."""
    return {"value": value, "unit": unit, **({"system": UCUM, "code": unit} if ucum else {})}


def ref(target: str) -> Json:
    """A literal Reference."""
    return {"reference": target}


def iso(day: dt.date, clock: str | None = None) -> str:
    """A date, or a local timestamp at `clock` (HH:MM) with a New York offset."""
    return day.isoformat() if clock is None else f"{day.isoformat()}T{clock}:00-05:00"


# -- one patient ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Drawn:
    """One patient's resources and what the studies should make of it."""

    kind: str
    resources: list[Json] = field(default_factory=list)
    cirae_group: str | None = None  # the cirAE cohort group, None when not in the cohort


class PatientWriter:
    """Builds the resources of one patient under one id prefix."""

    def __init__(self, rng: random.Random, pid: str) -> None:
        self.rng, self.pid, self.out, self._n = rng, pid, list[Json](), 0

    def add(self, resource_type: str, **elements: Any) -> str:
        """Append a resource of the patient (a new id); return its id."""
        self._n += 1
        rid = f"{self.pid}-{self._n}"
        subject = {} if resource_type == "Patient" else self.subject_element(resource_type)
        self.out.append({"resourceType": resource_type, "id": rid, **subject, **elements})
        return rid

    def subject_element(self, resource_type: str) -> Json:
        key = "individual" if resource_type == "ResearchSubject" else "subject"
        return {key: ref(f"Patient/{self.pid}")}

    def condition(self, code: Json, onset: dt.date, clinical: str = "active", **extra: Any) -> str:
        return self.add(
            "Condition",
            clinicalStatus=status("condition-clinical", clinical),
            verificationStatus=status("condition-ver-status", "confirmed"),
            category=[status("condition-category", "problem-list-item")],
            code=code,
            onsetDateTime=iso(onset),
            **extra,
        )

    def observation(self, code: Json, day: dt.date, **value: Any) -> str:
        return self.add(
            "Observation", status="final", code=code, effectiveDateTime=iso(day), **value
        )

    def drug(
        self,
        name: str,
        rxcui: str | None,
        day: dt.date,
        mg: float,
        route: Json,
        clock: str | None = None,
    ) -> str:
        """A completed MedicationAdministration, RxNorm-coded or by name alone."""
        medication = coded(RXNORM, rxcui, name) if rxcui else {"text": name}
        return self.add(
            "MedicationAdministration",
            status="completed",
            medicationCodeableConcept=medication,
            effectiveDateTime=iso(day, clock),
            dosage={"route": route, "dose": qty(mg, "mg")},
        )

    def encounter(self, day: dt.date, klass: str = "AMB", reason: str | None = None) -> str:
        extra = {"reasonCode": [{"text": reason}]} if reason else {}
        return self.add(
            "Encounter",
            status="finished",
            **{"class": {"system": f"{HL7}/v3-ActCode", "code": klass}},
            period={"start": iso(day), "end": iso(day)},
            **extra,
        )


IV = coded(SNOMED, "47625008", "Intravenous route")
SC = coded(SNOMED, "34206005", "Subcutaneous route")
ORAL = coded(SNOMED, "26643006", "Oral route")


def _day_between(rng: random.Random, first: dt.date, last: dt.date) -> dt.date:
    return first + dt.timedelta(days=rng.randint(0, max(0, (last - first).days)))


def _patient(w: PatientWriter, birth: dt.date, death: dt.date | None) -> None:
    race, race_name, _ = w.rng.choices(RACES, weights=[r[2] for r in RACES])[0]
    race_ext = {
        "url": US_CORE_RACE,
        "extension": [
            {"url": "ombCategory", "valueCoding": {"system": OMB, "code": race, "display": race_name}},
            {"url": "text", "valueString": race_name},
        ],
    }  # fmt: skip
    w.out.append(
        {
            "resourceType": "Patient",
            "id": w.pid,
            "identifier": [{"system": MRN, "value": w.pid}],
            "gender": w.rng.choice(("female", "male")),
            "birthDate": birth.isoformat(),
            "extension": [race_ext],
            **({"deceasedDateTime": death.isoformat()} if death else {}),
        }
    )


def _lab(
    w: PatientWriter,
    day: dt.date,
    loinc: str,
    name: str,
    variants: tuple[tuple[float, float, str, bool], ...],
) -> None:
    """A laboratory result in one of the units feeds use for it (UCUM-coded or as written)."""
    low, high, unit, ucum = w.rng.choice(variants)
    value = round(w.rng.uniform(low, high), 1)
    lab = [{"coding": [{"system": f"{HL7}/observation-category", "code": "laboratory"}]}]
    w.observation(
        coded(LOINC, loinc, name), day, category=lab, valueQuantity=qty(value, unit, ucum)
    )


def _noise(w: PatientWriter, around: dt.date) -> None:
    """Unrelated visits and labs with unit variants (what every hospital feed is mostly made of)."""
    for _ in range(w.rng.randint(2, 5)):
        day = around - dt.timedelta(days=w.rng.randint(30, 900))
        w.encounter(day, w.rng.choice(("AMB", "AMB", "EMER", "IMP")), "routine visit")
        for loinc, name, variants in w.rng.sample(LABS, w.rng.randint(1, 3)):
            _lab(w, day, loinc, name, variants)
    if w.rng.random() < 0.3:
        code, name = w.rng.choice(COMORBIDITIES)
        w.condition(
            coded(ICD10CM, code, name), around - dt.timedelta(days=w.rng.randint(400, 3000))
        )


def _nct(w: PatientWriter, enrolled: bool) -> None:
    """NCT06088771 work-up; a subject also gets the ResearchSubject, study drugs, surgery and AEs."""
    rng = w.rng
    enrol = _day_between(rng, dt.date(2024, 1, 1), dt.date(2025, 3, 31))
    day1 = enrol + dt.timedelta(days=rng.randint(7, 14))
    death = None
    if enrolled and rng.random() < 0.1:
        death = day1 + dt.timedelta(days=rng.randint(60, 400))
    _patient(w, enrol - dt.timedelta(days=rng.randint(50 * 365, 80 * 365)), death)
    diagnosed = enrol - dt.timedelta(days=rng.randint(20, 50))
    if rng.random() < 0.7:
        nsclc = coded(SNOMED, "254637007", "Non-small cell lung cancer")
    else:
        nsclc = coded(ICD10CM, "C34.11", "Malignant neoplasm of upper lobe, right bronchus or lung",
                      text="Non-small cell lung cancer, adenocarcinoma")  # fmt: skip
    w.condition(
        nsclc,
        diagnosed,
        stage=[{"summary": {"text": rng.choice(("Stage IB", "Stage IIA", "Stage IIIA"))}}],
    )
    staged = diagnosed + dt.timedelta(days=5)
    for loinc, name, value in (
        ("21905-5", "Primary tumor.clinical [Class] Cancer", rng.choice(("cT1c", "cT2a", "cT2b", "cT3"))),
        ("21906-3", "Regional lymph nodes.clinical [Class] Cancer", rng.choice(("cN0", "cN1"))),
        ("21907-1", "Distant metastases.clinical [Class] Cancer", "cM0"),
    ):  # fmt: skip
        w.observation(coded(LOINC, loinc, name), staged, valueCodeableConcept={"text": value})
    tested = staged + dt.timedelta(days=7)
    w.observation({"text": "PD-L1 tumor proportion score (22C3)"}, tested,
                  valueQuantity=qty(rng.choice((0, 1, 5, 20, 50, 80)), "%"))  # fmt: skip
    for hgnc, gene in (("HGNC:3236", "EGFR"), ("HGNC:427", "ALK"), ("HGNC:10261", "ROS1")):
        present = not enrolled and rng.random() < 0.15
        answer = ("LA9633-4", "Present") if present else ("LA9634-2", "Absent")
        w.observation(
            coded(LOINC, "69548-6", "Genetic variant assessment"),
            tested,
            component=[{"code": coded(LOINC, "48018-6", "Gene studied [ID]"),
                        "valueCodeableConcept": coded(HGNC, hgnc, gene)}],
            valueCodeableConcept=coded(LOINC, *answer),
        )  # fmt: skip
    smoking = rng.choice(
        (("8517006", "Ex-smoker"), ("77176002", "Smoker"), ("266919005", "Never smoker"))
    )
    social = [{"coding": [{"system": f"{HL7}/observation-category", "code": "social-history"}]}]
    w.observation(coded(LOINC, "72166-2", "Tobacco smoking status"), diagnosed, category=social,
                  valueCodeableConcept=coded(SNOMED, *smoking))  # fmt: skip
    for core in range(rng.randint(3, 6) if enrolled else rng.randint(0, 2)):
        w.add("Procedure", status="completed", code=coded(SNOMED, "78603008", "Biopsy of lung"),
              performedDateTime=iso(day1 - dt.timedelta(days=10), f"10:{10 + 2 * core}"))  # fmt: skip
    if not enrolled:
        _noise(w, enrol)
        return
    number = f"101-{w.pid.rsplit('-', 1)[-1]}"
    w.add(
        "ResearchSubject",
        status="on-study",
        identifier=[{"system": SUBJECT_NUMBER, "value": number}],
        period={"start": enrol.isoformat()},
        study=ref(f"ResearchStudy/{STUDY_ID}"),
    )
    by_code = rng.random() < 0.7  # coded by RxNorm clinical drug, else the name the nurse typed
    w.drug(CEMIPLIMAB_SCD[0] if by_code else "Libtayo 350 mg IV", CEMIPLIMAB_SCD[1] if by_code else None,
           day1, 350, IV, "09:00")  # fmt: skip
    for clock in ("10:00", "10:05"):
        w.drug(DUPILUMAB_SCD[0] if by_code else "Dupixent 300 mg/2 mL pen", DUPILUMAB_SCD[1] if by_code else None,
               day1, 300, SC, clock)  # fmt: skip
    surgery = day1 + dt.timedelta(days=rng.choice((14, 16, 18, 20, 21, 24)))
    resection = rng.choice(
        (coded(SNOMED, "173171007", "Lobectomy of lung"), {"text": "Wedge resection of lung"})
    )
    w.add("Procedure", status="completed", code=resection, performedDateTime=iso(surgery, "08:30"))
    w.observation({"text": "Percent viable tumour, primary"}, surgery + dt.timedelta(days=6),
                  valueQuantity=qty(rng.choice((0, 5, 10, 40, 80)), "%", ucum=False))  # fmt: skip
    for _ in range(rng.randint(0, 3)):
        w.add(
            "AdverseEvent",
            actuality="actual",
            event={"text": rng.choice(NON_SKIN_AES)},
            date=iso(day1 + dt.timedelta(days=rng.randint(1, 30))),
            extension=[{"url": AE_GRADE, "valueCodeableConcept": {"coding": [{"code": str(rng.randint(1, 3))}]}}],
        )  # fmt: skip
    followup = surgery + dt.timedelta(days=rng.randint(25, 37))
    if death is None or followup < death:
        w.encounter(followup, reason="post-operative follow-up")
    _noise(w, enrol)


def _icb(w: PatientWriter, group: str) -> None:
    """An ICB-treated patient of the cirAE cohort in `group`."""
    rng = w.rng
    start = _day_between(rng, dt.date(2019, 1, 1), dt.date(2023, 12, 31))
    end = ADMIN_END if rng.random() < 0.8 else start + dt.timedelta(days=rng.randint(150, 900))
    end = min(end, ADMIN_END)
    died = rng.random() < 0.3
    death = (
        start + dt.timedelta(days=rng.randint(150, max(151, (end - start).days))) if died else None
    )
    last = death or end
    _patient(w, start - dt.timedelta(days=rng.randint(45 * 365, 85 * 365)), death)
    code, name = rng.choice(CANCERS)
    w.condition(coded(ICD10CM, code, name, text=name), start - dt.timedelta(days=rng.randint(30, 120)),
                stage=[{"summary": {"text": rng.choice(("Stage III", "Stage IV"))}}])  # fmt: skip
    for code, name in COMORBIDITIES:
        if rng.random() < 0.12:
            w.condition(
                coded(ICD10CM, code, name), start - dt.timedelta(days=rng.randint(200, 3000))
            )
    drugs = [rng.choice(ICB_DRUGS[:4])] if rng.random() < 0.85 else [ICB_DRUGS[4], ICB_DRUGS[1]]
    by_code = rng.random() < 0.6
    for cycle in range(rng.randint(1, 4)):
        day = start + dt.timedelta(days=21 * cycle)
        if day >= last:
            break
        for display, rxcui, _ in drugs:
            w.drug(display if by_code else display.split()[0].capitalize(), rxcui if by_code else None,
                   day, 200, IV)  # fmt: skip
    if group in ("dupilumab", "control_1"):
        onset = start + dt.timedelta(days=rng.randint(7, min(120, (last - start).days)))
        term = rng.choice(CIRAE_TERMS)
        if rng.random() < 0.6:
            state = rng.choice(("resolved", "resolved", "remission", "inactive", "active"))
            w.condition({"text": term}, onset, clinical=state)
        else:
            outcome = rng.choice(("resolved", "recovering", "ongoing"))
            w.add("AdverseEvent", actuality="actual", event={"text": term}, date=iso(onset),
                  outcome={"coding": [{"system": f"{HL7}/adverse-event-outcome", "code": outcome}]})  # fmt: skip
        if group == "dupilumab":
            first = onset + dt.timedelta(days=rng.randint(0, min(30, (last - onset).days)))
            w.drug(DUPILUMAB_SCD[0] if by_code else "dupilumab", DUPILUMAB_SCD[1] if by_code else None,
                   first, 600, SC)  # fmt: skip
    if rng.random() < 0.45:
        gc = start + dt.timedelta(days=rng.randint(1, max(1, min(700, (last - start).days - 1))))
        if rng.random() < 0.5:
            w.add(
                "MedicationRequest",
                status="completed",
                intent="order",
                medicationCodeableConcept=coded(RXNORM, "8640", "predniSONE", text="prednisone"),
                authoredOn=gc.isoformat(),
                dosageInstruction=[{"route": ORAL, "timing": {"repeat": {"boundsPeriod": {
                    "start": gc.isoformat(), "end": (gc + dt.timedelta(days=13)).isoformat()}}}}],
            )  # fmt: skip
        else:
            w.drug("methylprednisolone 40 MG Injection", None, gc, 40, IV)
    w.encounter(last, reason="oncology follow-up")
    _noise(w, start)


def draw_patient(seed: int, index: int) -> Drawn:
    """Patient `index` of the cohort of `seed` (independent of the cohort's size)."""
    rng = random.Random(f"{seed}:{index}")
    kind = rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS])[0]
    w = PatientWriter(rng, f"b{seed}-{index:06d}")
    group = None
    if kind in ("nct_subject", "nct_candidate"):
        _nct(w, kind == "nct_subject")
        group = None  # cemiplimab is an ICB; dupilumab with no cirAE: excluded from the groups
    elif kind == "icb":
        group = rng.choices([g for g, _ in CIRAE_GROUPS], weights=[p for _, p in CIRAE_GROUPS])[0]
        _icb(w, group)
    else:
        _patient(w, _day_between(rng, dt.date(1940, 1, 1), dt.date(2000, 12, 31)), None)
        _noise(w, dt.date(2024, 6, 1))
    return Drawn(kind, w.out, group)


def research_study() -> Json:
    """The ResearchStudy NCT06088771 the subjects' ResearchSubjects point at."""
    return {
        "resourceType": "ResearchStudy",
        "id": STUDY_ID,
        "status": "active",
        "identifier": [{"system": "https://clinicaltrials.gov", "value": "NCT06088771"}],
        "title": "Neoadjuvant dupilumab and cemiplimab in resectable NSCLC",
    }


# -- the cohort, streamed --------------------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    """What was written, and what the service should make of it."""

    seed: int
    patients: int
    resources: int = 0
    files: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    cirae_groups: Counter[str] = field(default_factory=Counter)
    resource_types: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> Json:
        return {
            "seed": self.seed,
            "patients": self.patients,
            "resources": self.resources,
            "files": self.files,
            "nct06088771_subjects": self.kinds["nct_subject"],
            "nct06088771_candidates": self.kinds["nct_candidate"],
            "cirae_groups": {g: self.cirae_groups[g] for g, _ in CIRAE_GROUPS},
            # NCT06088771 subjects: dupilumab without a cirAE (CLINICAL.md revision 2)
            "cirae_excluded": self.kinds["nct_subject"],
            "kinds": dict(sorted(self.kinds.items())),
            "resource_types": dict(sorted(self.resource_types.items())),
        }


def patient_groups(seed: int, patients: int, per_file: int) -> Iterator[list[Drawn]]:
    """The cohort `per_file` patients at a time; the ResearchStudy comes first."""
    batch = [Drawn("study", [research_study()])]
    for index in range(patients):
        batch.append(draw_patient(seed, index))
        if len(batch) >= per_file:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_ndjson(out: TextIO, resources: Sequence[Json]) -> None:
    for resource in resources:
        out.write(orjson.dumps(resource).decode())
        out.write("\n")


def _bundle(resources: Sequence[Json]) -> bytes:
    entries = [
        {
            "fullUrl": f"{r['resourceType']}/{r['id']}",
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        }
        for r in resources
    ]
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def write_cohort(
    out_dir: Path, patients: int, seed: int, fmt: str = "ndjson", per_file: int = 100
) -> Plan:
    """Write the cohort to `out_dir` (part-NNNNN.ndjson or .json, then plan.json); its plan."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan(seed, patients)
    for number, group in enumerate(patient_groups(seed, patients, per_file)):
        resources = [r for drawn in group for r in drawn.resources]
        for drawn in group:
            if drawn.kind != "study":
                plan.kinds[drawn.kind] += 1
            if drawn.cirae_group is not None:
                plan.cirae_groups[drawn.cirae_group] += 1
        plan.resource_types.update(r["resourceType"] for r in resources)
        plan.resources += len(resources)
        if fmt == "ndjson":
            with (out_dir / f"part-{number:05d}.ndjson").open("w") as fh:
                _write_ndjson(fh, resources)
        else:
            (out_dir / f"part-{number:05d}.json").write_bytes(_bundle(resources))
        plan.files += 1
    (out_dir / "plan.json").write_bytes(orjson.dumps(plan.as_json(), option=orjson.OPT_INDENT_2))
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    parser.add_argument("--format", choices=("ndjson", "bundles"), default="ndjson")
    parser.add_argument("--per-file", type=int, default=100, help="patients per file")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.per_file < 1:
        parser.error("--patients and --per-file must be at least 1")
    plan = write_cohort(args.out, args.patients, args.seed, args.format, args.per_file)
    print(orjson.dumps(plan.as_json(), option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
