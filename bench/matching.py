"""How matching time grows with the cohort: cases and controls ×10, time ×? (about ×10 is linear).

Generates a seeded synthetic cirAE cohort (ages 40–85, Charlson 0–8, ICB years 2015–2024, two
sexes, three races, two ICB types; 2 % cases) of each size, matches it with the protocol's
settings and prints the seconds and the growth against the previous size. A measurement, not a
test. Run from the repository root:

    .venv/bin/python bench/matching.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.protocol.terminology import build_terminology
from service.studies.cirae.matching import match
from service.studies.cirae.protocol import CohortProtocol
from service.studies.cirae.records import CirAESubject
from service.studies.registry import load_protocols


def cohort(size: int, seed: int) -> tuple[list[CirAESubject], list[CirAESubject]]:
    """`size` subjects, 2 % of them cases."""
    rng = random.Random(seed)
    subjects = []
    for i in range(size):
        year = rng.randint(2015, 2024)
        subjects.append(
            CirAESubject(
                patient_id=f"p{i}",
                subject_id=f"S-{i:07d}",
                group="dupilumab" if i % 50 == 0 else "control_2",
                icb_start=dt.date(year, 6, 1),
                icb_type=rng.choice(["PD-1", "combination"]),
                sex=rng.choice(["female", "male"]),
                race=rng.choice(["White", "Black", "Asian"]),
                age_years=round(rng.uniform(40, 85), 2),
                charlson=rng.randint(0, 8),
                cancer_type="C34",
                stage="III",
                cirae_onset=None,
                resolution=None,
                dupilumab_start=None,
                glucocorticoid_start=None,
                death=None,
                last_seen=dt.date(year + 1, 6, 1),
            )
        )
    return (
        [s for s in subjects if s.group == "dupilumab"],
        [s for s in subjects if s.group == "control_2"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Time matching at each size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    sizes = [int(s) for s in parser.parse_args(argv).sizes.split(",")]
    protocol = load_protocols(build_terminology())["cirae-dupilumab"]
    assert isinstance(protocol, CohortProtocol)
    settings = protocol.cohort.matching
    previous: tuple[int, float] | None = None
    print(f"{'subjects':>9}{'cases':>7}{'matched':>9}{'seconds':>9}{'growth':>8}{'size x':>8}")
    for size in sizes:
        cases, controls = cohort(size, seed=size)
        started = time.perf_counter()
        result = match(settings, cases, controls, "control_2")
        seconds = time.perf_counter() - started
        growth = f"{seconds / previous[1]:8.1f}{size / previous[0]:8.1f}" if previous else ""
        print(f"{size:>9}{len(cases):>7}{len(result.sets):>9}{seconds:>9.2f}{growth}")
        previous = (size, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
