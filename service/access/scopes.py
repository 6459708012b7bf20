"""SMART v2 system scopes for /fhir, study scopes for /api/v1, and what each allows (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

Interaction = Literal["c", "r", "u", "d", "s"]
StudyAction = Literal["read", "deviations.write"]

# system/<Type or *>.<cruds in this order>; v1 `.read`, `.write` and `.*` are their v2 equivalents
_SYSTEM = re.compile(r"system/(\*|[A-Z][A-Za-z]{0,63})\.(c?r?u?d?s?|read|write|\*)")
_STUDY = re.compile(r"study/(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,63})\.(read|deviations\.write)")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
PLAIN = frozenset({"admin", "audit"})


def is_scope(text: str) -> bool:
    """Whether this service understands the scope (a client may only be granted those)."""
    system = _SYSTEM.fullmatch(text)
    return (
        text in PLAIN
        or _STUDY.fullmatch(text) is not None
        or (system is not None and system.group(2) != "")
    )


@dataclass(frozen=True)
class Scopes:
    """The scopes a token carries, and the questions the API asks of them."""

    granted: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scopes:
        """Space-separated scopes, as in the OAuth `scope` parameter and claim."""
        return cls(frozenset(text.split()))

    @classmethod
    def of(cls, scopes: Iterable[str]) -> Scopes:
        """Scopes from a list."""
        return cls(frozenset(scopes))

    def __str__(self) -> str:
        return " ".join(sorted(self.granted))

    @cached_property
    def _system(self) -> dict[str, str]:
        """The interactions granted per resource type (`*` for every type), parsed once."""
        letters: dict[str, str] = {}
        for scope in self.granted:
            found = _SYSTEM.fullmatch(scope)
            if found is not None:
                kind = found.group(1)
                letters[kind] = letters.get(kind, "") + _V1.get(found.group(2), found.group(2))
        return letters

    def fhir(self, resource_type: str, interaction: Interaction | str) -> bool:
        """May the token perform this interaction (c, r, u, d or s) on this resource type?"""
        if len(interaction) != 1 or interaction not in "cruds":
            return False  # one interaction at a time; anything else is no interaction
        return interaction in self._system.get(resource_type, "") or self._all_types(interaction)

    def study(self, study_id: str, action: StudyAction) -> bool:
        """May the token do `action` in this study (`study/<id>.<action>` or `study/*.<action>`)?"""
        return f"study/{study_id}.{action}" in self.granted or f"study/*.{action}" in self.granted

    def covers(self, scope: str) -> bool:
        """Whether a token of these scopes could do everything `scope` allows (narrowing is fine)."""
        if scope in self.granted:
            return True
        system = _SYSTEM.fullmatch(scope)
        if system is not None:
            kind, letters = system.group(1), _V1.get(system.group(2), system.group(2))
            return bool(letters) and all(
                self.fhir(kind, letter) if kind != "*" else self._all_types(letter)
                for letter in letters
            )
        study = _STUDY.fullmatch(scope)
        if study is not None and study.group(1) != "*":
            return self.study(study.group(1), study.group(2))  # type: ignore[arg-type]
        return False

    def _all_types(self, interaction: str) -> bool:
        """A `system/*` grant for this interaction (a narrower type grant is not enough)."""
        return interaction in self._system.get("*", "")

    @property
    def admin(self) -> bool:
        """Webhook subscriptions and clients."""
        return "admin" in self.granted

    @property
    def audit(self) -> bool:
        """The audit trail."""
        return "audit" in self.granted
