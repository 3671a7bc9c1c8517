"""The policy loss: PPO clipped surrogate with asymmetric clip and dual clip, no KL by default.

Works on response-aligned token tensors of shape [B, T] with a 0/1 `mask` over real response
tokens. Micro-batching and data parallelism split a mini-batch, so the caller passes
`normalizer`, the token (or sequence) count of the whole mini-batch: each micro-batch's loss is
then its share of the mini-batch mean, and summing the shares gives exactly that mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch

from megatron_zppo.config_io import Range

AGGREGATIONS = ("token_mean", "seq_mean")
KL_ESTIMATORS = ("k1", "k2", "k3")
TIS_LEVELS = ("token", "sequence", "geometric")
TIS_MODES = ("truncate", "mask")


@dataclass(frozen=True)
class LossConfig:
    eps_low: Annotated[float, Range(ge=0, lt=1)] = 0.20  # PPO clip: ratio >= 1 - eps_low
    eps_high: Annotated[float, Range(ge=0)] = 0.28  # PPO clip: ratio <= 1 + eps_high (clip-higher)
    dual_clip_c: Annotated[float | None, Range(gt=1)] = 10.0  # lower bound c*A on the objective for A < 0; None = off
    aggregation: str = "token_mean"  # mean over the mini-batch's tokens, or of per-sequence means
    kl_coef: Annotated[float, Range(ge=0)] = 0.0  # weight of a KL penalty to reference log-probs; the paper uses none
    kl_estimator: str = "k3"  # Schulman's estimator of KL(policy || reference), if kl_coef > 0
    tis_cap: Annotated[float | None, Range(gt=0)] = None  # truncated importance weight trainer/rollout-engine; None = off
    # the weight's unit: each token's own ratio, a sequence's product of ratios, or their geometric mean
    tis_level: str = "token"
    # truncate: a weight above tis_cap is cut to it; mask: a token (sequence) whose weight is above it is left out
    tis_mode: str = "truncate"
    check_finite: bool = True  # a NaN/inf input stops the step, naming the tensor

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"loss.aggregation {self.aggregation!r} unknown; expected one of {AGGREGATIONS}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"loss.kl_estimator {self.kl_estimator!r} unknown; expected one of {KL_ESTIMATORS}")
        if self.tis_level not in TIS_LEVELS:
            raise ValueError(f"loss.tis_level {self.tis_level!r} unknown; expected one of {TIS_LEVELS}")
        if self.tis_mode not in TIS_MODES:
            raise ValueError(f"loss.tis_mode {self.tis_mode!r} unknown; expected one of {TIS_MODES}")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens (Schulman's k1/k2/k3)."""
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    return torch.exp(log_r) - log_r - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str, normalizer: float | None) -> torch.Tensor:
    if how == "token_mean":
        denom = mask.sum() if normalizer is None else normalizer
        return (per_token * mask).sum() / denom
    seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    denom = mask.shape[0] if normalizer is None else normalizer
    return seq.sum() / denom


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    *,
    rollout_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns (loss, stats). `advantages` is [B] (one per sequence) or [B, T]."""
    if cfg.check_finite:
        _check_finite(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages,
                      rollout_logprobs=rollout_logprobs, ref_logprobs=ref_logprobs)
    mask = mask.to(logprobs.dtype)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high)
    per_token = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    dual = torch.zeros_like(was_clipped)
    if cfg.dual_clip_c is not None:
        bound = -adv * cfg.dual_clip_c
        dual = (adv < 0) & (per_token > bound)
        per_token = torch.where(dual, bound, per_token)
    stats = {}
    if cfg.tis_cap is not None:
        if rollout_logprobs is None:
            raise ValueError("loss.tis_cap is set but no rollout_logprobs were given")
        weight, beyond = importance_weights(old_logprobs, rollout_logprobs, mask, cfg)
        per_token = per_token * weight
        stats["tis_weight_mean"] = _masked_mean(weight, mask)
        stats["tis_beyond_cap_frac"] = _masked_mean(beyond.to(mask.dtype), mask)
    if cfg.kl_coef:
        if ref_logprobs is None:
            raise ValueError("loss.kl_coef is non-zero but no ref_logprobs were given")
        kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator)
        per_token = per_token + cfg.kl_coef * kl
        stats["kl"] = _masked_mean(kl.detach(), mask)
    loss = aggregate(per_token, mask, cfg.aggregation, normalizer)
    with torch.no_grad():
        stats["clip_frac"] = _masked_mean(was_clipped.to(mask.dtype), mask)
        stats["dual_clip_frac"] = _masked_mean(dual.to(mask.dtype), mask)
        stats["approx_kl"] = _masked_mean(0.5 * log_ratio.detach() ** 2, mask)
        real = mask > 0
        r = ratio.detach()
        stats["ratio_max"] = torch.where(real, r, torch.full_like(r, -torch.inf)).max()
        stats["ratio_min"] = torch.where(real, r, torch.full_like(r, torch.inf)).min()
        if entropy is not None:
            stats["entropy"] = _masked_mean(entropy.detach(), mask)
    return loss, stats


def importance_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor,
                       cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The off-policy correction: weights proximal / behaviour policy (the trainer's log-probs
    before the update over the engine's that sampled the tokens), per token, or one per sequence
    (the product of its tokens' ratios, or their geometric mean) given to each of its tokens; above
    `tis_cap` cut to it or zeroed (`tis_mode`). Returns (weights [B, T], which were above the cap).
    Computed in log space, so a long sequence's product does not overflow before the cap."""
    log_w = ((old_logprobs - rollout_logprobs) * mask).detach()
    if cfg.tis_level != "token":
        log_w = log_w.sum(-1, keepdim=True)
        if cfg.tis_level == "geometric":
            log_w = log_w / mask.sum(-1, keepdim=True).clamp(min=1)
        log_w = log_w.expand_as(old_logprobs)
    log_cap = math.log(cfg.tis_cap)
    beyond = log_w > log_cap
    weight = torch.exp(log_w.clamp(max=log_cap))
    if cfg.tis_mode == "mask":
        weight = torch.where(beyond, torch.zeros_like(weight), weight)
    return weight, beyond


def importance_stats(log_ratio: torch.Tensor, cap: float | None) -> dict[str, float]:
    """Importance ratios proximal / behaviour policy (the trainer's recomputed log-probs over the
    engine's) of real response tokens, `log_ratio` 1-D: what loss.tis_cap truncates. With
    run.overlap=one_step the engine's weights are one version behind, so these move away from 1."""
    r = torch.exp(log_ratio.double())
    out = {"is_ratio_mean": float(r.mean()), "is_ratio_max": float(r.max()), "is_ratio_min": float(r.min())}
    if cap is not None:
        out["is_ratio_capped_frac"] = float((r > cap).double().mean())
    return out


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _check_finite(**tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and not torch.isfinite(t).all():
            idx = (~torch.isfinite(t)).nonzero()[0].tolist()
            raise ValueError(f"policy_loss: {name} has non-finite value {t[tuple(idx)].item()!r} at index {idx}")
