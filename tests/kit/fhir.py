"""FHIR R4 builders for tests: resources shaped like hospital feeds, Bundles and their entries.

Every resource builder takes keyword arguments only and has defaults for what a feed always sends
(a status, the subject Patient/p1), so a test names only what it is about. Conventions:

- an element whose argument is None is left out (`clinical=None`: no clinicalStatus);
- where FHIR wants a CodeableConcept, a plain string stands for one with only that text;
- a date may be a `datetime.date` or the FHIR text itself ("2025-03", "2025-03-10T09:00:00-05:00");
- `**extra` elements are added last, unfiltered: they override the defaults, None included.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

Json = dict[str, Any]
Concept = str | Json  # a CodeableConcept, or the text of one
Date = str | dt.date

# -- internals ------------------------------------------------------------------------------------


def _iso(value: Date | None) -> str | None:
    """A date argument as FHIR text."""
    return value.isoformat() if isinstance(value, dt.date) else value


def _present(elements: Json) -> Json:
    """The elements that are not None."""
    return {k: v for k, v in elements.items() if v is not None}


def _status(system: str, code: str | None) -> Json | None:
    """A coded status (clinicalStatus, verificationStatus …) of one system, or None."""
    return {"coding": [{"system": system, "code": code}]} if code else None


def _subject(patient: str | None) -> Json | None:
    """The Reference to Patient/{patient}, or None for a resource about no one."""
    return reference(f"Patient/{patient}") if patient is not None else None


def _resource(resource_type: str, id: str | None, elements: Json, extra: Json) -> Json:
    """A resource of the given elements (None ones left out), then `extra` as given."""
    head: Json = {"resourceType": resource_type, **({"id": id} if id is not None else {})}
    return {**head, **_present(elements), **extra}


# -- code systems and other canonical URLs --------------------------------------------------------

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"
HGNC = "http://www.genenames.org/geneId"
AJCC = "http://cancerstaging.org"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
MEDDRA = "https://www.meddra.org"
OMB = "urn:oid:2.16.840.1.113883.6.238"
HL7 = "http://terminology.hl7.org/CodeSystem"
MDR = f"{HL7}/mdr"
ACT_CODE = f"{HL7}/v3-ActCode"
V2_0487 = f"{HL7}/v2-0487"
CONDITION_CLINICAL = f"{HL7}/condition-clinical"
CONDITION_VERIFICATION = f"{HL7}/condition-ver-status"
CONDITION_CATEGORY = f"{HL7}/condition-category"
OBSERVATION_CATEGORY = f"{HL7}/observation-category"
AE_SERIOUSNESS = f"{HL7}/adverse-event-seriousness"
AE_OUTCOME = f"{HL7}/adverse-event-outcome"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition"
US_CORE_RACE = f"{US_CORE}/us-core-race"
US_CORE_ETHNICITY = f"{US_CORE}/us-core-ethnicity"
US_CORE_BIRTHSEX = f"{US_CORE}/us-core-birthsex"
AE_BACKPORT = "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition"
AE_GRADE = f"{AE_BACKPORT}/ae-grade"
LEGACY_CTCAE_GRADE = "http://example.org/fhir/StructureDefinition/ctcae-grade"
CT_GOV = "https://clinicaltrials.gov"
MRN = "urn:mrn"
NCT = "NCT06088771"
SUBJECT_NUMBER = "urn:study:nct06088771:subject"
STUDY_ID = "rs-nct"  # the ResearchStudy of NCT06088771 as the tests store it
PLACEHOLDER_RXCUI = "999999"  # a study-drug code in no value set: only the display can match


# -- data types -------------------------------------------------------------------------------------


def coded(
    system: str | None, code: str | None, display: str | None = None, *, text: str | None = None
) -> Json:
    """A CodeableConcept of one coding (absent parts left out), as feeds code diagnoses and drugs."""
    coding = _present({"system": system, "code": code, "display": display})
    return {"coding": [coding], **({"text": text} if text is not None else {})}


def concept(value: Concept) -> Json:
    """A CodeableConcept from a full one or from its text alone (free-text feeds)."""
    return {"text": value} if isinstance(value, str) else value


def quantity(value: Any, unit: str, *, ucum: bool = True) -> Json:
    """A Quantity; UCUM-coded unless `ucum` is False (then only the unit as written)."""
    return {"value": value, "unit": unit, **({"system": UCUM, "code": unit} if ucum else {})}


def reference(target: str, **extra: Any) -> Json:
    """A literal Reference ("Patient/p1", "urn:uuid:…"), with display or type in `extra`."""
    return {"reference": target, **extra}


def period(start: Date | None = None, end: Date | None = None) -> Json:
    """A Period of whichever ends are given."""
    return _present({"start": _iso(start), "end": _iso(end)})


def us_core_race(
    *, code: str | None = None, display: str | None = None, text: str | None = None
) -> Json:
    """The US Core race extension with at most one OMB category and a text."""
    parts: list[Json] = []
    if code or display:
        coding = _present({"system": OMB, "code": code, "display": display})
        parts.append({"url": "ombCategory", "valueCoding": coding})
    if text:
        parts.append({"url": "text", "valueString": text})
    return {"url": US_CORE_RACE, "extension": parts}


# -- common codes (the displays a feed sends with them) --------------------------------------------

NSCLC = coded(SNOMED, "254637007", "Non-small cell lung cancer")
LUNG_CANCER_C34_90 = coded(
    ICD10CM, "C34.90", "Malignant neoplasm of unspecified part of unspecified bronchus or lung"
)
RHEUMATOID_ARTHRITIS = coded(
    ICD10CM,
    "M05.79",
    "Rheumatoid arthritis with rheumatoid factor of multiple sites without organ or systems involvement",
)
HYPERTENSION = coded(ICD10CM, "I10", "Essential (primary) hypertension")
BONE_METASTASIS = coded(ICD10CM, "C79.51", "Secondary malignant neoplasm of bone")
LUNG_METASTASIS = coded(ICD10CM, "C78.01", "Secondary malignant neoplasm of right lung")
LOBECTOMY = coded(SNOMED, "173171007", "Lobectomy of lung")
PARTIAL_LOBECTOMY = coded(SNOMED, "359615001", "Partial lobectomy of lung")
LUNG_BIOPSY = coded(SNOMED, "78603008", "Biopsy of lung")
ORAL = coded(SNOMED, "26643006", "Oral route")
SUBCUTANEOUS = coded(SNOMED, "34206005", "Subcutaneous route")
PREDNISONE = "predniSONE 20 MG Oral Tablet"
T_CLINICAL = coded(LOINC, "21905-5", "Primary tumor.clinical [Class] Cancer")
T_PATHOLOGICAL = coded(LOINC, "21899-0", "Primary tumor.pathology [Class] Cancer")
N_CLINICAL = coded(LOINC, "21906-3", "Regional lymph nodes.clinical [Class] Cancer")
M_CLINICAL = coded(LOINC, "21907-1", "Distant metastases.clinical [Class] Cancer")
STAGE_CLINICAL = coded(LOINC, "21908-9", "Stage group.clinical Cancer")
STAGE_PATHOLOGICAL = coded(LOINC, "21902-2", "Stage group.pathology Cancer")
GENETIC_VARIANT = coded(LOINC, "69548-6", "Genetic variant assessment")
GENE_STUDIED = coded(LOINC, "48018-6", "Gene studied [ID]")
SMOKING_STATUS = coded(LOINC, "72166-2", "Tobacco smoking status")
PRESENT = coded(LOINC, "LA9633-4", "Present")
ABSENT = coded(LOINC, "LA9634-2", "Absent")
EGFR = coded(HGNC, "HGNC:3236", "EGFR")
ALK = coded(HGNC, "HGNC:427", "ALK")
ROS1 = coded(HGNC, "HGNC:10261", "ROS1")


# -- resources ----------------------------------------------------------------------------------------


def patient(
    *,
    id: str | None = None,
    mrn: str | None = None,
    mrn_system: str = MRN,
    gender: str | None = None,
    birth_date: str | None = None,
    **extra: Any,
) -> Json:
    """A Patient, with one MRN identifier when `mrn` is given."""
    identifier = [{"system": mrn_system, "value": mrn}] if mrn is not None else None
    elements = {"identifier": identifier, "gender": gender, "birthDate": birth_date}
    return _resource("Patient", id, elements, extra)


def research_study(
    *,
    id: str = STUDY_ID,
    nct: str = NCT,
    system: str | None = CT_GOV,
    status: str = "active",
    **extra: Any,
) -> Json:
    """The ResearchStudy a ResearchSubject names, identified by its NCT number."""
    identifier = [_present({"system": system, "value": nct})]
    return _resource("ResearchStudy", id, {"status": status, "identifier": identifier}, extra)


def research_subject(
    *,
    id: str | None = None,
    patient: str = "p1",
    study_id: str = STUDY_ID,
    status: str = "on-study",
    number: str | None = None,
    number_system: str = SUBJECT_NUMBER,
    start: Date | None = None,
    end: Date | None = None,
    **extra: Any,
) -> Json:
    """A patient's enrollment record in a study (on study unless told otherwise)."""
    elements = {
        "status": status,
        "identifier": [{"system": number_system, "value": number}] if number else None,
        "period": period(start, end) or None,
        "study": reference(f"ResearchStudy/{study_id}"),
        "individual": reference(f"Patient/{patient}"),
    }
    return _resource("ResearchSubject", id, elements, extra)


