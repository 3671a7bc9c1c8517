"""The policy gradient on the student's own samples (ZPPO, GRPO, Hint, Prefix): group-centred
advantages (advantages.assign_advantages), then PPO updates, one per mini-batch."""

from __future__ import annotations

from megatron_zppo.core.advantages import assign_advantages
from megatron_zppo.core.batch import split_minibatches, training_samples
from megatron_zppo.core.loss import LossConfig
from megatron_zppo.errors import RunError
from megatron_zppo.train.losses import PolicyGradientLoss


class PolicyGradient:
    teacher_tokens = False
    group_advantages = True

    @staticmethod
    def needs_teacher(knobs) -> bool:
        return False
    @classmethod
    def from_config(cls, cfg, teacher, grade):
        return cls(cfg.advantage.normalize, cfg.run.updates_per_step, cfg.loss)

    @classmethod
    def held_teacher(cls, cfg):
        """The teacher the trainer must hold (a train.logit_distill.LogitTeacher), or None."""
        return None

    def __init__(self, normalize: str, updates_per_step: int, loss: LossConfig):
        self.normalize, self.updates, self.policy_loss = normalize, updates_per_step, PolicyGradientLoss(loss)

    def prepare(self, plain, reformulated, step, times):
        assign_advantages(plain + reformulated, self.normalize)
        return {}

    def minibatches(self, rollouts, weight_version, rng):
        samples = training_samples(rollouts.trained, weight_version)
        if not samples:
            dropped = rollouts.dropped
            raise RunError(f"step {rollouts.step}: nothing to train on: no prompt was rolled out"
                           + (f" ({'; '.join(dropped)})" if dropped else "")
                           + "; raise the limit or filter the data (tools/prepare_vl_data.py, the source's filters)")
        return split_minibatches(samples, min(self.updates, len(samples)), rng)

    def update(self, trainer, rollouts, weight_version, rng):
        return trainer.update(self.minibatches(rollouts, weight_version, rng), self.policy_loss)

    def metrics(self, rollouts):
        return {}
