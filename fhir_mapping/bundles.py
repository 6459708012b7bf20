"""Turn a Bundle (or one resource, or an NDJSON line) into validated write/read entries."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

from fhir_mapping.issues import InvalidContentError, Issue
from fhir_mapping.json_codec import content_hash, loads
from fhir_mapping.references import is_valid_id, parse_reference
from fhir_mapping.resource_types import SUPPORTED_TYPES
from fhir_mapping.tokens import ascii_int
from fhir_mapping.validation import (
    CheckedResource,
    envelope_issues,
    model_issues,
    validate_resource,
)

Method = Literal["GET", "POST", "PUT", "DELETE", "UPSERT"]
BundleKind = Literal["transaction", "batch", "collection", "message"]
ACCEPTED_BUNDLE_TYPES: tuple[BundleKind, ...] = ("transaction", "batch", "collection", "message")

# Namespace for ids the server derives from content, so that a replayed create finds its twin.
_CONTENT_NS = uuid.UUID("5b1e2f1e-6a43-4f0c-9a3e-4e0b6b7a2c11")


@dataclass(slots=True)
class Entry:
    """One requested interaction, with its resource already validated."""

    index: int
    path: str
    method: Method
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    query: list[tuple[str, str]] | None = None
    full_url: str | None = None
    resource: dict[str, Any] | None = None
    references: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    if_none_exist: list[tuple[str, str]] | None = None
    if_match: int | None = None
    derived_id: str | None = None

    @property
    def urn_uuid(self) -> str | None:
        """The uuid of a `urn:uuid:` fullUrl, when it is also a valid FHIR id."""
        if self.full_url and self.full_url.startswith("urn:uuid:"):
            candidate = self.full_url[len("urn:uuid:") :].lower()
            if is_valid_id(candidate):
                return candidate
        return None


def derived_id(resource_type: str, resource: dict[str, Any]) -> str:
    """Server-assigned id for a create: a UUID of the content, so identical replays collide."""
    return str(uuid.uuid5(_CONTENT_NS, f"{resource_type}/{content_hash(resource)}"))


def parse_etag(value: str | None, where: str) -> int | None:
    """Version number from an ETag such as W/"3"; None when absent."""
    if value is None:
        return None
    text = value.strip()
    text = text.removeprefix("W/").strip('"')
    version = ascii_int(text)
    if version is None:
        raise InvalidContentError(
            [Issue("invalid", f'{where}: {value!r} is not a version ETag like W/"3"', (where,))]
        )
    return version


def parse_conditional(text: str, resource_type: str, where: str) -> list[tuple[str, str]]:
    """Search parameters of an If-None-Exist / conditional URL (with or without `Type?`)."""
    query = text.split("?", 1)[1] if "?" in text else text
    if "?" in text and text.split("?", 1)[0] not in ("", resource_type):
        raise InvalidContentError(
            [Issue("invalid", f"{where}: {text!r} searches another type", (where,))]
        )
    params = parse_qsl(query, keep_blank_values=True)
    if not params:
        raise InvalidContentError(
            [Issue("invalid", f"{where}: {text!r} has no search criteria", (where,))]
        )
    return params


@dataclass(frozen=True, slots=True)
class ParsedBundle:
    """A Bundle's type, its valid entries and its failed ones (with why), in entry order.

    `models_owed` holds the entries whose JSON walk passed but whose model check was left to the
    caller (`parse_bundle(check_models=False)`); `settle_models` applies the verdicts.
    """

    kind: BundleKind
    entries: list[Entry]
    failures: list[tuple[int, InvalidContentError]]
    models_owed: frozenset[int] = frozenset()


def _entry_path(index: int) -> str:
    """Where an entry is, as every issue about it says."""
    return f"Bundle.entry[{index}]"


def _checked(
    resource: Any, path: str, index: int, owed: set[int] | None
) -> tuple[dict[str, Any], CheckedResource]:
    """Validate; given `owed`, only walk, and note this entry's model check as owed."""
    checked = validate_resource(resource, path=path, model=owed is None)
    if owed is not None:
        owed.add(index)
    assert isinstance(resource, dict)
    return resource, checked


def _with_refs(entry: Entry, checked: CheckedResource) -> Entry:
    entry.references = [
        (p, ref, ref["reference"])
        for p, ref in checked.references
        if isinstance(ref.get("reference"), str)
    ]
    return entry


