"""Lossless FHIR JSON: keep decimals' lexical form, refuse what RFC 8259 and FHIR refuse."""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal
from typing import Any

import msgspec
import orjson

from fhir_mapping.issues import InvalidContentError, Issue


class LexicalDecimal(Decimal):
    """A JSON number that remembers how it was written (`0.10` is not `0.1` in FHIR)."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> LexicalDecimal:
        value = super().__new__(cls, text)
        if value and not _DECIMAL_MIN <= abs(value) <= _DECIMAL_MAX:
            raise ValueError(f"{text} is outside the range of a FHIR decimal")
        value.text = text
        return value


# What a FHIR decimal can hold: the range of an IEEE 754 double, which FHIR's own JSON relies on
# (FHIR R4 datatypes: decimal "as a JSON number"); 1e400 or 1e-400 would be infinity or zero.
_DECIMAL_MAX = Decimal("1.7976931348623157e308")
_DECIMAL_MIN = Decimal("2.2250738585072014e-308")


def _bounded_int(text: str) -> int:
    """An integer: a FHIR integer is 32-bit, integer64 64-bit; a decimal written without a point
    is still bounded like one."""
    if len(text.lstrip("-")) > 309:
        raise ValueError(f"{text[:20]}… ({len(text)} digits) is outside the range of a FHIR number")
    return int(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dupes = sorted({k for k, _ in pairs if k in seen or seen.add(k)})  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key(s) {', '.join(map(repr, dupes))} in one JSON object")
    return obj


_DECODER = json.JSONDecoder(
    parse_float=LexicalDecimal,
    parse_int=_bounded_int,
    parse_constant=_reject_constant,
    object_pairs_hook=_unique_keys,
    strict=True,
)


# FHIR strings SHALL NOT contain characters below U+0020 other than tab, CR and LF. Raw ones are
# already refused by the strict decoder; this finds escaped ones (an even run of backslashes first).
_CONTROL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u00(?:0[0-8bBcCeEfF]|1[0-9a-fA-F])")


def _syntax_issue(message: str) -> InvalidContentError:
    return InvalidContentError([Issue("structure", message)])


def decode_text(data: bytes) -> str:
    """Decode a UTF-8 body, refusing invalid bytes; a leading byte-order mark is dropped (RFC 8259
    §8.1 lets a parser ignore it; SMART Health Cards and the HL7 validator's files carry one)."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _syntax_issue(f"body is not valid UTF-8 (byte {exc.start})") from exc


def loads_text(text: str, *, where: str = "") -> Any:
    """Parse one JSON document from text; decimals stay lexical."""
    try:
        obj, end = _DECODER.raw_decode(text, _skip_ws(text, 0))
    except json.JSONDecodeError as exc:
        raise _syntax_issue(
            f"{where}malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except ValueError as exc:  # duplicate keys, NaN/Infinity, overflow
        raise _syntax_issue(f"{where}{exc}") from exc
    except RecursionError as exc:
        raise _syntax_issue(f"{where}JSON is nested too deeply") from exc
    if _skip_ws(text, end) != len(text):
        raise _syntax_issue(f"{where}malformed JSON: extra data after the document")
    control = ("\\u000" in text or "\\u001" in text) and _CONTROL_ESCAPE.search(text)
    if control:
        escape = control.group(0).lstrip("\\")
        raise InvalidContentError(
            [
                Issue(
                    "value",
                    f"{where}strings may not contain control character \\{escape} (FHIR string rules)",
                )
            ]
        )
    return obj


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def loads(data: bytes) -> Any:
    """Parse a whole request body as one JSON document."""
    return loads_text(decode_text(data))


_UNGUARDED = msgspec.json.Decoder(float_hook=LexicalDecimal)


def loads_unguarded(data: bytes) -> Any | None:
    """`loads` at under half the cost, except that a duplicate key is not refused (the last wins).

    Only for a caller that has the same bytes parsed by `loads` elsewhere before it keeps anything
    (a model-check worker does). Decimals stay lexical just the same. None for anything but plain
    JSON: a BOM, bad UTF-8, NaN, an escaped control character, a huge integer, deep nesting,
    malformed text; `loads` then gives its own answer.
    """
    if b"\\u000" in data or b"\\u001" in data:  # maybe an escaped control character
        return None
    try:
        return _UNGUARDED.decode(data)
    except (msgspec.MsgspecError, RecursionError, ValueError):
        return None


def share_strings(tree: Any) -> None:
    """Make equal string values of a parsed JSON tree one object, in place.

    A parser makes a new object for every string, and FHIR repeats the same ones thousands of
    times (code systems, codes, displays, statuses, profiles): in a Synthea transaction nine
    string values in ten repeat one already seen, three quarters of the strings' memory. Worth
    its walk (~0.5 s for 50 MB) only for a large body kept whole while it is written.
    """
    seen: dict[str, str] = {}
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():  # replacing a value is not resizing the dict
                if type(value) is str:
                    node[key] = seen.setdefault(value, value)
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                if type(value) is str:
                    node[index] = seen.setdefault(value, value)
                elif isinstance(value, (dict, list)):
                    stack.append(value)


def _default(obj: Any) -> Any:
    if isinstance(obj, LexicalDecimal):
        return orjson.Fragment(obj.text)
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj))
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps(obj: Any, *, sort_keys: bool = False) -> bytes:
    """Serialise compactly, writing each decimal exactly as it was received."""
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    try:
        return orjson.dumps(obj, default=_default, option=option)
    except orjson.JSONEncodeError as exc:  # e.g. an unpaired surrogate escape in a string
        raise InvalidContentError(
            [Issue("value", f"content cannot be stored as UTF-8 JSON: {exc}")]
        ) from exc


def content_hash(resource: dict[str, Any]) -> str:
    """SHA-256 of the content that matters: key order, id and server meta do not count."""
    meta = resource.get("meta")
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
        meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        resource = (
            {**resource, "meta": meta}
            if meta
            else {k: v for k, v in resource.items() if k != "meta"}
        )
    body = {k: v for k, v in resource.items() if k != "id"}
    return hashlib.sha256(dumps(body, sort_keys=True)).hexdigest()
