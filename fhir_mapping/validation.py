"""Validate one FHIR R4 resource strictly: JSON types, required codes, modifiers, then the model.

fhir.resources coerces `"5"` to a number and `"true"` to a boolean even in strict mode, does not
enforce required code bindings, and accepts any modifierExtension. FHIR JSON allows none of that,
so a walk over the JSON driven by the models' own field metadata runs first, collecting every
Reference on the way (the ingest needs them to rewrite and index).
"""

from __future__ import annotations

import datetime as dt
import decimal
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhir_mapping.issues import InvalidContentError, Issue
from fhir_mapping.required_codes import REQUIRED_CODES
from fhir_mapping.resource_types import SUPPORTED_TYPES

# Elements renamed or added after R4; naming them turns "unknown element" into a useful hint.
_LATER_VERSION_HINT = " (not an R4 element: is this an R5 or R4B payload?)"
_EARLIER_VERSION_HINT = " (not an R4 element: is this a DSTU2 or STU3 payload?)"
_VERSION_HINTS: dict[str, str] = {
    "occurenceDateTime": _LATER_VERSION_HINT,
    "occurencePeriod": _LATER_VERSION_HINT,
    "occurrenceDateTime": _LATER_VERSION_HINT,
    "occurrencePeriod": _LATER_VERSION_HINT,
    "medication": _LATER_VERSION_HINT,
    "statusReason": _LATER_VERSION_HINT,
    "reasonCodeableConcept": _EARLIER_VERSION_HINT,
    "reasonReference": _LATER_VERSION_HINT,
    "context": _EARLIER_VERSION_HINT,
    "taken": _EARLIER_VERSION_HINT,
    "animal": _EARLIER_VERSION_HINT,
    "assertedDate": _EARLIER_VERSION_HINT,
    "abatementBoolean": _EARLIER_VERSION_HINT,
}

_STRING, _BOOLEAN, _INTEGER, _DECIMAL, _COMPLEX, _RESOURCE, _PRIMITIVE_EXT = range(7)
_JSON_TYPE_NAMES = {
    _STRING: "a JSON string",
    _BOOLEAN: "a JSON boolean",
    _INTEGER: "a JSON integer",
    _DECIMAL: "a JSON number",
}


@dataclass(frozen=True, slots=True)
class _Field:
    kind: int
    many: bool
    model: type[Any] | None = None
    codes: frozenset[str] | None = None


@dataclass(slots=True)
class CheckedResource:
    """What validation learned on the way: every Reference element, by FHIRPath, as a live dict."""

    resource_type: str
    references: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _kind_of(tp: Any) -> tuple[int, type[Any] | None]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _kind_of(typing.get_args(tp)[0])
    if tp is bool:
        return _BOOLEAN, None
    if tp is int:
        return _INTEGER, None
    if tp is decimal.Decimal:
        return _DECIMAL, None
    if tp in (str, dt.date, dt.datetime, dt.time, bytes):
        return _STRING, None
    name = getattr(tp, "__name__", "")
    if name == "ResourceType":
        return _RESOURCE, None
    if name == "FHIRPrimitiveExtensionType":
        return _PRIMITIVE_EXT, tp.get_model_klass()
    if hasattr(tp, "get_model_klass"):
        return _COMPLEX, tp.get_model_klass()
    return _STRING, None  # AnyUrl-like leaf types are strings on the wire


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    many = False
    tp = annotation
    while True:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
            # fhir_comments-style unions are not FHIR elements; treat as string
            return str, many
        if origin in (list, typing.List):  # noqa: UP006
            many = True
            tp = typing.get_args(tp)[0]
            continue
        return tp, many


@cache
def _schema(model: type[Any]) -> dict[str, _Field]:
    """JSON key -> field description for one fhir.resources model class."""
    out: dict[str, _Field] = {}
    for name, info in model.model_fields.items():
        if name == "fhir_comments":
            continue
        key = info.alias or name
        tp, many = _unwrap(info.annotation)
        kind, sub = _kind_of(tp)
        codes = REQUIRED_CODES.get((model.__name__, key))
        out[key] = _Field(kind, many, sub, codes)
    return out


def preload_models() -> None:
    """Import the accepted types' models and build their walk schemas before the first request."""
    seen: set[type[Any]] = set()
    pending = [get_fhir_model_class(t) for t in sorted(SUPPORTED_TYPES)]
    while pending:
        model = pending.pop()
        if model not in seen:
            seen.add(model)
            pending.extend(f.model for f in _schema(model).values() if f.model is not None)


def _wrong_type(path: str, value: Any, kind: int) -> Issue:
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return Issue("value", f"{path} must be {_JSON_TYPE_NAMES[kind]}, got {shown}", (path,))


