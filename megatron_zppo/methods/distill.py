"""The distillation baselines: the student learns from the teacher's tokens or distributions.

The paper's rows, with the teacher's whole next-token distributions from the teacher the trainer
holds (train/logit_distill.py) and one update on the step's whole batch:
- `OffDistill`: the per-token JSD on the teacher's own correct responses to the step's questions;
- `OnDistill`: the per-token JSD on the student's own samples.
Departures, kept under their own names:
- `LogitDistill`: forward KL (modelopt's loss, optionally the teacher's top-k) on the student's own
  samples, with I updates;
- `TeacherSft`: cross-entropy on the teacher's correct responses, I updates (rejection-sampled SFT);
- `SampledTokenDistill`: the student's own samples, per-token advantages from the teacher's
  log-probs of the sampled tokens only (reverse KL or JSD, baselines.distill_advantages) through
  the clipped policy loss; it needs no teacher inside the trainer, only one that scores tokens.
The reward plays no part in any of their gradients; it is computed for the logs and the buffer.
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
from megatron_zppo.train.logit_distill import LogitTeacher
from megatron_zppo.train.losses import CrossEntropyLoss, LogitDistillLoss

TARGETS = "sft_targets"  # Rollouts.method_data key: the teacher's correct responses (with their prompts)


@dataclass(frozen=True)
class JsdDistillConfig:
    beta: Annotated[float, Range(gt=0, lt=1)] = 0.5  # the teacher's weight in the JSD's mixture (the paper: unstated)
    temperature: Annotated[float, Range(gt=0)] = 1.0  # softmax temperature of both models (the paper: unstated)
    updates_per_step: Annotated[int, Range(ge=1)] = 1  # the paper: one update on the step's whole batch


@dataclass(frozen=True)
class LogitDistillConfig:
    temperature: Annotated[float, Range(gt=0)] = 1.0  # softmax temperature of both models (no T^2 factor)
    top_k: Annotated[int, Range(ge=0)] = 0  # 0: the teacher's full distribution, else its top k


@dataclass(frozen=True)
class SampledTokenDistillConfig:
    divergence: str = "reverse_kl"  # what the student's samples descend: reverse_kl | jsd
    jsd_beta: Annotated[float, Range(gt=0, lt=1)] = 0.5  # divergence=jsd: the teacher's weight in the mixture

    def __post_init__(self):
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence {self.divergence!r} unknown; expected one of {DIVERGENCES}")


class Distillation(PolicyGradient):
    """What every distillation shares: the teacher's tokens or distributions in the loss."""

    teacher_tokens = True
    group_advantages = False  # its own advantages (or none): rollout.dynamic_sampling does not apply

    @staticmethod
    def needs_teacher(knobs) -> bool:
        return True


class LogitDistill(Distillation):
    """The student's own samples against the distributions of the teacher the trainer holds."""

    @classmethod
    def held_teacher(cls, cfg) -> LogitTeacher:
        m = cfg.method.logit_distill
        return LogitTeacher(cfg.teacher.hf_path, m.temperature, m.top_k)

    def update(self, trainer, rollouts, weight_version, rng):
        return trainer.update(self.minibatches(rollouts, weight_version, rng), LogitDistillLoss())


class OnDistill(LogitDistill):
    @classmethod
    def from_config(cls, cfg, teacher, grade):
        return cls(cfg.advantage.normalize, cfg.method.on_distill.updates_per_step, cfg.loss)

    @classmethod
    def held_teacher(cls, cfg) -> LogitTeacher:
        m = cfg.method.on_distill
        return LogitTeacher(cfg.teacher.hf_path, m.temperature, divergence="jsd", beta=m.beta)


class TeacherSft(Distillation):
    """Cross-entropy on the teacher's correct responses to every question of the step."""

    @classmethod
    def from_config(cls, cfg, teacher, grade: Grade):
        return cls(cfg.advantage.normalize, cls.updates_from(cfg), cfg.loss, teacher, cfg.rollout.teacher_group_size,
                   grade, cfg.run.seed)

    @staticmethod
    def updates_from(cfg) -> int:
        return cfg.run.updates_per_step

    def __init__(self, normalize: str, updates_per_step: int, loss: LossConfig, teacher, teacher_group_size: int,
                 grade: Grade, seed: int):
        super().__init__(normalize, updates_per_step, loss)
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

    def target_loss(self):
        return CrossEntropyLoss()

    def update(self, trainer, rollouts, weight_version, rng):
        targets = rollouts.method_data[TARGETS]
        if not targets:
            return {}
        return trainer.update(split_minibatches(targets, min(self.updates, len(targets)), rng), self.target_loss())

    def metrics(self, rollouts):
        return {"n_sft_targets": len(rollouts.method_data[TARGETS])}


class OffDistill(TeacherSft):
    """The JSD to the teacher's distributions along the teacher's own correct responses."""

    @staticmethod
    def updates_from(cfg) -> int:
        return cfg.method.off_distill.updates_per_step

    @classmethod
    def held_teacher(cls, cfg) -> LogitTeacher:
        m = cfg.method.off_distill
        return LogitTeacher(cfg.teacher.hf_path, m.temperature, divergence="jsd", beta=m.beta)

    def target_loss(self):
        return LogitDistillLoss()


class SampledTokenDistill(Distillation):
    @classmethod
    def from_config(cls, cfg, teacher, grade: Grade) -> SampledTokenDistill:
        m = cfg.method.sampled_token_distill
        return cls(cfg.run.updates_per_step, cfg.loss, teacher, m.divergence, m.jsd_beta)

    def __init__(self, updates_per_step: int, loss: LossConfig, teacher, divergence: str, jsd_beta: float):
        super().__init__("", updates_per_step, loss)
        self.teacher, self.divergence, self.beta = teacher, divergence, jsd_beta

    def prepare(self, plain, reformulated, step, times):
        samples = [s for g in plain for s in g.samples]
        if any(s.videos for s in samples):  # the engines' score() takes images only: refuse, never drop them
            raise NotImplementedError("sampled-token distillation on video questions is not built: the teacher "
                                      "would score the student's samples without their videos")
        images = [s.images for s in samples] if any(s.images for s in samples) else None
        with timed(times, "teacher"):
            teacher_lp = self.teacher.engine.score([s.prompt_ids for s in samples], [s.response_ids for s in samples],
                                                   images)
        for s, t in zip(samples, teacher_lp, strict=True):
            s.token_advantages = distill_advantages(s.logprobs, t, self.divergence, self.beta).tolist()
            s.advantage = 0.0
        return {}
