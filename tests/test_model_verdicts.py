"""Model checks done apart from the walk (another process) settle to exactly the in-place answer."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mapping.bundles import ParsedBundle, model_verdicts, parse_bundle, settle_models
from fhir_mapping.issues import Issue
from fhir_mapping.json_codec import dumps

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female"}
OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}
NO_ZONE = {**OBS, "effectiveDateTime": "2020-01-01T10:00:00"}  # passes the walk, fails the model
NO_CODE = {"resourceType": "Observation", "status": "final"}  # model: code is required
UNKNOWN = {**PATIENT, "foo": 1}  # fails the walk


def _put(resource: dict[str, Any], url: str) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "PUT", "url": url}}


def _post(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}


def _bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _seen(parsed: ParsedBundle) -> tuple[str, list[int], list[tuple[int, list[Issue]]]]:
    return (
        parsed.kind,
        [e.index for e in parsed.entries],
        [(i, exc.issues) for i, exc in parsed.failures],
    )


CASES = {
    "all valid": _bundle("transaction", _put(PATIENT, "Patient/p1"), _post(OBS)),
    "model only": _bundle("transaction", _put(PATIENT, "Patient/p1"), _post(NO_ZONE)),
    "walk and model in two entries": _bundle(
        "transaction", _put(UNKNOWN, "Patient/p1"), _post(OBS), _post(NO_CODE)
    ),
    # in place the model fails this entry before its request.url is compared with its type
    "model before the request checks": _bundle("transaction", _put(NO_ZONE, "Patient/p1")),
    "collection": _bundle("collection", {"resource": PATIENT}, {"resource": NO_CODE}),
    "message": _bundle(
        "message",
        {"resource": {"resourceType": "MessageHeader", "eventCoding": {"code": "x"}}},
        {"resource": NO_ZONE},
        {"resource": OBS},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_settled_verdicts_equal_checking_in_place(name: str) -> None:
    bundle = CASES[name]
    in_place = parse_bundle(bundle)
    walked = parse_bundle(bundle, check_models=False)
    settled = settle_models(walked, model_verdicts(dumps(bundle)))
    assert _seen(settled) == _seen(in_place)
    assert settled.models_owed == frozenset()


def test_known_answers_of_the_settled_bundle() -> None:
    walked = parse_bundle(CASES["walk and model in two entries"], check_models=False)
    assert walked.models_owed == frozenset({1, 2})  # entry 0 never got past the walk
    assert [e.index for e in walked.entries] == [1, 2]
    settled = settle_models(walked, model_verdicts(dumps(CASES["walk and model in two entries"])))
    assert [e.index for e in settled.entries] == [1]
    assert [(i, [(x.code, x.expression) for x in exc.issues]) for i, exc in settled.failures] == [
        (0, [("structure", ("Bundle.entry[0].resource.foo",))]),
        (2, [("required", ("Bundle.entry[2].resource.code",))]),
    ]


def test_the_model_issue_replaces_a_later_check_of_the_same_entry() -> None:
    walked = parse_bundle(CASES["model before the request checks"], check_models=False)
    assert [exc.issues[0].code for _, exc in walked.failures] == ["invalid"]  # url vs type
    settled = settle_models(walked, model_verdicts(dumps(CASES["model before the request checks"])))
    assert [exc.issues[0].expression for _, exc in settled.failures] == [
        ("Bundle.entry[0].resource.effectiveDateTime",)
    ]


def test_verdicts_cover_only_accepted_resources() -> None:
    bundle = _bundle(
        "batch",
        {"resource": {"resourceType": "Basic"}},  # not an accepted type: the walk's business
        {"resource": "not an object"},
        {"request": {"method": "GET", "url": "Patient/1"}},
        _post(NO_CODE),
    )
    assert list(model_verdicts(dumps(bundle))) == [3]
    assert model_verdicts(b"[]") == {}
    assert model_verdicts(dumps({"resourceType": "Bundle", "entry": "x"})) == {}


def test_verdicts_of_entries_that_were_not_owed_are_ignored() -> None:
    walked = parse_bundle(CASES["all valid"], check_models=False)
    made_up = {5: [Issue("value", "not an entry of this Bundle")]}
    assert _seen(settle_models(walked, made_up)) == _seen(parse_bundle(CASES["all valid"]))