def condition(
    *,
    id: str | None = None,
    code: Concept,
    patient: str | None = "p1",
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    onset: Date | None = None,
    recorded: Date | None = None,
    **extra: Any,
) -> Json:
    """A Condition, active and confirmed unless told otherwise."""
    elements = {
        "clinicalStatus": _status(CONDITION_CLINICAL, clinical),
        "verificationStatus": _status(CONDITION_VERIFICATION, verification),
        "code": concept(code),
        "subject": _subject(patient),
        "onsetDateTime": _iso(onset),
        "recordedDate": _iso(recorded),
    }
    return _resource("Condition", id, elements, extra)


def condition_category(code: str, display: str | None = None) -> list[Json]:
    """Condition.category of one code ("problem-list-item", "encounter-diagnosis")."""
    return [
        {"coding": [_present({"system": CONDITION_CATEGORY, "code": code, "display": display})]}
    ]


def observation(
    *,
    id: str | None = None,
    code: Concept,
    patient: str | None = "p1",
    status: str = "final",
    effective: Date | None = None,
    **extra: Any,
) -> Json:
    """An Observation (final unless told otherwise); its value goes in `extra` (valueQuantity=…)."""
    elements = {
        "status": status,
        "code": concept(code),
        "subject": _subject(patient),
        "effectiveDateTime": _iso(effective),
    }
    return _resource("Observation", id, elements, extra)


