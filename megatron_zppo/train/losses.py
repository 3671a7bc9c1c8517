"""What an update minimises: the trainer's one seam, `RLTrainer.update(minibatches, loss)`.

The trainer cuts each mini-batch into this rank's micro-batches; a loss turns them into one
optimizer update per mini-batch and returns this rank's statistics, the mean of each over the
updates. A method (methods/) picks its loss once; the trainer knows no method. A new loss is one
class here with `pack_rows` and `updates`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from megatron_zppo.core.loss import LossConfig, importance_stats
from megatron_zppo.core.records import Sample
from megatron_zppo.train.logprobs import SequenceBatch
from megatron_zppo.train.steps import PPOMicroBatch

# One mini-batch as this rank's micro-batches (each with its rows' samples, None for padding rows),
# and the plan's token statistics.
Cut = tuple[list[tuple[SequenceBatch, list[Sample | None]]], dict[str, float]]


@dataclass(frozen=True)
class HeldTeacher:
    """The frozen teacher model the trainer holds for logit distillation, laid out like the student."""

    policy: Any  # train.model.Policy
    logits: Callable | None  # its output layer (last pipeline stage only)
    criterion: Any  # modelopt's distillation loss


class Loss(Protocol):
    pack_rows: bool  # False: the loss's forward takes padded rows, not packed sequences

    def updates(self, trainer, cut: list[Cut]) -> dict[str, float]:
        """One optimizer update per mini-batch of `cut`; this rank's statistics."""


class PolicyGradientLoss:
    """The clipped PPO loss (core/loss.py) on rollouts with advantages. The old log-probs of every
    sample come first, all under the pre-update weights (PPO's behaviour policy), then one update
    per mini-batch; the engine's own log-probs ride along for truncated importance sampling."""

    pack_rows = True

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg

    def updates(self, trainer, cut: list[Cut]) -> dict[str, float]:
        olds = [_old_logprobs(trainer, batches) for batches, _ in cut]
        log_ratios, per_update = [], []
        for (batches, cost), old in zip(cut, olds):
            mbs = []
            for (seq, rows), old_lp in zip(batches, old):
                rollout = pad_rows([s.logprobs if s else [] for s in rows], seq.response_width)
                mbs.append(PPOMicroBatch(seq, old_lp, advantages(rows, seq.response_width), rollout_logprobs=rollout))
                mask = seq.response_mask()
                if trainer.last_stage and mask.any():
                    log_ratios.append((old_lp - rollout)[mask])
            per_update.append({**trainer.core.ppo_step(mbs, self.cfg), **cost})
        local = mean_stats(per_update)
        if log_ratios:  # how far the trainer's log-probs are from the engine's, before any update
            r = torch.cat(log_ratios)
            local.update(logprob_diff_mean=float(r.abs().mean()), logprob_diff_max=float(r.abs().max()))
            local.update(importance_stats(r, self.cfg.tis_cap))
        return local


class CrossEntropyLoss:
    """Supervised fine-tuning: the mean token cross-entropy of the samples' responses, whoever
    sampled them (off-policy distillation, the toy models' SFT)."""

    pack_rows = True

    def updates(self, trainer, cut: list[Cut]) -> dict[str, float]:
        return mean_stats([{**trainer.core.sft_step([b for b, _ in batches]), **cost} for batches, cost in cut])


class LogitDistillLoss:
    """Forward KL to the next-token distributions of the teacher the trainer holds (the logit
    distillation baseline; train/logit_distill.py), on the samples' own tokens."""

    pack_rows = False  # the distillation forward takes padded rows

    def updates(self, trainer, cut: list[Cut]) -> dict[str, float]:
        from megatron_zppo.train.logit_distill import KDMicroBatch

        kd = trainer.kd_teacher
        if kd is None:
            raise ValueError("the logit-distillation loss needs the trainer's teacher (method.name off_distill, "
                             "on_distill and logit_distill build one: methods.trainer_teacher)")
        per_update = []
        for batches, cost in cut:
            seqs = [b for b, _ in batches]
            items = [KDMicroBatch(b, h) for b, h in zip(seqs, trainer.core.teacher_hidden(kd.policy, seqs))]
            per_update.append({**trainer.core.kd_step(items, kd.logits, kd.criterion), **cost})
        return mean_stats(per_update)


def _old_logprobs(trainer, batches) -> list[torch.Tensor]:
    outputs = trainer.core.compute_logprobs([b for b, _ in batches])
    if not trainer.last_stage:  # only the last stage computes the loss, so only it needs them
        return [torch.zeros(b.tokens.shape[0], b.response_width) for b, _ in batches]
    return [lp.detach().float().cpu() for lp, _ in outputs]


def pad_rows(rows: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.float32)
    return out


def advantages(rows: Sequence[Sample | None], width: int) -> torch.Tensor:
    """[B] sequence advantages, or [B, T] when any sample carries per-token ones (distillation)."""
    if not any(s is not None and s.token_advantages is not None for s in rows):
        return torch.tensor([s.advantage if s else 0.0 for s in rows], dtype=torch.float32)
    per_token = [[] if s is None else s.token_advantages if s.token_advantages is not None
                 else [s.advantage] * len(s.response_ids) for s in rows]
    return pad_rows(per_token, width)


def mean_stats(per_update: list[dict]) -> dict[str, float]:
    keys = {k for s in per_update for k in s}
    out = {}
    for k in keys:
        vals = [s[k] for s in per_update if k in s]
        out[k] = max(vals) if k.endswith("_max") else min(vals) if k.endswith("_min") else sum(vals) / len(vals)
    return out
