"""The distillation baselines: the student learns from the teacher's tokens or distributions.

- off-policy: cross-entropy on the teacher's correct responses to the step's questions;
- on-policy: the student's own samples, per-token advantages from the teacher's log-probs of them
  (reverse KL or JSD, baselines.distill_advantages); the reward plays no part in the gradient;
- logit: forward KL to the teacher's next-token distributions on the student's own samples, the
  teacher a frozen model inside the trainer (train/logit_distill.py).
"""

from __future__ import annotations

from megatron_zppo.core.baselines import distill_advantages
from megatron_zppo.core.batch import split_minibatches
from megatron_zppo.core.loss import LossConfig
from megatron_zppo.methods.base import Grade, Phase, step_seed, timed
from megatron_zppo.methods.policy_gradient import PolicyGradient
from megatron_zppo.train.losses import CrossEntropyLoss, LogitDistillLoss

TARGETS = "sft_targets"  # Rollouts.method_data key: the teacher's correct responses (with their prompts)


class OffPolicyDistill(PolicyGradient):
    def __init__(self, estimator: str, updates_per_step: int, loss: LossConfig, teacher, teacher_group_size: int,
                 grade: Grade, seed: int):
        super().__init__(estimator, updates_per_step, loss)
        self.teacher, self.n_teacher, self.grade, self.seed = teacher, teacher_group_size, grade, seed

    def prepare(self, plain, reformulated, step, times):
        with timed(times, "teacher"):
            rollouts = self.teacher.rollouts([g.question for g in plain], self.n_teacher, step_seed(self.seed, step, Phase.TEACHER))
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


class OnPolicyDistill(PolicyGradient):
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


class LogitDistill(PolicyGradient):
    def update(self, trainer, rollouts, weight_version, rng):
        return trainer.update(self.minibatches(rollouts, weight_version, rng), LogitDistillLoss())
