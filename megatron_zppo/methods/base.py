"""What a method contributes to the ZPPO loop, behind two small protocols.

A method says (1) what hard questions become — `HardPrompts`: ZPPO's BCQ/NCQ, a teacher hint, a
teacher prefix, or nothing — and (2) what the trainer optimises — `Objective`: the policy gradient
on the student's own samples, SFT on teacher targets, on-policy or logit distillation. The loop
calls both without knowing which method it runs (loop.py); `methods.METHODS` maps `method.name`
to the two classes, each built by its own `from_config` with its teacher, graders and templates
(methods/__init__.py says what a new method takes).
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from megatron_zppo.core.records import Group, Sample
from megatron_zppo.rollout.collect import PromptSpec


@contextmanager
def timed(times: dict[str, float], name: str):
    t0 = time.perf_counter()
    yield
    times[name] = times.get(name, 0.0) + time.perf_counter() - t0


class Phase(enum.IntEnum):
    """A step's independent random streams. The numbers are part of every run's samples: changing
    one changes what a seed reproduces."""

    PLAIN_ROLLOUTS = 0  # the student's sampling on plain prompts
    HARD_PROMPTS = 1  # which candidates a reformulated prompt shows, which teacher response a prefix takes
    REFORMULATED_ROLLOUTS = 2  # the student's sampling on the hard questions' prompts
    MINIBATCHES = 3  # how the step's samples are split into mini-batches
    TEACHER = 4  # the teacher's sampling (responses, hints)


def step_seed(seed: int, step: int, phase: Phase) -> int:
    """A distinct, reproducible seed per (run, step, phase), so a resumed run samples the same."""
    return (seed * 1_000_003 + step * 101 + int(phase)) % (2**31)


@dataclass
class HardPromptSet:
    """The prompts a step's hard questions were turned into, with what logging reports of them."""

    specs: list[PromptSpec] = field(default_factory=list)
    teacher_acc: float = float("nan")  # the teacher's accuracy on the hard questions, if it was asked
    data: dict[str, Any] = field(default_factory=dict)  # the method's own, carried in Rollouts.method_data


class HardPrompts(Protocol):
    teacher_tokens: bool  # teacher token ids go into the student's prompts (the tokenizers must be one)

    @staticmethod
    def needs_teacher(knobs) -> bool:
        """Whether these prompts need the teacher, given the config's `method` section."""
    def __call__(self, hard: list[Group], cap: int, step: int, times: dict[str, float]) -> HardPromptSet:
        """Prompts for (at most `cap` of) the hard groups, lowest accuracy first."""

    def metrics(self, rollouts) -> dict[str, float]:
        """What the logs show of these prompts in a step's rollouts (loop.Rollouts); {} if nothing."""


class Objective(Protocol):
    teacher_tokens: bool  # teacher token ids go into the student's loss
    group_advantages: bool  # a policy gradient on group-centred advantages (rollout.dynamic_sampling filters for it)

    @staticmethod
    def needs_teacher(knobs) -> bool:
        """Whether this objective needs the teacher, given the config's `method` section."""
    def prepare(self, plain: list[Group], reformulated: list[Group], step: int,
                times: dict[str, float]) -> dict[str, Any]:
        """On the rank that holds the engines, after grading: set the samples' advantages.
        Returns what else the update needs (off-policy distillation's targets), carried to every
        rank in Rollouts.method_data; usually {}."""

    def update(self, trainer, rollouts, weight_version: str | tuple[str, ...] | None,
               rng: random.Random) -> dict[str, float]:
        """On every trainer rank: the step's updates from `rollouts` (loop.Rollouts), through the
        trainer's one seam, `trainer.update(minibatches, loss)`. Samples must carry
        `weight_version` (or one of them; batch.training_samples)."""

    def metrics(self, rollouts) -> dict[str, float]:
        """This objective's own figures of a step's rollouts, for the logs ({} if none)."""


def pre_capped(hard: list[Group], cap: int, rule: str) -> list[Group]:
    """The hard groups (hardest first) a method may turn into prompts (method.pre_cap): the `cap`
    hardest, chosen before the teacher runs ("hardest"), or all of them ("admissible": the method
    runs the teacher on each and keeps the `cap` hardest whose prompts it can build)."""
    return list(hard) if rule == "admissible" else list(hard[:cap])


# Grades samples in place against their own questions (rollout.collect.score_samples, bound).
Grade = Callable[[Sequence[Sample]], None]


class NoHardPrompts:
    """GRPO and the distillations: hard questions are only buffered."""

    teacher_tokens = False

    @staticmethod
    def needs_teacher(knobs) -> bool:
        return False

    @classmethod
    def from_config(cls, cfg, teacher, templates, decode, grade) -> NoHardPrompts:
        return cls()

    def __call__(self, hard, cap, step, times) -> HardPromptSet:
        return HardPromptSet()

    def metrics(self, rollouts) -> dict[str, float]:
        return {}