def resource_entry(
    resource: Any,
    *,
    method: Method,
    path: str,
    index: int = 0,
    resource_id: str | None = None,
    owed: set[int] | None = None,
) -> Entry:
    """An entry for a single-resource interaction or an NDJSON line (see `_checked` for owed)."""
    res, checked = _checked(resource, path, index, owed)
    rid = res.get("id")
    if rid is not None and not (isinstance(rid, str) and is_valid_id(rid)):
        raise InvalidContentError(
            [
                Issue(
                    "value",
                    f"{path or checked.resource_type}.id is not a valid FHIR id",
                    (f"{path}.id",),
                )
            ]
        )
    entry = Entry(index, path, method, checked.resource_type, resource_id or rid, resource=res)
    if method == "POST" or (method == "UPSERT" and rid is None):
        entry.derived_id = derived_id(checked.resource_type, res)
    return _with_refs(entry, checked)


def _request_target(
    url: str, where: str
) -> tuple[str, str | None, str | None, list[tuple[str, str]] | None]:
    """(type, id, version, conditional query) of a Bundle.entry.request.url."""
    path, _, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    bad = InvalidContentError(
        [Issue("invalid", f"{where}: {url!r} is not a relative FHIR URL", (where,))]
    )
    if not parts or url.startswith(("http://", "https://")):
        raise bad
    if any(p.startswith("$") for p in parts):
        raise InvalidContentError(
            [
                Issue(
                    "not-supported",
                    f"{where}: operations such as {url!r} are not supported inside a Bundle",
                    (where,),
                )
            ]
        )
    rtype = parts[0]
    if len(parts) == 1:
        return rtype, None, None, parse_qsl(query, keep_blank_values=True) if query else None
    if not is_valid_id(parts[1]):
        raise bad
    if len(parts) == 2 and not query:
        return rtype, parts[1], None, None
    if len(parts) == 4 and parts[2] == "_history" and is_valid_id(parts[3]) and not query:
        return rtype, parts[1], parts[3], None
    if len(parts) == 2 or (len(parts) == 4 and parts[2] == "_history" and is_valid_id(parts[3])):
        unsupported = "parameters on a read"
    elif len(parts) == 3:
        unsupported = "history" if parts[2] == "_history" else "compartment search"
    else:
        raise bad
    raise InvalidContentError(
        [
            Issue(
                "not-supported",
                f"{where}: {url!r} ({unsupported}) is not supported inside a Bundle",
                (where,),
            )
        ]
    )


# Bundle.entry.request elements besides method and url; each is a JSON string when present.
_REQUEST_STRINGS = ("ifNoneMatch", "ifModifiedSince", "ifMatch", "ifNoneExist")


def _bundle_entry(raw: Any, i: int, kind: BundleKind, owed: set[int] | None) -> Entry:
    path = _entry_path(i)
    if not isinstance(raw, dict):
        raise InvalidContentError([Issue("structure", f"{path} must be a JSON object", (path,))])
    full_url = raw.get("fullUrl")
    if full_url is not None and not isinstance(full_url, str):
        raise InvalidContentError(
            [Issue("value", f"{path}.fullUrl must be a string", (f"{path}.fullUrl",))]
        )
    resource = raw.get("resource")
    if kind in ("collection", "message"):
        if resource is None:
            raise InvalidContentError(
                [Issue("required", f"{path} has no resource", (f"{path}.resource",))]
            )
        entry = resource_entry(
            resource, method="UPSERT", path=f"{path}.resource", index=i, owed=owed
        )
        entry.full_url = full_url
        if entry.resource_id is None and entry.urn_uuid is None and full_url:
            parsed = parse_reference(full_url)
            if (
                parsed.kind in ("absolute", "literal")
                and parsed.resource_type == entry.resource_type
            ):
                entry.resource_id = parsed.resource_id
        return entry
    request = raw.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("method"), str):
        raise InvalidContentError(
            [
                Issue(
                    "required",
                    f"{path}.request.method is required in a {kind}",
                    (f"{path}.request",),
                )
            ]
        )
    for key in _REQUEST_STRINGS:
        if key in request and not isinstance(request[key], str):
            where = f"{path}.request.{key}"
            code, what = (
                ("structure", "not be null") if request[key] is None else ("value", "be a string")
            )
            raise InvalidContentError([Issue(code, f"{where} must {what}", (where,))])
    method = request["method"]
    url = request.get("url")
    if not isinstance(url, str):
        raise InvalidContentError(
            [Issue("required", f"{path}.request.url is required", (f"{path}.request.url",))]
        )
    if method not in ("GET", "POST", "PUT", "DELETE"):
        raise InvalidContentError(
            [
                Issue(
                    "not-supported",
                    f"{path}.request.method {method!r} is not supported (GET, POST, PUT, DELETE)",
                    (f"{path}.request.method",),
                )
            ]
        )
    where = f"{path}.request.url"
    rtype, rid, vid, query = _request_target(url, where)
    if rtype not in SUPPORTED_TYPES:
        raise InvalidContentError(
            [
                Issue(
                    "not-supported",
                    f"{where}: resource type {rtype!r} is not accepted by this server",
                    (where,),
                )
            ]
        )
    if_match = parse_etag(request.get("ifMatch"), f"{path}.request.ifMatch")
    if method in ("POST", "PUT"):
        if resource is None:
            raise InvalidContentError(
                [Issue("required", f"{path} has no resource for {method}", (f"{path}.resource",))]
            )
        entry = resource_entry(resource, method=method, path=f"{path}.resource", index=i, owed=owed)
        if entry.resource_type != rtype:
            raise InvalidContentError(
                [
                    Issue(
                        "invalid",
                        f"{path}: request.url names {rtype} but the resource is a {entry.resource_type}",
                        (where,),
                    )
                ]
            )
        if method == "POST":
            if rid is not None or query:
                raise InvalidContentError(
                    [Issue("invalid", f"{where}: POST goes to the type, e.g. {rtype!r}", (where,))]
                )
            entry.resource_id = None
            ine = request.get("ifNoneExist")
            if ine is not None:
                entry.if_none_exist = parse_conditional(ine, rtype, f"{path}.request.ifNoneExist")
        else:
            if rid is None and not query:
                raise InvalidContentError(
                    [Issue("invalid", f"{where}: PUT needs Type/id or Type?criteria", (where,))]
                )
            body_id = resource.get("id")
            if rid is not None and body_id != rid:
                raise InvalidContentError(
                    [
                        Issue(
                            "invalid",
                            f"{path}.resource.id {body_id!r} must equal the id in request.url ({rid!r})",
                            (f"{path}.resource.id",),
                        )
                    ]
                )
            entry.resource_id, entry.query = rid if rid is not None else body_id, query
        entry.full_url, entry.if_match = full_url, if_match
        return entry
    if resource is not None:
        raise InvalidContentError(
            [
                Issue(
                    "invalid",
                    f"{path}: a {method} entry carries no resource",
                    (f"{path}.resource",),
                )
            ]
        )
    if method == "DELETE" and (vid is not None or (rid is None and not query)):
        raise InvalidContentError(
            [Issue("invalid", f"{where}: DELETE needs Type/id or Type?criteria", (where,))]
        )
    return Entry(i, path, method, rtype, rid, vid, query, full_url, if_match=if_match)


