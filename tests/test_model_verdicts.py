"""Model checks done apart from the walk (another process) settle to exactly the in-place answer."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mapping.bundles import (
    BODY,
    ParsedBundle,
    bundle_envelope,
    estimated_atomic_entries,
    model_verdicts,
    owed_checker,
    parse_bundle,
    settle_models,
)
from fhir_mapping.issues import InvalidContentError, Issue
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


def test_verdicts_on_entries_the_walk_refused_are_ignored() -> None:
    bundle = CASES["walk and model in two entries"]
    verdicts = model_verdicts(dumps(bundle))
    assert sorted(verdicts) == [0, 2]  # the model refuses the unknown element too, in its words
    settled = settle_models(parse_bundle(bundle, check_models=False), verdicts)
    first = settled.failures[0][1].issues
    assert [i.diagnostics for i in first] == ["Bundle.entry[0].resource: unknown element 'foo'"]


URN = "urn:uuid:6f1c1a8e-27a4-4c55-9a3b-2f8d1d0c0201"


def _with_references() -> dict[str, Any]:
    return _bundle(
        "transaction",
        {**_post(PATIENT), "fullUrl": URN},
        _post({**NO_ZONE, "subject": {"reference": URN}}),
        _post({**OBS, "subject": {"reference": URN}}),
    )


def test_owed_verdicts_in_place_check_the_references_as_received() -> None:
    bundle = _with_references()
    walked = parse_bundle(bundle, check_models=False)
    rewritten = [ref for e in walked.entries for _, ref, _ in e.references]
    assert len(rewritten) == 2
    for ref in rewritten:  # what the transaction's rewrite does before the gate asks
        ref["reference"] = "Patient/server-id"
    verdicts = owed_checker(bundle, walked)(None)
    assert verdicts == model_verdicts(dumps(_with_references()))
    assert set(verdicts) == {1}
    assert [ref["reference"] for ref in rewritten] == ["Patient/server-id"] * 2  # put back
    assert _seen(settle_models(walked, verdicts)) == _seen(parse_bundle(_with_references()))


def test_owed_verdicts_cover_entries_that_failed_a_later_check() -> None:
    bundle = CASES["model before the request checks"]
    walked = parse_bundle(bundle, check_models=False)
    assert walked.entries == []
    assert owed_checker(bundle, walked)(None) == model_verdicts(dumps(bundle))


def test_a_bundle_envelope_is_checked_before_any_entry() -> None:
    kind, raw_entries, start = bundle_envelope(CASES["message"])
    assert (kind, len(raw_entries), start) == ("message", 3, 1)
    with pytest.raises(InvalidContentError, match="MessageHeader"):
        bundle_envelope(_bundle("message", {"resource": PATIENT}))
    with pytest.raises(InvalidContentError, match=r"Bundle\.type"):
        bundle_envelope(_bundle("searchset"))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (dumps(_bundle("transaction", *[_post(OBS)] * 3)), 3),
        (dumps(_bundle("collection", *[{"resource": PATIENT}] * 2)), 2),
        (b'{"resourceType": "Bundle", "type" :\n "transaction", "entry": []}', 0),
        (dumps(_bundle("batch", *[_post(OBS)] * 3)), 0),
        (b'{"type" : "batch", "entry": [{"resource": {}}]}', 0),  # spaced like any JSON
        (dumps(PATIENT), 0),
        (b"not JSON at all", 0),
    ],
)
def test_entries_are_estimated_from_the_bytes(body: bytes, expected: int) -> None:
    assert estimated_atomic_entries(body) == expected


def test_bytes_the_strict_parse_refuses_get_one_verdict_for_the_body() -> None:
    raw = dumps(_bundle("transaction", _post(NO_ZONE), _post(OBS))).replace(
        b'"status":"final"', b'"status":"final","status":"final"', 1
    )
    asked: list[int] = []

    def claim(index: int) -> bool:
        asked.append(index)
        return True

    verdicts = model_verdicts(raw, claim)
    assert list(verdicts) == [BODY]  # and no entry was checked
    [issue] = verdicts[BODY]
    assert (issue.code, issue.diagnostics) == (
        "structure",
        "duplicate key(s) 'status' in one JSON object",
    )
    assert asked == []
