"""Pure FHIR logic: lossless JSON, strict validation, references, Bundle parsing (no database)."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mapping.bundles import derived_id, parse_bundle, parse_etag
from fhir_mapping.issues import InvalidContentError
from fhir_mapping.json_codec import content_hash, dumps, loads, loads_unguarded
from fhir_mapping.references import identifier_index, parse_reference, reference_index
from fhir_mapping.validation import MAX_DEPTH, validate_resource
from tests.conftest import TEST_DATA


@pytest.mark.parametrize(
    "text",
    [
        b'{"v":0.10}',
        b'{"v":1e5}',
        b'{"v":-0.0}',
        b'{"v":123456789012345678901234567890.123456789}',
        b'{"d":"2025-06","t":"2016-12-31T23:59:60Z","o":"2025-01-01T00:30:00+14:00"}',
        b'{"u":"\\u00e9\\ud83d\\ude00","n":null,"b":[true,false]}',
    ],
)
def test_round_trip_keeps_the_lexical_form(text: bytes) -> None:
    assert dumps(loads(text)) == text.replace(b"\\u00e9", "é".encode()).replace(
        b"\\ud83d\\ude00", "😀".encode()
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"a":NaN}', "NaN"),
        (b'{"a":-Infinity}', "-Infinity"),
        (b'{"a":1} {}', "extra data"),
        (b'{"valueQuantity":{"value":1e400}}', "outside the range of a FHIR decimal"),
        (b'{"value":-1.5e-400}', "outside the range of a FHIR decimal"),
        (b'{"value":' + b"9" * 310 + b"}", "outside the range of a FHIR number"),
        (b"\xff", "not valid UTF-8"),
        (b'{"a":', "malformed JSON"),
    ],
)
def test_refused_json(text: bytes, needle: str) -> None:
    with pytest.raises(InvalidContentError) as caught:
        loads(text)
    assert needle in str(caught.value)
    assert caught.value.issues[0].code == "structure"


ACCEPTED_BOTH_WAYS = [
    b'{"v":0.10,"w":1e5,"x":-0.0,"y":1.50e-3,"z":1E300,"m":1.7976931348623157e308}',
    b'{"v":123456789012345678901234567890.123456789,"i":-12345678901234567}',
    b'{"u":"\\u00e9\\ud83d\\ude00","n":null,"b":[true,false],"t":"a\\tb\\nc"}',
    b' {"nested":[{"a":[1,2,{"b":{}}]}],"empty":[]} \n',
]


@pytest.mark.parametrize("text", ACCEPTED_BOTH_WAYS)
def test_unguarded_parse_is_the_strict_parse(text: bytes) -> None:
    fast, strict = loads_unguarded(text), loads(text)
    assert fast == strict
    assert dumps(fast) == dumps(strict)  # decimals keep their lexical form too


def test_a_leading_byte_order_mark_is_dropped() -> None:
    """RFC 8259 §8.1 lets a parser ignore it; SMART Health Cards carry one."""
    assert loads(b'\xef\xbb\xbf{"resourceType":"Patient"}') == {"resourceType": "Patient"}
    with pytest.raises(InvalidContentError):  # only at the start: elsewhere it is not whitespace
        loads(b'{"a":1}\xef\xbb\xbf')


def test_unguarded_parse_keeps_integers_beyond_64_bits() -> None:
    text = b'{"i":123456789012345678901234567890}'
    assert loads_unguarded(text) == loads(text) == {"i": 123456789012345678901234567890}


def test_unguarded_parse_agrees_on_the_synthea_export() -> None:
    files = sorted((TEST_DATA / "synthea-10").glob("*.ndjson"))
    assert len(files) == 9
    for path in files:
        raw = b"[" + b",".join(path.read_bytes().splitlines()) + b"]"
        fast = loads_unguarded(raw)
        assert fast is not None, path.name
        assert dumps(fast) == dumps(loads(raw)), path.name


@pytest.mark.parametrize(
    "text",
    [
        b'{"a":NaN}',
        b'{"a":-Infinity}',
        b"\xef\xbb\xbf{}",
        b'{"a":1} {}',
        b"\xff",
        b'{"a":',
        b'{"a":"\\u0001"}',  # an escaped control character: FHIR strings refuse it
        b'{"a":"\\ud800"}',  # a lone surrogate: `loads` keeps it, this parser cannot
        b'{"a":' + b"9" * 5000 + b"}",
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_unguarded_parse_leaves_anything_unusual_to_the_strict_parse(text: bytes) -> None:
    assert loads_unguarded(text) is None


def test_unguarded_parse_keeps_the_last_of_duplicate_keys() -> None:
    """Why only a caller whose bytes `loads` also parses may use it."""
    assert loads_unguarded(b'{"a":1,"a":2}') == {"a": 2}


def test_content_hash_ignores_key_order_id_and_server_meta() -> None:
    a = loads(b'{"resourceType":"Patient","id":"1","active":true,"meta":{"versionId":"3"}}')
    b = loads(b'{"active":true,"resourceType":"Patient","id":"2"}')
    c = loads(b'{"resourceType":"Patient","active":true,"meta":{"source":"x"}}')
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(c)
    assert content_hash(loads(b'{"v":0.10}')) != content_hash(loads(b'{"v":0.1}'))


def test_derived_id_is_a_stable_uuid_of_the_content() -> None:
    one = loads(b'{"resourceType":"Patient","active":true}')
    assert derived_id("Patient", one) == derived_id("Patient", dict(one))
    assert derived_id("Patient", one) != derived_id("Patient", {**one, "active": False})


def _issues(resource: dict[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    with pytest.raises(InvalidContentError) as caught:
        validate_resource(resource)
    return [(i.code, i.expression) for i in caught.value.issues]


OBS: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (
            {**OBS, "valueQuantity": {"value": "5"}},
            [("value", ("Observation.valueQuantity.value",))],
        ),
        ({**OBS, "valueInteger": 1.5}, [("value", ("Observation.valueInteger",))]),
        ({**OBS, "valueBoolean": 1}, [("value", ("Observation.valueBoolean",))]),
        ({**OBS, "status": "done"}, [("code-invalid", ("Observation.status",))]),
        (
            {**OBS, "effectiveDateTime": "2025-01-01T10:00:00"},
            [("value", ("Observation.effectiveDateTime",))],
        ),
        ({**OBS, "bogus": 1}, [("structure", ("Observation.bogus",))]),
        ({**OBS, "category": []}, [("structure", ("Observation.category",))]),
        ({**OBS, "category": {"text": "x"}}, [("structure", ("Observation.category",))]),
        ({**OBS, "note": [None]}, [("structure", ("Observation.note[0]",))]),
        (
            {"resourceType": "Observation", "code": {"text": "x"}},
            [("required", ("Observation.status",))],
        ),
        (
            {**OBS, "modifierExtension": [{"url": "http://x", "valueBoolean": True}]},
            [("extension", ("Observation.modifierExtension",))],
        ),
        (
            {**OBS, "component": [{"code": {"text": "c"}, "valueQuantity": {"value": True}}]},
            [("value", ("Observation.component[0].valueQuantity.value",))],
        ),
        (
            {**OBS, "contained": [{"resourceType": "Patient", "id": "p", "gender": "F"}]},
            [("code-invalid", ("Observation.contained[0].gender",))],
        ),
        ({"resourceType": "Composition"}, [("not-supported", ("Composition",))]),
        ({"status": "final"}, [("required", ("resource",))]),
    ],
)
def test_validation_names_the_element(
    resource: dict[str, Any], expected: list[tuple[str, tuple[str, ...]]]
) -> None:
    assert _issues(resource) == expected


MED_REQUEST: dict[str, Any] = {
    "resourceType": "MedicationRequest",
    "status": "active",
    "intent": "order",
    "subject": {"reference": "Patient/1"},
    "medicationCodeableConcept": {"text": "dupilumab"},
}


def _repeat(**repeat: Any) -> dict[str, Any]:
    return {**MED_REQUEST, "dosageInstruction": [{"timing": {"repeat": repeat}}]}


REPEAT = "MedicationRequest.dosageInstruction[0].timing.repeat"


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({**MED_REQUEST, "priority": "soon"}, [("code-invalid", ("MedicationRequest.priority",))]),
        (_repeat(periodUnit="day", period=1), [("code-invalid", (f"{REPEAT}.periodUnit",))]),
        (
            _repeat(dayOfWeek=["mon", "funday"]),
            [("code-invalid", (f"{REPEAT}.dayOfWeek[1]",))],
        ),
        (_repeat(when=["ACM", "LUNCH"]), [("code-invalid", (f"{REPEAT}.when[1]",))]),
        (
            {**OBS, "valueQuantity": {"value": 1, "comparator": "~"}},
            [("code-invalid", ("Observation.valueQuantity.comparator",))],
        ),
        (
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"code": "AMB"},
                "statusHistory": [{"status": "done", "period": {"start": "2025-01-01"}}],
            },
            [("code-invalid", ("Encounter.statusHistory[0].status",))],
        ),
    ],
)
def test_required_bindings_beyond_status_are_checked(
    resource: dict[str, Any], expected: list[tuple[str, tuple[str, ...]]]
) -> None:
    assert _issues(resource) == expected


def test_every_code_of_those_bindings_is_accepted() -> None:
    """The whole R4 value sets (units-of-time, days-of-week, event-timing, request-priority)."""
    every = _repeat(
        periodUnit="a",
        durationUnit="s",
        duration=1,
        period=1,
        dayOfWeek=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        when=[
            *("MORN", "MORN.early", "MORN.late", "NOON", "AFT", "AFT.early", "AFT.late", "EVE"),
            *("EVE.early", "EVE.late", "NIGHT", "PHS", "HS", "WAKE", "C", "CM", "CD", "CV"),
            *("AC", "ACM", "ACD", "ACV", "PC", "PCM", "PCD", "PCV"),
        ],
    )
    for priority in ("routine", "urgent", "asap", "stat"):
        assert validate_resource({**every, "priority": priority}).resource_type == (
            "MedicationRequest"
        )
    for unit in ("s", "min", "h", "d", "wk", "mo", "a"):
        assert validate_resource(_repeat(periodUnit=unit, period=1)).resource_type == (
            "MedicationRequest"
        )


def test_validation_accepts_primitive_extensions_and_collects_references() -> None:
    resource = {
        "resourceType": "Patient",
        "name": [
            {
                "given": ["A", None],
                "_given": [None, {"extension": [{"url": "u", "valueString": "B"}]}],
            }
        ],
        "generalPractitioner": [{"reference": "Practitioner/1"}],
        "managingOrganization": {"reference": "Organization?identifier=x|1"},
        "birthDate": "1970-06",
    }
    checked = validate_resource(resource)
    assert [path for path, _ in checked.references] == [
        "Patient.generalPractitioner[0]",
        "Patient.managingOrganization",
    ]


@pytest.mark.parametrize(
    ("ref", "kind", "rtype", "rid", "vid"),
    [
        ("Patient/123", "literal", "Patient", "123", None),
        ("Patient/123/_history/4", "literal", "Patient", "123", "4"),
        ("https://h.example/fhir/Patient/123", "absolute", "Patient", "123", None),
        ("urn:uuid:9c1f6c9e-0000-4000-8000-000000000000", "urn", None, None, None),
        ("Patient?identifier=urn:mrn|1", "conditional", "Patient", None, None),
        ("#med1", "contained", None, "med1", None),
        ("not a reference", "other", None, None, None),
    ],
)
def test_parse_reference(
    ref: str, kind: str, rtype: str | None, rid: str | None, vid: str | None
) -> None:
    parsed = parse_reference(ref)
    assert (parsed.kind, parsed.resource_type, parsed.resource_id, parsed.version_id) == (
        kind,
        rtype,
        rid,
        vid,
    )


def test_indexes() -> None:
    obs = {
        **OBS,
        "subject": {"reference": "Patient/p1"},
        "identifier": [{"system": "s", "value": "v"}, {"value": "w"}],
    }
    assert reference_index("Observation", obs) == [
        ("patient", "Patient", "p1"),
        ("subject", "Patient", "p1"),
    ]
    group = {**OBS, "subject": {"reference": "Group/g"}}
    assert reference_index("Observation", group) == [("subject", "Group", "g")]
    assert identifier_index(obs) == [(None, "w"), ("s", "v")]


def test_parse_etag() -> None:
    assert parse_etag('W/"3"', "x") == 3
    assert parse_etag('"12"', "x") == 12
    assert parse_etag(None, "x") is None
    with pytest.raises(InvalidContentError):
        parse_etag("W/abc", "If-Match")


def test_parse_bundle_collects_every_bad_entry() -> None:
    parsed = parse_bundle(
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"resource": {**OBS}, "request": {"method": "POST", "url": "Observation"}},
                {
                    "resource": {**OBS, "status": "x"},
                    "request": {"method": "POST", "url": "Observation"},
                },
                {"request": {"method": "PATCH", "url": "Observation/1"}},
                {"request": {"method": "GET", "url": "Observation/1/_history/2"}},
            ],
        }
    )
    assert parsed.kind == "batch"
    assert parsed.models_owed == frozenset()
    assert [(e.index, e.method, e.version_id) for e in parsed.entries] == [
        (0, "POST", None),
        (3, "GET", "2"),
    ]
    assert [(i, exc.issues[0].code) for i, exc in parsed.failures] == [
        (1, "code-invalid"),
        (2, "not-supported"),
    ]


def _nested_extensions(levels: int) -> dict[str, Any]:
    ext: dict[str, Any] = {"url": "http://x", "valueString": "leaf"}
    for _ in range(levels - 1):
        ext = {"url": "http://x", "extension": [ext]}
    return {"resourceType": "Patient", "extension": [ext]}


def _from_depth(frames: int, call: Any) -> Any:
    return call() if frames == 0 else _from_depth(frames - 1, call)


@pytest.mark.parametrize("stack", [0, 400])
def test_nesting_is_capped_by_content_not_by_the_callers_stack(stack: int) -> None:
    deepest = _nested_extensions(MAX_DEPTH - 1)  # the resource is level 1
    assert _from_depth(stack, lambda: validate_resource(deepest)).resource_type == "Patient"
    with pytest.raises(InvalidContentError) as caught:
        _from_depth(stack, lambda: validate_resource(_nested_extensions(MAX_DEPTH)))
    [issue] = caught.value.issues  # one issue, however many branches are too deep
    assert issue.code == "structure"
    assert issue.diagnostics.endswith(f"is nested more than {MAX_DEPTH} levels deep")
    assert issue.expression[0].startswith(
        "Patient.extension[0]" + ".extension[0]" * (MAX_DEPTH - 3)
    )
