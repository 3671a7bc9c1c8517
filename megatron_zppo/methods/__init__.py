"""Methods as plug-ins: what hard questions become and what the trainer optimises (base.py).

A method is a name in `METHODS` below: its hard prompts (built on the rank that holds the engines)
and its objective (built on every rank), each made from the run's config by the class's own
`from_config`; its knobs are its subsection of the config's `method` section. `build_*` are the
one place the config is mapped to method objects; loop.py never names a method. A new method is
one module here, one line below, one preset (config.PRESETS) and, if it has knobs, its subsection
of config.MethodConfig.
"""

from __future__ import annotations

from megatron_zppo.methods.base import (Grade, HardPrompts, HardPromptSet, NoHardPrompts, Objective, Phase,
                                        pre_capped, step_seed, timed)
from megatron_zppo.methods.distill import LogitDistill, OffDistill, OnDistill, SampledTokenDistill, TeacherSft
from megatron_zppo.methods.hint import HintPrompts, QuestionHintPrompts
from megatron_zppo.methods.policy_gradient import PolicyGradient
from megatron_zppo.methods.prefix import PrefixPrompts
from megatron_zppo.methods.zppo import ZppoPrompts

__all__ = ["Grade", "HardPrompts", "HardPromptSet", "METHODS", "Objective", "Phase", "build_hard_prompts",
           "build_objective", "needs_teacher", "pre_capped", "step_seed", "timed", "trainer_teacher",
           "uses_group_advantages", "uses_teacher_tokens"]

# method.name -> (what its hard questions become, what the trainer optimises); docs/method.md,
# "Baselines", says which are the paper's and which depart from it.
METHODS = {
    "zppo": (ZppoPrompts, PolicyGradient),
    "grpo": (NoHardPrompts, PolicyGradient),
    "hint": (HintPrompts, PolicyGradient),
    "prefix": (PrefixPrompts, PolicyGradient),
    "off_distill": (NoHardPrompts, OffDistill),
    "on_distill": (NoHardPrompts, OnDistill),
    # departures from the paper's rows, kept under their own names
    "question_hint": (QuestionHintPrompts, PolicyGradient),
    "teacher_sft": (NoHardPrompts, TeacherSft),
    "sampled_token_distill": (NoHardPrompts, SampledTokenDistill),
    "logit_distill": (NoHardPrompts, LogitDistill),
}


def needs_teacher(knobs) -> bool:
    """The method of the config's `method` section asks the teacher for text, scores or a model."""
    hard, objective = METHODS[knobs.name]
    return hard.needs_teacher(knobs) or objective.needs_teacher(knobs)


def uses_teacher_tokens(name: str) -> bool:
    """Teacher token ids go into the student's prompts or loss: the tokenizers must be one."""
    hard, objective = METHODS[name]
    return hard.teacher_tokens or objective.teacher_tokens


def uses_group_advantages(name: str) -> bool:
    """The method trains a policy gradient on group-centred advantages (what dynamic sampling filters for)."""
    return METHODS[name][1].group_advantages


def build_hard_prompts(cfg, teacher, templates, decode, grade: Grade) -> HardPrompts:
    """On the rank that holds the engines: `cfg` is the run's config.Config."""
    return METHODS[cfg.method.name][0].from_config(cfg, teacher, templates, decode, grade)


def build_objective(cfg, teacher=None, grade: Grade | None = None) -> Objective:
    """On every rank; the teacher and the grader exist on the rank that holds the engines only."""
    return METHODS[cfg.method.name][1].from_config(cfg, teacher, grade)


def trainer_teacher(cfg):
    """The teacher the trainer itself must hold (its distributions, not its text), a
    train.logit_distill.LogitTeacher, for the distillations that need one; else None."""
    return METHODS[cfg.method.name][1].held_teacher(cfg)
