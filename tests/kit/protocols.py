"""The packaged study protocols, loaded the way the service loads them, typed for the tests."""

from __future__ import annotations

from fhir_mapping.terminology import Terminology
from service.studies.cirae.protocol import CohortProtocol
from service.studies.interventional.protocol import TrialProtocol
from service.studies.registry import load_protocols


def trial_protocol(terminology: Terminology, study: str = "NCT06088771") -> TrialProtocol:
    """An interventional trial's protocol (eligibility, schedule, deviation rules)."""
    protocol = load_protocols(terminology)[study]
    assert isinstance(protocol, TrialProtocol), study
    return protocol


def cohort_protocol(terminology: Terminology, study: str = "cirae-dupilumab") -> CohortProtocol:
    """An observational cohort study's protocol (groups, covariates, analysis)."""
    protocol = load_protocols(terminology)[study]
    assert isinstance(protocol, CohortProtocol), study
    return protocol