def viable_tumour(*, subject: str, value: Any = 1, **extra: Any) -> Json:
    """A final percent-viable-tumour Observation about any literal reference (urn:uuid:, search)."""
    return observation(
        code="percent viable tumour",
        patient=None,
        subject=reference(subject),
        valueQuantity=quantity(value, "%", ucum=False),
        **extra,
    )


def genomic_variant(
    *,
    id: str | None = None,
    gene: Json,
    present: bool,
    patient: str | None = "p1",
    effective: Date | None = None,
    **extra: Any,
) -> Json:
    """An mCODE genomic variant assessment (LOINC 69548-6) of one gene studied: present or absent."""
    return observation(
        id=id,
        code=GENETIC_VARIANT,
        patient=patient,
        effective=effective,
        component=[{"code": GENE_STUDIED, "valueCodeableConcept": gene}],
        valueCodeableConcept=PRESENT if present else ABSENT,
        **extra,
    )


def smoking_status(
    *,
    id: str | None = None,
    finding: Concept,
    patient: str | None = "p1",
    effective: Date | None = None,
    **extra: Any,
) -> Json:
    """A US Core smoking-status Observation (LOINC 72166-2) in the social-history category."""
    category = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "social-history"}]}]
    return observation(
        id=id,
        code=SMOKING_STATUS,
        patient=patient,
        effective=effective,
        valueCodeableConcept=concept(finding),
        category=category,
        **extra,
    )


