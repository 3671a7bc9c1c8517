"""The distillation baselines: the student learns from the teacher's tokens or distributions.

- off-policy: cross-entropy on the teacher's correct responses to the step's questions;
- on-policy: the student's own samples, per-token advantages from the teacher's log-probs of them
  (reverse KL or JSD, baselines.distill_advantages); the reward plays no part in the gradient;
- logit: forward KL to the teacher's next-token distributions on the student's own samples, the
  teacher a frozen model inside the trainer (train/logit_distill.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from megatron_zppo.config_io import Range
from megatron_zppo.core.baselines import DIVERGENCES, distill_advantages
from megatron_zppo.core.batch import split_minibatches
from megatron_zppo.core.loss import LossConfig
from megatron_zppo.methods.base import Grade, Phase, step_seed, timed
from megatron_zppo.methods.policy_gradient import PolicyGradient
from megatron_zppo.train.losses import CrossEntropyLoss, LogitDistillLoss

TARGETS = "sft_targets"  # Rollouts.method_data key: the teacher's correct responses (with their prompts)


@dataclass(frozen=True)
class OnPolicyDistillConfig:
    divergence: str = "reverse_kl"  # what the student's samples descend: reverse_kl | jsd
    jsd_beta: Annotated[float, Range(gt=0, lt=1)] = 0.5  # divergence=jsd: the teacher's weight in the mixture

    def __post_init__(self):
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence {self.divergence!r} unknown; expected one of {DIVERGENCES}")


@dataclass(frozen=True)
class LogitDistillConfig:
    temperature: Annotated[float, Range(gt=0)] = 1.0  # softmax temperature of both models (no T^2 factor)
    top_k: Annotated[int, Range(ge=0)] = 0  # 0: the teacher's full distribution, else its top k


class Distillation(PolicyGradient):
    """What every distillation shares: the teacher's tokens or distributions in the loss."""

    teacher_tokens = True

    @staticmethod
    def needs_teacher(knobs) -> bool:
        return True


class OffPolicyDistill(Distillation):
    @classmethod
    def from_config(cls, cfg, teacher, grade: Grade) -> OffPolicyDistill:
        return cls(cfg.advantage, cfg.run.updates_per_step, cfg.loss, teacher, cfg.rollout.teacher_group_size, grade,
                   cfg.run.seed)

    def __init__(self, estimator: str, updates_per_step: int, loss: LossConfig, teacher, teacher_group_size: int,
                 grade: Grade, seed: int):
        super().__init__(estimator, updates_per_step, loss)
        self.teacher, self.n_teacher, self.grade, self.seed = teacher, teacher_group_size, grade, seed

    def prepare(self, plain, reformulated, step, times):
        with timed(times, "teacher"):
            seed = step_seed(self.seed, step, Phase.TEACHER)
            rollouts = self.teacher.rollouts([g.question for g in plain], self.n_teacher, seed)
            samples = [s for ss in rollouts.values() for s in ss]
            self.grade(samples)
            targets = [s for s in samples if s.reward >= 1.0 and len(s.response_ids)]
        super().prepare(plain, reformulated, step, times)  # for the logs only: nothing trains on them
        return {TARGETS: targets}

    def update(self, trainer, rollouts, weight_version, rng):
        targets = rollouts.method_data[TARGETS]
        if not targets:
            return {}
        return trainer.update(split_minibatches(targets, min(self.updates, len(targets)), rng), CrossEntropyLoss())

    def metrics(self, rollouts):
        return {"n_sft_targets": len(rollouts.method_data[TARGETS])}


class OnPolicyDistill(Distillation):
    @classmethod
    def from_config(cls, cfg, teacher, grade: Grade) -> OnPolicyDistill:
        m = cfg.method.on_policy_distill
        return cls(cfg.run.updates_per_step, cfg.loss, teacher, m.divergence, m.jsd_beta)

    def __init__(self, updates_per_step: int, loss: LossConfig, teacher, divergence: str, jsd_beta: float):
        super().__init__("", updates_per_step, loss)
        self.teacher, self.divergence, self.beta = teacher, divergence, jsd_beta

    def prepare(self, plain, reformulated, step, times):
        samples = [s for g in plain for s in g.samples]
        if any(s.videos for s in samples):  # the engines' score() takes images only: refuse, never drop them
            raise NotImplementedError("on-policy distillation on video questions is not built: the teacher "
                                      "would score the student's samples without their videos")
        images = [s.images for s in samples] if any(s.images for s in samples) else None
        with timed(times, "teacher"):
            teacher_lp = self.teacher.engine.score([s.prompt_ids for s in samples], [s.response_ids for s in samples],
                                                   images)
        for s, t in zip(samples, teacher_lp, strict=True):
            s.token_advantages = distill_advantages(s.logprobs, t, self.divergence, self.beta).tolist()
            s.advantage = 0.0
        return {}


class LogitDistill(Distillation):
    def update(self, trainer, rollouts, weight_version, rng):
        return trainer.update(self.minibatches(rollouts, weight_version, rng), LogitDistillLoss())
