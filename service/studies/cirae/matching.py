"""1:k matching of dupilumab cases to controls: exact keys, calipers, greedy nearest neighbour (pure).

Method (the protocol's **choice** "greedy_nearest_neighbour_without_replacement"):

* A control is eligible for a case when every exact key is equal (an unknown sex or race is its own
  category: None matches None) and every caliper holds: |Δ age| ≤ age_years, |Δ Charlson| ≤
  charlson, |Δ ICB year| ≤ icb_year. An unknown age on either side fails the age caliper.
* Distance = |Δ age| / age caliper + |Δ Charlson| / Charlson caliper + |Δ year| / year caliper, each
  term a share of its caliper so the three are comparable; a zero caliper admits only Δ = 0, whose
  term is 0. Ties go to the smaller control subject id.
* Cases are taken in subject-id order; each takes its `ratio` nearest eligible controls still unused
  (without replacement). Input order therefore never changes the result.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction

from service.studies.cirae.protocol import Calipers, Matching
from service.studies.cirae.records import CirAESubject, Group, MatchedSet, MatchResult

ExactKey = tuple[str | None, ...]
_FLOAT_MARGIN = 1e-6


def _exact_key(subject: CirAESubject, keys: Sequence[str]) -> ExactKey:
    """The values the pair must share exactly (sex, race, ICB type as configured)."""
    values: dict[str, str | None] = {
        "sex": subject.sex,
        "race": subject.race,
        "icb_type": subject.icb_type,
    }
    return tuple(values[k] for k in keys)


@functools.lru_cache(maxsize=65536)
def _exact(value: float | Decimal) -> Fraction:
    """A float or Decimal as the exact rational it is (cached: each age is compared many times)."""
    return Fraction(value)


def _share(delta: Fraction, caliper: Fraction) -> Fraction | None:
    """|Δ| as a share of the caliper; None when outside it (a zero caliper needs Δ = 0)."""
    if abs(delta) > caliper:
        return None
    return abs(delta) / caliper if caliper else Fraction(0)


def distance(calipers: Calipers, case: CirAESubject, control: CirAESubject) -> Fraction | None:
    """The pair's caliper-scaled distance, or None when a caliper fails (exact arithmetic, no ties lost)."""
    if case.age_years is None or control.age_years is None:
        return None
    delta_charlson = case.charlson - control.charlson
    delta_year = case.icb_year - control.icb_year
    if abs(delta_charlson) > calipers.charlson or abs(delta_year) > calipers.icb_year:
        return None
    # Cheap float pre-filter (a margin far above rounding error); the exact test follows.
    if abs(case.age_years - control.age_years) > float(calipers.age_years) + _FLOAT_MARGIN:
        return None
    age = _share(_exact(case.age_years) - _exact(control.age_years), _exact(calipers.age_years))
    charlson = _share(Fraction(delta_charlson), Fraction(calipers.charlson))
    year = _share(Fraction(delta_year), Fraction(calipers.icb_year))
    if age is None or charlson is None or year is None:
        return None
    return age + charlson + year


def _unique_ids(subjects: Sequence[CirAESubject], what: str) -> None:
    """Subject ids identify the sets: a duplicate would make the result ambiguous."""
    dupes = sorted(i for i, n in Counter(s.subject_id for s in subjects).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate {what} subject ids: {dupes}")


def _pick(
    settings: Matching, case: CirAESubject, pool: Sequence[CirAESubject], used: set[str]
) -> tuple[str, ...]:
    """The case's `ratio` nearest unused eligible controls, nearest first (ties: subject id)."""
    ranked = sorted(
        (d, c.subject_id)
        for c in pool
        if c.subject_id not in used and (d := distance(settings.calipers, case, c)) is not None
    )
    return tuple(subject_id for _, subject_id in ranked[: settings.ratio])


def match(
    settings: Matching,
    cases: Sequence[CirAESubject],
    controls: Sequence[CirAESubject],
    control_group: Group,
) -> MatchResult:
    """Greedy nearest-neighbour matching without replacement, deterministic whatever the input order."""
    wrong = sorted(c.subject_id for c in controls if c.group != control_group)
    if wrong:
        raise ValueError(f"controls not in group {control_group!r}: {wrong}")
    _unique_ids(cases, "case")
    _unique_ids(controls, "control")
    pools: dict[ExactKey, list[CirAESubject]] = {}
    for control in sorted(controls, key=lambda c: c.subject_id):
        pools.setdefault(_exact_key(control, settings.exact), []).append(control)
    used: set[str] = set()
    sets: list[MatchedSet] = []
    unmatched: list[str] = []
    for case in sorted(cases, key=lambda c: c.subject_id):
        chosen = _pick(settings, case, pools.get(_exact_key(case, settings.exact), []), used)
        used.update(chosen)
        if chosen:
            sets.append(MatchedSet(case=case.subject_id, controls=chosen))
        else:
            unmatched.append(case.subject_id)
    return MatchResult(
        control_group=control_group,
        ratio=settings.ratio,
        sets=tuple(sets),
        unmatched_cases=tuple(unmatched),
    )