def medication_administration(
    *,
    id: str | None = None,
    medication: Concept | None = None,
    patient: str | None = "p1",
    status: str = "completed",
    effective: Date | None = None,
    dose: Json | None = None,
    route: Concept | None = None,
    **extra: Any,
) -> Json:
    """A MedicationAdministration (completed unless told otherwise) with an optional dosage."""
    dosage = _present({"dose": dose, "route": concept(route) if route else None})
    elements = {
        "status": status,
        "medicationCodeableConcept": concept(medication) if medication else None,
        "subject": _subject(patient),
        "effectiveDateTime": _iso(effective),
        "dosage": dosage or None,
    }
    return _resource("MedicationAdministration", id, elements, extra)


def dose(
    *,
    id: str | None = None,
    drug: str,
    amount: Any,
    unit: str = "mg",
    when: Date,
    route: Concept | None = None,
    patient: str | None = "p1",
    code: str = PLACEHOLDER_RXCUI,
) -> Json:
    """A completed administration of a drug named by its RxNorm display, with a UCUM dose."""
    return medication_administration(
        id=id,
        medication=coded(RXNORM, code, drug),
        patient=patient,
        effective=when,
        dose=quantity(amount, unit),
        route=route,
    )


def medication_request(
    *,
    id: str | None = None,
    medication: Concept | None = None,
    patient: str | None = "p1",
    status: str = "active",
    intent: str = "order",
    authored: Date | None = None,
    route: Concept | None = None,
    **extra: Any,
) -> Json:
    """A MedicationRequest (an active order unless told otherwise), with a route if given."""
    elements = {
        "status": status,
        "intent": intent,
        "medicationCodeableConcept": concept(medication) if medication else None,
        "subject": _subject(patient),
        "authoredOn": _iso(authored),
        "dosageInstruction": [{"route": concept(route)}] if route else None,
    }
    return _resource("MedicationRequest", id, elements, extra)


def medication_statement(
    *,
    id: str | None = None,
    medication: Concept | None = None,
    patient: str | None = "p1",
    status: str = "completed",
    route: Concept | None = None,
    **extra: Any,
) -> Json:
    """A MedicationStatement (reported use); its effective[x] goes in `extra`."""
    elements = {
        "status": status,
        "medicationCodeableConcept": concept(medication) if medication else None,
        "subject": _subject(patient),
        "dosage": [{"route": concept(route)}] if route else None,
    }
    return _resource("MedicationStatement", id, elements, extra)


def medication(*, id: str | None = None, code: Concept, **extra: Any) -> Json:
    """A Medication resource, as stored or contained, that a drug reference points at."""
    return _resource("Medication", id, {"code": concept(code)}, extra)


def procedure(
    *,
    id: str | None = None,
    code: Concept,
    patient: str | None = "p1",
    status: str = "completed",
    performed: Date | None = None,
    **extra: Any,
) -> Json:
    """A Procedure (completed unless told otherwise) performed on a day."""
    elements = {
        "status": status,
        "code": concept(code),
        "subject": _subject(patient),
        "performedDateTime": _iso(performed),
    }
    return _resource("Procedure", id, elements, extra)


def service_request(
    *,
    id: str | None = None,
    code: Concept,
    patient: str | None = "p1",
    status: str = "active",
    intent: str = "order",
    authored: Date | None = None,
    occurrence: Date | None = None,
    **extra: Any,
) -> Json:
    """An order for a procedure (active unless told otherwise), written on one day for another."""
    elements = {
        "status": status,
        "intent": intent,
        "code": concept(code),
        "subject": _subject(patient),
        "authoredOn": _iso(authored),
        "occurrenceDateTime": _iso(occurrence),
    }
    return _resource("ServiceRequest", id, elements, extra)


