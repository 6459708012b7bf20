"""The resource types this service accepts, and the search parameters it indexes for each."""

from __future__ import annotations

# Types the trial logic reads, plus those they reference or a real feed carries alongside them
# (Synthea bulk exports, HL7 examples). Anything else is refused with `not-supported`.
SUPPORTED_TYPES: frozenset[str] = frozenset(
    {
        "AdverseEvent",
        "AllergyIntolerance",
        "Condition",
        "DiagnosticReport",
        "Encounter",
        "Immunization",
        "Location",
        "Medication",
        "MedicationAdministration",
        "MedicationRequest",
        "MedicationStatement",
        "Observation",
        "Organization",
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Procedure",
        "Provenance",
        "ResearchStudy",
        "ResearchSubject",
        "ServiceRequest",
        "Specimen",
        "ValueSet",
    }
)

# R4 search parameters of type `reference` that we index: param -> element names holding it.
# `patient` only ever matches Patient targets (as in the R4 definitions: `subject.where(resolve() is Patient)`).
REFERENCE_PARAMS: dict[str, dict[str, tuple[str, ...]]] = {
    "AdverseEvent": {"subject": ("subject",)},
    "AllergyIntolerance": {"patient": ("patient",)},
    "Condition": {"subject": ("subject",), "patient": ("subject",)},
    "DiagnosticReport": {"subject": ("subject",), "patient": ("subject",)},
    "Encounter": {"subject": ("subject",), "patient": ("subject",)},
    "Immunization": {"patient": ("patient",)},
    "MedicationAdministration": {"subject": ("subject",), "patient": ("subject",)},
    "MedicationRequest": {"subject": ("subject",), "patient": ("subject",)},
    "MedicationStatement": {"subject": ("subject",), "patient": ("subject",)},
    "Observation": {"subject": ("subject",), "patient": ("subject",)},
    "Procedure": {"subject": ("subject",), "patient": ("subject",)},
    "ResearchSubject": {"individual": ("individual",), "patient": ("individual",)},
    "ServiceRequest": {"subject": ("subject",), "patient": ("subject",)},
    "Specimen": {"subject": ("subject",), "patient": ("subject",)},
}

PATIENT_ONLY_PARAMS = frozenset({"patient"})