def bundle_envelope(obj: Any) -> tuple[BundleKind, list[Any], int]:
    """The Bundle's type, its raw entries and the first one that is content (a message's header
    is not); raises for what is wrong with the Bundle as a whole, before any entry is looked at."""
    if not isinstance(obj, dict) or obj.get("resourceType") != "Bundle":
        raise InvalidContentError([Issue("invalid", "POST /fhir takes a Bundle", ("Bundle",))])
    kind = obj.get("type")
    if kind is None:
        raise InvalidContentError([Issue("required", "Bundle.type is required", ("Bundle.type",))])
    if not isinstance(kind, str):
        raise InvalidContentError(
            [Issue("value", "Bundle.type must be a JSON string", ("Bundle.type",))]
        )
    if kind not in ACCEPTED_BUNDLE_TYPES:
        raise InvalidContentError(
            [
                Issue(
                    "not-supported",
                    f"Bundle.type {kind!r} is not accepted; send one of {', '.join(ACCEPTED_BUNDLE_TYPES)}",
                    ("Bundle.type",),
                )
            ]
        )
    issues = envelope_issues(obj)  # everything but the entries, against the R4 Bundle
    if issues:
        raise InvalidContentError(issues)
    raw_entries = obj.get("entry", [])
    if not isinstance(raw_entries, list):
        raise InvalidContentError(
            [Issue("structure", "Bundle.entry must be a JSON array", ("Bundle.entry",))]
        )
    start = 0
    if kind == "message":
        first = raw_entries[0] if raw_entries else None
        header = first.get("resource") if isinstance(first, dict) else None
        if not isinstance(header, dict) or header.get("resourceType") != "MessageHeader":
            raise InvalidContentError(
                [
                    Issue(
                        "invalid",
                        "a message Bundle starts with a MessageHeader entry",
                        ("Bundle.entry[0]",),
                    )
                ]
            )
        start = 1  # the envelope: validated by its presence, not stored
    return kind, raw_entries, start