def _check_leaf(value: Any, spec: _Field, path: str, issues: list[Issue]) -> None:
    kind = spec.kind
    if kind == _STRING:
        if not isinstance(value, str):
            issues.append(_wrong_type(path, value, kind))
        elif spec.codes is not None and value not in spec.codes:
            allowed = ", ".join(sorted(spec.codes))
            issues.append(
                Issue(
                    "code-invalid", f"{path}: unknown code {value!r}; R4 allows {allowed}", (path,)
                )
            )
    elif kind == _BOOLEAN:
        if not isinstance(value, bool):
            issues.append(_wrong_type(path, value, kind))
    elif kind == _INTEGER:
        if isinstance(value, bool) or not isinstance(value, int):
            issues.append(_wrong_type(path, value, kind))
    elif kind == _DECIMAL and (
        isinstance(value, bool) or not isinstance(value, int | decimal.Decimal)
    ):
        issues.append(_wrong_type(path, value, kind))


def _leaf_ok(value: Any, spec: _Field) -> bool:
    """The common case of `_check_leaf` without building a path: a value of the right JSON type."""
    kind, cls = spec.kind, type(value)
    if kind == _STRING:
        return cls is str and (spec.codes is None or value in spec.codes)
    if kind == _BOOLEAN:
        return cls is bool
    if kind == _INTEGER:
        return cls is int
    return cls is int or isinstance(value, decimal.Decimal)


def _child(path: str, key: str) -> str:
    return f"{path}.{key.removeprefix('_')}"


# Deepest element nesting accepted (a resource is level 1). Real resources stay far below it; the
# fhir.resources models spend ~7 stack frames a level, so refusing here keeps every resource that
# reaches the model well clear of the recursion limit, wherever the check runs (request thread or
# worker process): the answer depends on the content, never on the caller's stack.
MAX_DEPTH = 64


class _Walker:
    __slots__ = ("depth", "issues", "references", "too_deep")

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.references: list[tuple[str, dict[str, Any]]] = []
        self.depth = 0
        self.too_deep = False

    def resource(self, obj: Any, path: str, *, stored: bool = True) -> str | None:
        """Check a resource; `stored=False` for one inside another (contained), any R4 type."""
        if not isinstance(obj, dict):
            self.issues.append(Issue("structure", f"{path} must be a JSON object", (path,)))
            return None
        rtype = obj.get("resourceType")
        if not isinstance(rtype, str):
            where = path or "resource"
            self.issues.append(Issue("required", f"{where} has no resourceType", (where,)))
            return None
        if stored and rtype not in SUPPORTED_TYPES:
            path = path or rtype
            self.issues.append(
                Issue(
                    "not-supported",
                    f"{path}: resource type {rtype!r} is not accepted by this server "
                    "(see the CapabilityStatement at /fhir/metadata)",
                    (path,),
                )
            )
            return None
        try:
            model = get_fhir_model_class(rtype)
        except ValueError:
            self.issues.append(
                Issue("structure", f"{path}: {rtype!r} is not a FHIR R4 resource type", (path,))
            )
            return None
        self.element(obj, model, rtype if path == "" else path, is_resource=True)
        return rtype

    def element(self, obj: Any, model: type[Any], path: str, *, is_resource: bool = False) -> None:
        if not isinstance(obj, dict):
            self.issues.append(Issue("structure", f"{path} must be a JSON object", (path,)))
            return
        if self.depth >= MAX_DEPTH:
            if not self.too_deep:
                self.too_deep = True
                self.issues.append(
                    Issue(
                        "structure", f"{path} is nested more than {MAX_DEPTH} levels deep", (path,)
                    )
                )
            return
        self.depth += 1
        self._members(obj, model, path, is_resource)
        self.depth -= 1  # (an exception abandons the whole walk, so no finally is needed)

    def _members(self, obj: dict[str, Any], model: type[Any], path: str, is_resource: bool) -> None:
        schema = _schema(model)  # type: ignore[arg-type]  # model classes are hashable
        if model.__name__ == "Reference":
            self.references.append((path, obj))
        for key, value in obj.items():
            if is_resource and key == "resourceType":
                continue
            spec = schema.get(key)
            if spec is None:
                hint = _VERSION_HINTS.get(key, "")
                self.issues.append(
                    Issue("structure", f"{path}: unknown element {key!r}{hint}", (f"{path}.{key}",))
                )
                continue
            if key == "modifierExtension" and value:
                self.issues.append(self._modifier_issue(value, f"{path}.{key}"))
                continue
            # Leaves are most of a resource: their path is only spelled out for an issue.
            leaf = spec.kind <= _DECIMAL
            if spec.many:
                if not isinstance(value, list):
                    child = _child(path, key)
                    self.issues.append(
                        Issue("structure", f"{child} must be a JSON array", (child,))
                    )
                    continue
                if not value:
                    child = _child(path, key)
                    self.issues.append(
                        Issue("structure", f"{child} must not be an empty array", (child,))
                    )
                for i, item in enumerate(value):
                    if item is None and spec.kind not in (_COMPLEX, _RESOURCE):
                        continue  # a primitive array slot whose value lives in the `_x` twin
                    if not (leaf and _leaf_ok(item, spec)):
                        self.value(item, spec, f"{_child(path, key)}[{i}]")
            elif not (leaf and _leaf_ok(value, spec)):
                self.value(value, spec, _child(path, key))

    def value(self, value: Any, spec: _Field, path: str) -> None:
        if value is None:
            if spec.kind != _PRIMITIVE_EXT:
                self.issues.append(Issue("structure", f"{path} must not be null", (path,)))
            return
        if spec.kind == _COMPLEX or spec.kind == _PRIMITIVE_EXT:
            assert spec.model is not None
            self.element(value, spec.model, path)
        elif spec.kind == _RESOURCE:
            self.resource(value, path, stored=False)
        else:
            _check_leaf(value, spec, path, self.issues)

    @staticmethod
    def _modifier_issue(value: Any, path: str) -> Issue:
        urls = (
            [e.get("url") for e in value if isinstance(e, dict)] if isinstance(value, list) else []
        )
        shown = ", ".join(repr(u) for u in urls) or "?"
        return Issue(
            "extension",
            f"{path}: modifier extension {shown} is not understood by this server; "
            "it could change the meaning of the resource, so the resource is refused",
            (path,),
        )