def encounter(
    *,
    id: str | None = None,
    patient: str | None = "p1",
    status: str = "finished",
    klass: str | Json | None = "AMB",
    start: Date | None = None,
    end: Date | None = None,
    **extra: Any,
) -> Json:
    """An Encounter (a finished ambulatory visit unless told otherwise) over a period."""
    elements = {
        "status": status,
        "class": {"code": klass} if isinstance(klass, str) else klass,
        "subject": _subject(patient),
        "period": period(start, end) or None,
    }
    return _resource("Encounter", id, elements, extra)


def specimen(
    *,
    id: str | None = None,
    type: Concept | None = None,
    patient: str | None = "p1",
    status: str | None = None,
    collected: Date | None = None,
    **extra: Any,
) -> Json:
    """A Specimen collected on a day (status is optional in R4, so absent unless given)."""
    elements = {
        "status": status,
        "type": concept(type) if type else None,
        "subject": _subject(patient),
        "collection": {"collectedDateTime": _iso(collected)} if collected else None,
    }
    return _resource("Specimen", id, elements, extra)


def adverse_event(
    *,
    id: str | None = None,
    event: Concept,
    patient: str | None = "p1",
    actuality: str = "actual",
    date: Date | None = None,
    grade: str | None = None,
    outcome: str | Json | None = None,
    **extra: Any,
) -> Json:
    """An actual AdverseEvent, with a CTCAE grade (backport IG extension) and outcome if given.

    A string `outcome` is a code of the HL7 adverse-event-outcome system ("resolved").
    """
    ae_grade = {"url": AE_GRADE, "valueCodeableConcept": {"coding": [{"code": grade}]}}
    elements = {
        "actuality": actuality,
        "event": concept(event),
        "subject": _subject(patient),
        "date": _iso(date),
        "outcome": _status(AE_OUTCOME, outcome) if isinstance(outcome, str) else outcome,
        "extension": [ae_grade] if grade is not None else None,
    }
    return _resource("AdverseEvent", id, elements, extra)


# -- Bundles ---------------------------------------------------------------------------------------


def entry(
    *,
    method: str,
    url: str,
    resource: Json | None = None,
    full_url: str | None = None,
    **request: Any,
) -> Json:
    """A transaction/batch entry; `request` adds ifMatch, ifNoneExist and the like."""
    out: Json = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        out = {"resource": resource, **out}
    return {"fullUrl": full_url, **out} if full_url else out


def put_entry(resource: Json, **request: Any) -> Json:
    """PUT the resource at its own type and id (an idempotent write of a feed's record)."""
    url = f"{resource['resourceType']}/{resource['id']}"
    return entry(method="PUT", url=url, resource=resource, **request)


def post_entry(resource: Json, *, full_url: str | None = None, **request: Any) -> Json:
    """POST the resource to its type (the server assigns the id)."""
    url = resource["resourceType"]
    return entry(method="POST", url=url, resource=resource, full_url=full_url, **request)


def bundle(*entries: Json, type: str | None = "transaction") -> Json:
    """A Bundle of the entries (no `type` when it is None, to test that refusal)."""
    out: Json = {"resourceType": "Bundle", "entry": list(entries)}
    return {**out, "type": type} if type is not None else out


def body(document: Any) -> bytes:
    """JSON as a request body."""
    return json.dumps(document).encode()


def transaction(*entries: Json, type: str | None = "transaction") -> bytes:
    """A transaction (or other type of) Bundle as a request body."""
    return body(bundle(*entries, type=type))


def put_all(*resources: Json) -> bytes:
    """One transaction Bundle that PUTs every resource by id, as a request body."""
    return transaction(*(put_entry(r) for r in resources))


def statuses(response_bundle: Json) -> list[str]:
    """The response.status of each entry of a transaction/batch response."""
    return [e["response"]["status"] for e in response_bundle["entry"]]