def parse_bundle(
    obj: Any,
    *,
    check_models: bool = True,
    envelope: tuple[BundleKind, list[Any], int] | None = None,
) -> ParsedBundle:
    """Bundle type, its valid entries, and the entries that failed (with why) — in entry order.

    `check_models=False` leaves every entry's fhir.resources model check to the caller, who must
    settle it (`model_verdicts`, `settle_models`) before keeping anything. `envelope` is
    `bundle_envelope(obj)` when the caller has it already (its model check is not cheap).
    """
    kind, raw_entries, start = envelope if envelope is not None else bundle_envelope(obj)
    entries: list[Entry] = []
    failures: list[tuple[int, InvalidContentError]] = []
    owed: set[int] | None = None if check_models else set()
    for i in range(start, len(raw_entries)):
        try:
            entries.append(_bundle_entry(raw_entries[i], i, kind, owed))
        except InvalidContentError as exc:
            failures.append((i, exc))
    return ParsedBundle(kind, entries, failures, frozenset(owed or ()))


Verdicts = dict[int, list[Issue]]
# The Verdicts key for the request body itself: present when `loads` refused it (see model_verdicts).
BODY = -1


_BATCH_TYPE = re.compile(rb'"type"\s*:\s*"batch"')


def estimated_atomic_entries(raw: bytes) -> int:
    """How many entries a Bundle's bytes seem to hold (0: it may be a batch), read before parsing.

    A guess so a model-check worker can start on the bytes while the request thread parses them
    too; a wrong guess only moves the checks between the worker and the request thread.
    """
    if _BATCH_TYPE.search(raw):
        return 0
    return raw.count(b'"resource"')


def model_verdicts(raw: bytes, claim: Callable[[int], bool] | None = None) -> Verdicts:
    """The model issues of every entry resource in a Bundle's JSON, by entry index (none: valid).

    Parses the bytes itself, exactly as the request was parsed, so it can run in another process
    while the request is written. It checks every resource of an accepted type, including ones
    the JSON walk will refuse: only the entries the walk passed (`models_owed`) are consulted.
    `claim(i)` is asked before entry i, in order; False stops the checks there (someone else
    checks the rest). Bytes that `loads` refuses get `{BODY: its issues}` and nothing else: the
    request thread may have parsed them without that check (`loads_unguarded`).
    """
    try:
        obj = loads(raw)
    except InvalidContentError as exc:
        return {BODY: exc.issues}
    return entry_verdicts(obj, claim)


def entry_verdicts(obj: Any, claim: Callable[[int], bool] | None = None) -> Verdicts:
    """`model_verdicts` of a Bundle already parsed by `loads`."""
    raw_entries = obj.get("entry") if isinstance(obj, dict) else None
    out: Verdicts = {}
    for i, raw_entry in enumerate(raw_entries if isinstance(raw_entries, list) else []):
        if claim is not None and not claim(i):
            break
        resource = raw_entry.get("resource") if isinstance(raw_entry, dict) else None
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if isinstance(resource, dict) and isinstance(rtype, str) and rtype in SUPPORTED_TYPES:
            issues = model_issues(resource, rtype, path=f"{_entry_path(i)}.resource")
            if issues:
                out[i] = issues
    return out


def owed_checker(body: Any, parsed: ParsedBundle) -> Callable[[Iterable[int] | None], Verdicts]:
    """Checks owed models here: all of them (None), or only some entries, any number of times.

    For when the worker cannot answer, or is behind: the written entries' references have been
    rewritten in place since, so each is put back as sent while its resource is checked.
    """
    written = {e.index: e for e in parsed.entries}

    def check(only: Iterable[int] | None) -> Verdicts:
        out: Verdicts = {}
        wanted = parsed.models_owed if only is None else parsed.models_owed.intersection(only)
        for i in sorted(wanted):
            resource = body["entry"][i]["resource"]
            refs = written[i].references if i in written else []
            now = [ref["reference"] for _, ref, _ in refs]
            for _, ref, original in refs:
                ref["reference"] = original
            try:
                issues = model_issues(
                    resource, resource["resourceType"], path=f"{_entry_path(i)}.resource"
                )
            finally:
                for (_, ref, _), value in zip(refs, now, strict=True):
                    ref["reference"] = value
            if issues:
                out[i] = issues
        return out

    return check


def settle_models(parsed: ParsedBundle, verdicts: Mapping[int, list[Issue]]) -> ParsedBundle:
    """The Bundle as `parse_bundle` with models checked in place would have returned it.

    An entry whose model fails reports the model's issues, even where a later check (request URL,
    id) had failed it too: in place, the model check comes first and stops the entry there.
    """
    failed = {i: issues for i, issues in verdicts.items() if i in parsed.models_owed and issues}
    failures = [
        (i, InvalidContentError(failed[i]) if i in failed else e) for i, e in parsed.failures
    ]
    failures += [
        (e.index, InvalidContentError(failed[e.index])) for e in parsed.entries if e.index in failed
    ]
    failures.sort(key=lambda f: f[0])
    entries = [e for e in parsed.entries if e.index not in failed]
    return ParsedBundle(parsed.kind, entries, failures)
