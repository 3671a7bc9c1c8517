"""The Prefix baseline, as the paper's: the plain prompt followed by the first `fraction` of the
tokens of one correct teacher response (drawn at random), as prompt tokens, so they carry no
gradient; the student continues from there and prefix + continuation is graded. A question the
teacher fails gets no prefix."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

from megatron_zppo.config_io import Range
from megatron_zppo.core.baselines import prefix_length
from megatron_zppo.methods.base import Grade, HardPromptSet, Phase, step_seed, timed
from megatron_zppo.methods.zppo import teacher_rollouts
from megatron_zppo.core.records import PromptKind
from megatron_zppo.rollout.collect import PromptSpec


@dataclass(frozen=True)
class PrefixConfig:
    fraction: Annotated[float, Range(gt=0, lt=1)] = 0.4  # share of one correct teacher response given as the prefix


class PrefixPrompts:
    teacher_tokens = True  # the prefix is the teacher's own token ids

    @staticmethod
    def needs_teacher(knobs) -> bool:
        return True
    @classmethod
    def from_config(cls, cfg, teacher, templates, decode, grade: Grade) -> PrefixPrompts:
        return cls(teacher, cfg.rollout.teacher_group_size, cfg.method.prefix.fraction, decode, grade, cfg.run.seed)

    def __init__(self, teacher, teacher_group_size: int, fraction: float, decode: Callable[[Sequence[int]], str],
                 grade: Grade, seed: int):
        self.teacher, self.n_teacher, self.fraction = teacher, teacher_group_size, fraction
        self.decode, self.grade, self.seed = decode, grade, seed

    def __call__(self, hard, cap, step, times) -> HardPromptSet:
        if not hard:
            return HardPromptSet()
        with timed(times, "teacher"):
            teacher, acc = teacher_rollouts(self.teacher, hard, self.n_teacher, self.grade,
                                            step_seed(self.seed, step, Phase.TEACHER))
        rng = random.Random(step_seed(self.seed, step, Phase.HARD_PROMPTS))
        with timed(times, "zppo"):
            specs = []
            for g in hard:  # questions the teacher never solved get no prompt; at most `cap` prompts
                correct = [s for s in teacher.get(g.question.id, []) if s.reward and s.reward >= 1.0]
                if not correct or len(specs) >= cap:
                    continue
                ids = list(rng.choice(correct).response_ids)
                ids = ids[:prefix_length(len(ids), self.fraction)]
                if ids:
                    specs.append(PromptSpec(g.question, PromptKind.PREFIX, f"{g.id}:prefix", g.prompt_text,
                                            tuple(ids), self.decode(ids)))
        return HardPromptSet(specs, acc)

    def metrics(self, rollouts):
        return {}
