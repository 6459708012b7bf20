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

Controls are indexed by exact key, ICB year and Charlson, each block sorted by age, so a case
looks only at the few nearest controls of each block in its caliper box (a bisection and a short
walk per block) instead of the whole pool: O(n log n) in all. The walk and the ranking run in
floats; candidates whose float distances lie within 1e-9 of each other (ties and near ties) and
ages within rounding of the age caliper are settled in exact rational arithmetic (`distance`), so
the picks are exactly those of exact arithmetic.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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


# Float distances are sums of three shares of at most 1 computed from ages below ~150 years: their
# rounding error is below 1e-13. Two candidates closer than this are a near tie and ranked exactly.
_NEAR_TIE = 1e-9


class _Pool:
    """Controls by (exact key, ICB year, Charlson), each block sorted by age then subject id.

    Inside a block the year and Charlson terms of the distance are fixed, so the nearest controls
    are the nearest in age: a case walks outward from its age in each block of its caliper box
    and stops once it holds `ratio` unused controls and the next is farther (ties kept, and
    near ties in float arithmetic, which the ranking settles exactly).
    """

    def __init__(self, controls: Sequence[CirAESubject], exact: Sequence[str]) -> None:
        self.exact = exact
        blocks: dict[tuple[ExactKey, int, int], list[CirAESubject]] = {}
        for c in controls:
            if c.age_years is not None:  # an unknown age never passes the age caliper
                blocks.setdefault((_exact_key(c, exact), c.icb_year, c.charlson), []).append(c)
        # floats compare exactly (as the rationals they are): the order is the exact one
        self.blocks = {k: sorted(v, key=_by_age) for k, v in blocks.items()}
        self.ages = {k: [float(c.age_years or 0.0) for c in v] for k, v in self.blocks.items()}

    def near(self, case: CirAESubject, settings: Matching, used: set[str]) -> list[CirAESubject]:
        """Candidates holding the case's `ratio` nearest unused eligible controls (and ties)."""
        if case.age_years is None:
            return []
        calipers = settings.calipers
        key, age = _exact_key(case, self.exact), float(case.age_years)
        found: list[CirAESubject] = []
        for year in range(case.icb_year - calipers.icb_year, case.icb_year + calipers.icb_year + 1):
            low, high = case.charlson - calipers.charlson, case.charlson + calipers.charlson
            for charlson in range(low, high + 1):
                block = self.blocks.get((key, year, charlson))
                if block is not None:
                    ages = self.ages[(key, year, charlson)]
                    found += _nearest_in_block(block, ages, age, settings.ratio, used)
        return found


def _by_age(control: CirAESubject) -> tuple[float, str]:
    return float(control.age_years or 0.0), control.subject_id


def _nearest_in_block(
    block: list[CirAESubject], ages: list[float], age: float, ratio: int, used: set[str]
) -> list[CirAESubject]:
    """Unused controls of one block nearest in age: `ratio` of them and every tie of the last
    (a float difference within `_NEAR_TIE` of the last counts as a tie: a superset is harmless)."""
    right = bisect.bisect_left(ages, age)
    left = right - 1
    taken: list[CirAESubject] = []
    last: float | None = None
    while left >= 0 or right < len(block):
        go_left = right >= len(block) or (left >= 0 and age - ages[left] <= ages[right] - age)
        index = left if go_left else right
        delta = abs(ages[index] - age)
        if len(taken) >= ratio and last is not None and delta > last + _NEAR_TIE:
            break
        if go_left:
            left -= 1
        else:
            right += 1
        if block[index].subject_id not in used:
            taken.append(block[index])
            if last is None or delta > last:
                last = delta
    return taken


@dataclass(frozen=True, slots=True)
class _FloatCalipers:
    """The calipers as floats, for the fast path (`distance` stays the exact definition)."""

    age: float
    charlson: int
    year: int

    @classmethod
    def of(cls, calipers: Calipers) -> _FloatCalipers:
        return cls(float(calipers.age_years), calipers.charlson, calipers.icb_year)


def _float_distance(
    calipers: Calipers, fast: _FloatCalipers, case: CirAESubject, control: CirAESubject
) -> float | None:
    """The distance in floats; the exact one's float when an age lies within rounding of its
    caliper's edge (so eligibility is always decided exactly)."""
    if case.age_years is None or control.age_years is None:
        return None
    delta_charlson = abs(case.charlson - control.charlson)
    delta_year = abs(case.icb_year - control.icb_year)
    if delta_charlson > fast.charlson or delta_year > fast.year:
        return None
    delta_age = abs(case.age_years - control.age_years)
    if abs(delta_age - fast.age) <= _FLOAT_MARGIN:  # on the edge: decide it exactly
        exact = distance(calipers, case, control)
        return None if exact is None else float(exact)
    if delta_age > fast.age:
        return None
    age = delta_age / fast.age if fast.age else 0.0
    charlson = delta_charlson / fast.charlson if fast.charlson else 0.0
    year = delta_year / fast.year if fast.year else 0.0
    return age + charlson + year


def _pick(settings: Matching, case: CirAESubject, pool: _Pool, used: set[str]) -> tuple[str, ...]:
    """The case's `ratio` nearest unused eligible controls, nearest first (ties: subject id).

    Ranked in floats; when two of the candidates that can be picked lie within `_NEAR_TIE` of each
    other (a tie, or a difference floats may get wrong), those candidates are ranked in exact
    arithmetic, so the picks are the ones exact arithmetic makes.
    """
    calipers, ratio = settings.calipers, settings.ratio
    fast = _FloatCalipers.of(calipers)
    by_id: dict[str, CirAESubject] = {}
    ranked: list[tuple[float, str]] = []
    for c in pool.near(case, settings, used):
        d = _float_distance(calipers, fast, case, c)
        if d is not None:
            ranked.append((d, c.subject_id))
            by_id[c.subject_id] = c
    ranked.sort()
    if len(ranked) <= ratio and all(b[0] - a[0] > _NEAR_TIE for a, b in itertools.pairwise(ranked)):
        return tuple(subject_id for _, subject_id in ranked)
    # every candidate that can be among the first `ratio` in exact arithmetic
    bound = ranked[min(ratio, len(ranked)) - 1][0] + _NEAR_TIE
    contenders = [r for r in ranked if r[0] <= bound]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(contenders)]
    if len(contenders) == ratio and all(gap > _NEAR_TIE for gap in gaps):
        return tuple(subject_id for _, subject_id in contenders)
    exact = sorted(
        (exact_distance, subject_id)
        for _, subject_id in contenders
        if (exact_distance := distance(calipers, case, by_id[subject_id])) is not None
    )
    return tuple(subject_id for _, subject_id in exact[:ratio])


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
    pool = _Pool(controls, settings.exact)
    used: set[str] = set()
    sets: list[MatchedSet] = []
    unmatched: list[str] = []
    for case in sorted(cases, key=lambda c: c.subject_id):
        chosen = _pick(settings, case, pool, used)
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
