"""The Hint baselines: each hard question plus an answer-free teacher hint, in <hint> tags, every
answer box cut out of it (baselines.redact_answers).

- `HintPrompts`, the paper's: the teacher first makes its usual rollouts of the question; the hint
  is written from one of its correct ones, drawn at random; a question the teacher fails gets no
  hint (its plain rollouts still train).
- `QuestionHintPrompts`, a departure kept because it needs no teacher rollouts: the hint is written
  from the question alone.
"""

from __future__ import annotations

import random

from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import PromptKind
from megatron_zppo.methods.base import Grade, HardPromptSet, Phase, step_seed, timed
from megatron_zppo.methods.zppo import teacher_rollouts
from megatron_zppo.rollout.collect import PromptSpec


class HintPrompts:
    teacher_tokens = False  # the hint is text

    @staticmethod
    def needs_teacher(knobs) -> bool:
        return True

    @classmethod
    def from_config(cls, cfg, teacher, templates: PromptTemplates, decode, grade: Grade) -> HintPrompts:
        return cls(teacher, templates, cfg.rollout.teacher_group_size, grade, cfg.run.seed)

    def __init__(self, teacher, templates: PromptTemplates, teacher_group_size: int, grade: Grade, seed: int):
        self.teacher, self.templates, self.n_teacher = teacher, templates, teacher_group_size
        self.grade, self.seed = grade, seed

    def __call__(self, hard, cap, step, times) -> HardPromptSet:
        if not hard:
            return HardPromptSet()
        with timed(times, "teacher"):
            rollouts, acc = teacher_rollouts(self.teacher, hard, self.n_teacher, self.grade,
                                             step_seed(self.seed, step, Phase.TEACHER))
        rng = random.Random(step_seed(self.seed, step, Phase.HARD_PROMPTS))
        # (group, one correct teacher response), hardest first, at most `cap`; a hint that redaction
        # leaves empty gives no prompt and its place is not passed on (asking for more hints would
        # cost teacher calls for a case that needs a teacher writing nothing but an answer box)
        chosen = []
        for g in hard:
            correct = [s for s in rollouts.get(g.question.id, []) if s.reward and s.reward >= 1.0]
            if correct and len(chosen) < cap:
                chosen.append((g, rng.choice(correct).response_text))
        with timed(times, "teacher"):
            hints = self.teacher.hints([g.question for g, _ in chosen], step_seed(self.seed, step, Phase.TEACHER),
                                       [r for _, r in chosen])
        return HardPromptSet(hint_specs([g for g, _ in chosen], hints, self.templates), acc)

    def metrics(self, rollouts):
        return {}


class QuestionHintPrompts(HintPrompts):
    @classmethod
    def from_config(cls, cfg, teacher, templates: PromptTemplates, decode, grade: Grade) -> QuestionHintPrompts:
        return cls(teacher, templates, 0, grade, cfg.run.seed)

    def __call__(self, hard, cap, step, times) -> HardPromptSet:
        hard = hard[:cap]
        if not hard:
            return HardPromptSet()
        with timed(times, "teacher"):
            hints = self.teacher.hints([g.question for g in hard], step_seed(self.seed, step, Phase.TEACHER))
        return HardPromptSet(hint_specs(hard, hints, self.templates))


def hint_specs(groups, hints: list[str], templates: PromptTemplates) -> list[PromptSpec]:
    """One prompt per hint; a hint with nothing left after redaction gives no prompt."""
    return [PromptSpec(g.question, PromptKind.HINT, f"{g.id}:hint", templates.hint_prompt(g.question.text, h))
            for g, h in zip(groups, hints) if h]
