"""Dynamic sampling after reformulation (`rollout.dynamic_sampling`, docs/method.md, "Dynamic
sampling"): a step keeps drawing questions until it holds its target number of informative groups.

A group is informative when its rewards are not all equal: only then does a group-centred
advantage give it a gradient. The filter runs after the method has turned the hard questions into
their prompts, so an all-wrong plain group, which GRPO-style filtering throws away, still brings its
BCQ/NCQ groups into training when those are informative; the plain group itself (no gradient) is
not trained. The buffer is not filtered: it learns from every plain group (sources.py).

Pure functions: the loop (loop.RolloutPhase) draws, the functions here decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from megatron_zppo.config_io import Range
from megatron_zppo.core.records import Group

# A further round draws at most this many times rollout.n_new questions. At the paper's shape a
# round costs about its longest answer whatever its size (16 servers hold far more than one
# step's 768 requests at once), so a few large rounds cost less than many small ones.
MAX_ROUND_FACTOR = 4


@dataclass(frozen=True)
class DynamicSamplingConfig:
    """`rollout.dynamic_sampling`: off by default (the paper trains every group)."""

    enabled: bool = False  # draw more questions until enough groups have a gradient; uniform groups are not trained
    # informative groups a step trains on; 0: as many as the plain groups a step draws (new + replayed)
    target_groups: Annotated[int, Range(ge=0)] = 0
    max_rounds: Annotated[int, Range(ge=1)] = 4  # rounds of drawing per step; after the last the step trains on what it has, and says so
    margin: Annotated[float, Range(ge=1)] = 1.25  # a further round draws margin x (groups still needed / informative groups per question)
    surplus: str = "train"  # informative groups beyond the target in the last round: train them, or drop them

    def __post_init__(self):
        if self.surplus not in ("train", "drop"):
            raise ValueError(f"rollout.dynamic_sampling.surplus {self.surplus!r} unknown; expected train or drop")


def informative(group: Group) -> bool:
    """Its rewards differ, so its group-centred advantages are not all zero."""
    return len(set(group.rewards)) > 1


def next_round_size(need: int, kept: int, drawn: int, n_new: int, margin: float) -> int:
    """Questions the next round draws: enough, at the informative groups per drawn question seen so
    far, for the `need` groups still missing, with a margin; a full step's draw while nothing has
    been informative yet; never more than MAX_ROUND_FACTOR steps' draws."""
    if kept == 0:
        return n_new
    return max(1, min(math.ceil(margin * need * drawn / kept), MAX_ROUND_FACTOR * n_new))


def in_question_order(plain: Sequence[Group], reformulated: Sequence[Group]) -> list[Group]:
    """A round's groups question by question, in draw order: each plain group, then its reformulations."""
    by_question: dict[str, list[Group]] = {}
    for g in reformulated:
        by_question.setdefault(g.question.id, []).append(g)
    return [g for p in plain for g in [p, *by_question.pop(p.question.id, [])]]


def surplus_groups(last_round: Sequence[Group], kept_before: int, target: int) -> list[Group]:
    """The informative groups of the last round beyond the target, in question order, from the end
    (`surplus: drop`): the step trains on exactly `target` groups."""
    ordered = [g for g in last_round if informative(g)]
    keep = max(target - kept_before, 0)
    return ordered[keep:]


def informative_fraction(groups: Sequence[Group]) -> float:
    """The share of the samples of `groups` whose group is informative (NaN for none)."""
    n = sum(len(g.samples) for g in groups)
    return sum(len(g.samples) for g in groups if informative(g)) / n if n else float("nan")
