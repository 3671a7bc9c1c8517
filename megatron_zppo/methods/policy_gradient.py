"""The policy gradient on the student's own samples (ZPPO, GRPO, Hint, Prefix): group-centred
advantages (advantages.assign_advantages), then PPO updates, one per mini-batch."""

from __future__ import annotations

from megatron_zppo.core.advantages import assign_advantages
from megatron_zppo.core.batch import split_minibatches, training_samples
from megatron_zppo.errors import RunError


class PolicyGradient:
    def __init__(self, estimator: str, updates_per_step: int):
        self.estimator, self.updates = estimator, updates_per_step

    def prepare(self, plain, reformulated, step, times):
        assign_advantages(plain + reformulated, self.estimator)
        return []

    def minibatches(self, groups, weight_version, rng, step: int, dropped: list[str]):
        samples = training_samples(groups, weight_version)
        if not samples:
            raise RunError(f"step {step}: nothing to train on: no prompt was rolled out"
                           + (f" ({'; '.join(dropped)})" if dropped else "")
                           + "; raise the limit or filter the data (tools/prepare_vl_data.py, the source's filters)")
        return split_minibatches(samples, min(self.updates, len(samples)), rng)

    def train(self, trainer, rollouts, weight_version, rng):
        return trainer.train(self.minibatches(rollouts.groups, weight_version, rng, rollouts.step, rollouts.dropped))
