"""What the trial API may show of a patient: ages for birth dates, opaque ids for FHIR ids.

Known answers from the issue: age is completed years at enrollment (ICB initiation for the
cohort); a month- or year-only birth date is taken at the middle of its span (CLINICAL.md, age at
ICB start); evidence ids are stable, keyed, bound to their study, and never a FHIR id.
"""

from __future__ import annotations

import datetime as dt
import os

import pytest

from service.privacy.ages import whole_years
from service.privacy.evidence import Cited, EvidenceCodec, minimised

D = dt.date


@pytest.mark.parametrize(
    ("first", "last", "on", "age"),
    [
        (D(1959, 8, 14), D(1959, 8, 14), D(2025, 2, 24), 65),
        (D(2000, 3, 1), D(2000, 3, 1), D(2025, 3, 1), 25),  # the birthday itself counts
        (D(2000, 3, 1), D(2000, 3, 1), D(2025, 2, 28), 24),
        (D(2000, 2, 29), D(2000, 2, 29), D(2025, 2, 28), 24),  # leap-day birth, non-leap year
        (D(2000, 2, 29), D(2000, 2, 29), D(2025, 3, 1), 25),
        (D(1960, 1, 1), D(1960, 12, 31), D(2025, 6, 30), 64),  # year only: born ~1960-07-01
        (D(1960, 1, 1), D(1960, 12, 31), D(2025, 7, 1), 65),
        (D(1970, 5, 1), D(1970, 5, 31), D(2025, 5, 15), 54),  # month only: born ~1970-05-16
        (D(1970, 5, 1), D(1970, 5, 31), D(2025, 5, 16), 55),
        (D(2026, 1, 1), D(2026, 1, 1), D(2025, 1, 1), None),  # born after enrollment: bad data
    ],
)
def test_age_in_whole_years(first: D, last: D, on: D, age: int | None) -> None:
    assert whole_years(first, last, on) == age


def _codec() -> EvidenceCodec:
    return EvidenceCodec(None, os.urandom(64))


def test_evidence_ids_round_trip_are_stable_and_bound_to_their_study() -> None:
    codec = _codec()
    cited = Cited("Observation", "7ae327d2-4afc-5f7b-a584-a53835e5ff56", 3)
    sealed = codec.seal("NCT06088771", cited)
    assert sealed.startswith("EV-")
    assert "7ae327d2" not in sealed
    assert codec.seal("NCT06088771", cited) == sealed  # stable: clients may compare them
    assert codec.open("NCT06088771", sealed) == cited
    assert cited.reference == "Observation/7ae327d2-4afc-5f7b-a584-a53835e5ff56/_history/3"
    assert codec.open("cirae-dupilumab", sealed) is None  # issued under another study
    assert _codec().open("NCT06088771", sealed) is None  # another deployment's key
    tampered = sealed[:-2] + ("AA" if sealed[-2:] != "AA" else "BB")
    for forged in (tampered, "EV-", "EV-!!!", "Observation/1", "", "EV-" + "A" * 700):
        assert codec.open("NCT06088771", forged) is None, forged


def test_minimised_replaces_every_cited_source_and_reference() -> None:
    codec = _codec()

    def seal(cited: Cited) -> str:
        return codec.seal("S", cited)

    body = {
        "evidence": [
            {
                "resource_type": "Procedure",
                "id": "p1",
                "version": "2",
                "reference": "Procedure/p1/_history/2",
                "value": "Procedure completed",
            }
        ],
        "values": {
            "study_reference": "ResearchStudy/rs-9",
            "parent": [
                "https://ehr.example/fhir/Specimen/s1/_history/4",
                "urn:uuid:1f2e",
                "Specimen?identifier=https://lab.example/accession|ACC-998877",
                "Specimen/sp-0#x",
                "HTTPS://EHR.EXAMPLE/fhir/Patient/p1",
                "Patient/p1/_history/current",
            ],
            "route": "IV/SC",
            "text": "lobectomy, right upper lobe",
            "count": 3,
        },
    }
    out = minimised(body, seal)
    [evidence] = out["evidence"]
    assert evidence == {
        "evidence_id": seal(Cited("Procedure", "p1", 2)),
        "resource_type": "Procedure",
        "value": "Procedure completed",
    }
    values = out["values"]
    assert codec.open("S", values["study_reference"]) == Cited("ResearchStudy", "rs-9", 0)
    assert codec.open("S", values["parent"][0]) == Cited("Specimen", "s1", 4)
    assert codec.open("S", values["parent"][4]) == Cited("Patient", "p1", 0)
    assert values["parent"][1:4] + values["parent"][5:] == [None, None, None, None]
    assert (values["route"], values["text"], values["count"]) == (
        "IV/SC",
        "lobectomy, right upper lobe",
        3,
    )
    assert Cited("ResearchStudy", "rs-9", 0).reference == "ResearchStudy/rs-9"
