"""CONSORT-style flow of patients through a study, shared by every study kind (typed, pure).

A flow is a list of stages from the first patients the service sees to the ones analysed. A
stage holds one box (a linear funnel: screened → eligible → enrolled …) or several side by side
(the cirAE cohort's groups and matched comparisons). A box says how many patients it holds,
what puts a patient in it, who left between the previous stage and it (`excluded`, by reason)
and who reached it without being in the previous box (`added`, by the reason they were not):
a patient enrolled although not eligible, say. For a single-box stage after a single-box stage
the counts reconcile: previous n − Σ excluded + Σ added = n.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FlowCount:
    """How many patients share one reason."""

    reason: str
    n: int


@dataclass(frozen=True, slots=True)
class FlowBox:
    """One box of the flow: its patients, their definition, and who left or joined on the way."""

    key: str
    label: str
    n: int
    definition: str
    excluded: tuple[FlowCount, ...] = ()
    added: tuple[FlowCount, ...] = ()


@dataclass(frozen=True, slots=True)
class FlowStage:
    """One level of the flow (boxes side by side)."""

    key: str
    label: str
    boxes: tuple[FlowBox, ...]


@dataclass(frozen=True, slots=True)
class ConsortFlow:
    """The whole flow, first stage first, and notes a reader needs to read it."""

    title: str
    stages: tuple[FlowStage, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FunnelStep:
    """One step of a linear funnel: for every patient, None when in the step, else why not."""

    key: str
    label: str
    definition: str
    outcome: Mapping[str, str | None]


def counts(reasons: Iterable[str]) -> tuple[FlowCount, ...]:
    """Reasons counted, most frequent first (ties: alphabetical), so the output is stable."""
    tally = Counter(reasons)
    return tuple(FlowCount(r, n) for r, n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))


def funnel(title: str, steps: Sequence[FunnelStep], notes: Sequence[str] = ()) -> ConsortFlow:
    """A linear flow: each step's exclusions and additions counted against the step before it."""
    stages: list[FlowStage] = []
    previous: Mapping[str, str | None] | None = None
    for step in steps:
        inside = {p for p, why in step.outcome.items() if why is None}
        excluded: tuple[FlowCount, ...] = ()
        added: tuple[FlowCount, ...] = ()
        if previous is not None:
            before = {p for p, why in previous.items() if why is None}
            excluded = counts(str(step.outcome.get(p)) for p in sorted(before - inside))
            added = counts(str(previous.get(p)) for p in sorted(inside - before))
        box = FlowBox(step.key, step.label, len(inside), step.definition, excluded, added)
        stages.append(FlowStage(step.key, step.label, (box,)))
        previous = step.outcome
    return ConsortFlow(title, tuple(stages), tuple(notes))
