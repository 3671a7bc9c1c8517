"""Per-sample advantages from per-sample rewards and group membership.

Every estimator works on flat tensors: `rewards[i]` and `group_index[i]` (0..n_groups-1) for
sample i, so plain, BCQ and NCQ groups of one question are just different indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_zppo.core.records import Group


def group_index(groups: list[Group]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten groups into (rewards, group_index) tensors, in sample order."""
    rewards, index = [], []
    for gi, g in enumerate(groups):
        rewards += g.rewards
        index += [gi] * len(g.samples)
    return torch.tensor(rewards, dtype=torch.float64), torch.tensor(index, dtype=torch.long)


def check_binary(rewards: torch.Tensor) -> None:
    bad = rewards[(rewards != 0) & (rewards != 1)]
    if bad.numel():
        raise ValueError(f"binary reward mode: rewards must be 0 or 1, got {bad[0].item()!r}")


def _group_stats(rewards: torch.Tensor, index: torch.Tensor):
    n = int(index.max()) + 1 if index.numel() else 0
    count = torch.zeros(n, dtype=rewards.dtype).index_add_(0, index, torch.ones_like(rewards))
    mean = torch.zeros(n, dtype=rewards.dtype).index_add_(0, index, rewards) / count
    centred = rewards - mean[index]
    sq = torch.zeros(n, dtype=rewards.dtype).index_add_(0, index, centred**2)
    return count, centred, sq


def grpo_advantages(
    rewards: torch.Tensor, index: torch.Tensor, normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO: reward minus the group mean, optionally divided by the group's own std (unbiased)."""
    count, centred, sq = _group_stats(rewards, index)
    if not normalize_std:
        return centred
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return centred / (std[index] + eps)


def reinforce_pp_advantages(rewards: torch.Tensor, index: torch.Tensor, eps: float = 1e-6,
                            with_trivial: bool = False) -> torch.Tensor:
    """The paper's two-step REINFORCE++ variant.

    (a) subtract the group mean; (b) divide by one standard deviation taken over the samples of
    non-trivial groups only (groups whose rewards are not all equal). Trivial groups have zero
    centred reward and stay zero; counting their zeros in the statistic (`with_trivial`, the
    paper's "normalise with zero groups" ablation) shrinks that std by sqrt(f), f the share of
    samples in non-trivial groups, so every advantage grows by 1/sqrt(f) and depends on how many
    trivial groups happen to share the batch. After (a) each group sums to zero, so the batch mean over the samples
    counted is zero and the std is their root mean square (population form).
    """
    if rewards.numel() == 0:
        return torch.zeros_like(rewards)
    _, centred, _ = _group_stats(rewards, index)
    n = int(index.max()) + 1
    hi = torch.full((n,), -torch.inf, dtype=rewards.dtype).scatter_reduce_(0, index, rewards, "amax")
    lo = torch.full((n,), torch.inf, dtype=rewards.dtype).scatter_reduce_(0, index, rewards, "amin")
    nontrivial = (hi > lo)[index]
    if not nontrivial.any():
        return torch.zeros_like(rewards)
    std = (centred if with_trivial else centred[nontrivial]).pow(2).mean().sqrt()
    return torch.where(nontrivial, centred / (std + eps), torch.zeros_like(centred))


def centred_advantages(rewards: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reward minus its group mean, no scaling (the paper's "no normalisation" ablation)."""
    return _group_stats(rewards, index)[1]


# advantage.normalize -> the estimator. The first three are the paper's ablation (its default
# first); `group` is GRPO's per-group std, which the paper does not run.
NORMALIZATIONS = {
    "excluding_zero": reinforce_pp_advantages,
    "including_zero": lambda r, i: reinforce_pp_advantages(r, i, with_trivial=True),
    "none": centred_advantages,
    "group": grpo_advantages,
}


@dataclass(frozen=True)
class AdvantageConfig:
    # reward minus its group mean, then divided by the std over the non-trivial groups' samples
    # (excluding_zero, the paper's), over every sample (including_zero), or not divided (none); or
    # GRPO's per-group std (group, which the paper does not run)
    normalize: str = "excluding_zero"

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"advantage.normalize {self.normalize!r} unknown; expected one of {list(NORMALIZATIONS)}")


def assign_advantages(groups: list[Group], normalize: str = "excluding_zero", binary: bool = True) -> torch.Tensor:
    """Compute advantages for all samples of `groups` and store them on the samples."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"advantage.normalize {normalize!r} unknown; expected one of {list(NORMALIZATIONS)}")
    if not groups:
        return torch.zeros(0, dtype=torch.float64)
    rewards, index = group_index(groups)
    if binary:
        check_binary(rewards)
    adv = NORMALIZATIONS[normalize](rewards, index)
    for s, a in zip((s for g in groups for s in g.samples), adv.tolist()):
        s.advantage = a
    return adv
