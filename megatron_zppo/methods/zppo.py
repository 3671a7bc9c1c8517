"""ZPPO's hard prompts: BCQ (a correct teacher response and a wrong student one, unlabelled) and
NCQ (the student's own wrong responses, their answers listed as wrong); docs/method.md, "One rollout
step", phases 4-7."""

from __future__ import annotations

import random

from megatron_zppo.core.audit import (
    audit_metrics, bcq_audit, bcq_candidate_answers, ncq_audit, ncq_teacher_answers,
)
from megatron_zppo.methods.base import Grade, HardPromptSet, Phase, step_seed, timed
from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import PromptKind
from megatron_zppo.core.reformulate import ZppoConfig, plan_reformulations, render
from megatron_zppo.rollout.collect import PromptSpec


# Rollouts.method_data keys, for the candidate-match audit (core/audit.py). Rollouts pickled before
# the audit carry only LISTED; the audit's other rates are then NaN.
LISTED = "ncq_listed"  # NCQ group id -> the answers its prompt lists as wrong
BCQ_ANSWERS = "bcq_candidate_answers"  # BCQ group id -> [teacher candidate's answer, student candidate's]
NCQ_TEACHER = "ncq_teacher_answers"  # NCQ group id -> the teacher's correct answers, where it ran


class ZppoPrompts:
    teacher_tokens = False  # teacher text, re-encoded with the student's template

    @staticmethod
    def needs_teacher(knobs) -> bool:
        """BCQ takes its responses, compression its summaries; NCQ alone, uncompressed, lists the
        student's own answers."""
        return knobs.zppo.bcq or knobs.zppo.compression
    @classmethod
    def from_config(cls, cfg, teacher, templates: PromptTemplates, decode, grade: Grade) -> ZppoPrompts:
        return cls(cfg.method.zppo, teacher, cfg.rollout.teacher_group_size, templates, grade, cfg.run.seed)

    def __init__(self, cfg: ZppoConfig, teacher, teacher_group_size: int, templates: PromptTemplates,
                 grade: Grade, seed: int):
        self.cfg, self.teacher, self.n_teacher = cfg, teacher, teacher_group_size
        self.templates, self.grade, self.seed = templates, grade, seed

    def __call__(self, hard, cap, step, times) -> HardPromptSet:
        if not hard or not (self.cfg.bcq or self.cfg.ncq):
            return HardPromptSet()
        teacher, acc = {}, float("nan")
        if self.cfg.bcq:
            with timed(times, "teacher"):
                teacher, acc = teacher_rollouts(self.teacher, hard, self.n_teacher, self.grade,
                                                step_seed(self.seed, step, Phase.TEACHER))
        with timed(times, "zppo"):
            rng = random.Random(step_seed(self.seed, step, Phase.HARD_PROMPTS))
            plans = plan_reformulations(hard, teacher, cap, self.cfg, rng)
            compress = self.teacher.compress if (self.cfg.compression and self.teacher) else None
            texts = render(plans, self.templates, compress)
        listed = {p.group_id: p.wrong_answers for p in plans if p.kind is PromptKind.NCQ}
        data = {LISTED: listed, BCQ_ANSWERS: bcq_candidate_answers(plans),
                NCQ_TEACHER: ncq_teacher_answers(plans, teacher)}
        return HardPromptSet([PromptSpec(p.question, p.kind, p.group_id, t) for p, t in zip(plans, texts)], acc, data)

    def metrics(self, rollouts):
        """The candidate-match audit of the step's BCQ and NCQ rollouts (docs/analyses.md)."""
        d, groups = rollouts.method_data, rollouts.reformulated
        return audit_metrics(bcq_audit(groups, d.get(BCQ_ANSWERS, {})),
                             ncq_audit(groups, d.get(LISTED, {}), d.get(NCQ_TEACHER, {})))


def teacher_rollouts(teacher, hard, n: int, grade: Grade, seed: int):
    """The teacher's graded rollouts on the hard questions, by question id, and its accuracy."""
    rollouts = teacher.rollouts([g.question for g in hard], n, seed)
    samples = [s for ss in rollouts.values() for s in ss]
    grade(samples)
    return rollouts, sum(s.reward for s in samples) / max(len(samples), 1)
