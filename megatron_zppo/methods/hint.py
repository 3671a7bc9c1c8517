"""The Hint baseline: each hard question plus an answer-free teacher hint (every answer box cut
out, baselines.redact_answers)."""

from __future__ import annotations

from megatron_zppo.methods.base import HardPromptSet, Phase, step_seed, timed
from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import PromptKind
from megatron_zppo.rollout.collect import PromptSpec


class HintPrompts:
    teacher_tokens = False  # the hint is text

    @staticmethod
    def needs_teacher(knobs) -> bool:
        return True
    @classmethod
    def from_config(cls, cfg, teacher, templates: PromptTemplates, decode, grade) -> HintPrompts:
        return cls(teacher, templates, cfg.run.seed)

    def __init__(self, teacher, templates: PromptTemplates, seed: int):
        self.teacher, self.templates, self.seed = teacher, templates, seed

    def __call__(self, hard, cap, step, times) -> HardPromptSet:
        if not hard:
            return HardPromptSet()
        with timed(times, "teacher"):
            hints = self.teacher.hints([g.question for g in hard], step_seed(self.seed, step, Phase.TEACHER))
        return HardPromptSet([PromptSpec(g.question, PromptKind.HINT, f"{g.id}:hint",
                                         self.templates.hint_prompt(g.question.text, h))
                              for g, h in zip(hard, hints) if h])  # nothing left after redaction: no prompt

    def metrics(self, rollouts):
        return {}
