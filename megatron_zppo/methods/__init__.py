"""Methods as plug-ins: what hard questions become and what the trainer optimises (base.py).

`build` is the one place that maps the config to method objects; loop.py never names a method.
"""

from __future__ import annotations

from megatron_zppo.methods.base import (Grade, HardPrompts, HardPromptSet, NoHardPrompts, Objective, Phase, step_seed,
                                        timed)
from megatron_zppo.methods.distill import LogitDistill, OffPolicyDistill, OnPolicyDistill
from megatron_zppo.methods.hint import HintPrompts
from megatron_zppo.methods.policy_gradient import PolicyGradient
from megatron_zppo.methods.prefix import PrefixPrompts
from megatron_zppo.methods.zppo import ZppoPrompts

__all__ = ["Grade", "HardPrompts", "HardPromptSet", "Objective", "Phase", "build_hard_prompts", "build_objective",
           "step_seed", "timed", "trainer_teacher"]


def build_hard_prompts(cfg, teacher, templates, decode, grade: Grade) -> HardPrompts:
    """On the rank that holds the engines: `cfg` is the run's config.Config."""
    how, seed, n = cfg.method.hard_prompts, cfg.run.seed, cfg.rollout.teacher_group_size
    if how == "hint":
        return HintPrompts(teacher, templates, seed)
    if how == "prefix":
        return PrefixPrompts(teacher, n, cfg.method.prefix_fraction, decode, grade, seed)
    if cfg.zppo.bcq or cfg.zppo.ncq:
        return ZppoPrompts(cfg.zppo, teacher, n, templates, grade, seed)
    return NoHardPrompts()


def build_objective(cfg, teacher=None, grade: Grade | None = None) -> Objective:
    """On every rank; the teacher and the grader exist on the rank that holds the engines only."""
    m, updates, loss = cfg.method, cfg.run.updates_per_step, cfg.loss
    if m.objective == "off_policy_distill":
        return OffPolicyDistill(cfg.advantage, updates, loss, teacher, cfg.rollout.teacher_group_size, grade,
                                cfg.run.seed)
    if m.objective == "on_policy_distill":
        return OnPolicyDistill(updates, loss, teacher, m.divergence, m.jsd_beta)
    if m.objective == "logit_distill":
        return LogitDistill(cfg.advantage, updates, loss)
    return PolicyGradient(cfg.advantage, updates, loss)


def trainer_teacher(cfg):
    """The teacher the trainer itself must hold (its distributions, not its text): logit
    distillation's, a train.logit_distill.LogitTeacher; None for every other method."""
    m = cfg.method
    if m.objective != "logit_distill":
        return None
    from megatron_zppo.train.logit_distill import LogitTeacher

    return LogitTeacher(cfg.teacher.hf_path, m.kd_temperature, m.kd_top_k)