def _loc_to_path(root: str, loc: tuple[int | str, ...]) -> str:
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part)
            if name.endswith("__ext"):
                name = name[: -len("__ext")]
            out += f".{name.removeprefix('_')}"
    return out


def _pydantic_issues(exc: ValidationError, root: str) -> list[Issue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p != "__root__")
        path = _loc_to_path(root, loc)
        err_type = err.get("type", "")
        code = "required" if "missing" in err_type or "required" in err_type else "value"
        shown = err.get("input")
        got = f" (got {shown!r})" if isinstance(shown, str | int | decimal.Decimal) else ""
        issues.append(Issue(code, f"{path}: {err['msg']}{got}", (path,)))
    return issues


def model_issues(obj: dict[str, Any], resource_type: str, *, path: str = "") -> list[Issue]:
    """What the fhir.resources model finds wrong with a resource whose JSON walk passed."""
    root = path or resource_type
    try:
        get_fhir_model_class(resource_type).model_validate(obj)
    except RecursionError:
        return [Issue("structure", f"{root} is nested too deeply", (root,))]
    except ValidationError as exc:
        return _pydantic_issues(exc, root)
    except (ValueError, TypeError) as exc:  # fhir.resources raises plain errors for some checks
        return [Issue("value", f"{root}: {exc}", (root,))]
    return []


def envelope_issues(bundle: dict[str, Any]) -> list[Issue]:
    """A Bundle without its entries, walked and modelled (entries are checked one by one)."""
    walker = _Walker()
    envelope = {k: v for k, v in bundle.items() if k != "entry"}
    walker.element(envelope, get_fhir_model_class("Bundle"), "Bundle", is_resource=True)
    return walker.issues or model_issues(envelope, "Bundle")


def _dangling_contained(
    resource: dict[str, Any], references: list[tuple[str, dict[str, Any]]]
) -> list[Issue]:
    """FHIR invariant ref-1: a `#id` reference names a resource in the root's `contained`."""
    contained = resource.get("contained")
    ids = {c.get("id") for c in contained if isinstance(c, dict)} if contained else set()
    issues = []
    for path, ref in references:
        target = ref.get("reference")
        if isinstance(target, str) and target[:1] == "#" and target[1:] and target[1:] not in ids:
            where = f"{path}.reference"
            issues.append(
                Issue(
                    "invariant",
                    f"{where}: {target!r} names no contained resource (ref-1)",
                    (where,),
                )
            )
    return issues


def _nested_contained(resource: dict[str, Any], root: str) -> list[Issue]:
    """FHIR invariant dom-2: a contained resource SHALL NOT contain additional resources."""
    contained = resource.get("contained")
    issues = []
    for i, inner in enumerate(contained if isinstance(contained, list) else ()):
        if isinstance(inner, dict) and "contained" in inner:
            where = f"{root}.contained[{i}].contained"
            issues.append(
                Issue(
                    "invariant",
                    f"{where}: a contained resource may not contain resources (dom-2)",
                    (where,),
                )
            )
    return issues


def validate_resource(obj: Any, *, path: str = "", model: bool = True) -> CheckedResource:
    """Validate one resource as FHIR R4 JSON; raise InvalidContentError naming every bad element.

    `model=False` stops after the JSON walk, for a caller that has the model check done elsewhere
    (see `model_issues`) and will not keep the resource if that check fails.
    """
    walker = _Walker()
    try:
        rtype = walker.resource(obj, path)
    except RecursionError as exc:
        where = path or "resource"
        raise InvalidContentError(
            [Issue("structure", f"{where} is nested too deeply", (where,))]
        ) from exc
    if walker.issues or rtype is None:
        raise InvalidContentError(walker.issues)
    broken = _nested_contained(obj, path or rtype) + _dangling_contained(obj, walker.references)
    if broken:
        raise InvalidContentError(broken)
    if model:
        issues = model_issues(obj, rtype, path=path)
        if issues:
            raise InvalidContentError(issues)
    return CheckedResource(rtype, walker.references)
