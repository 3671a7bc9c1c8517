"""Which samples of a mini-batch go into which micro-batch on which data-parallel rank.

Two rules, both pure functions of the samples' token lengths (prompt + response, image
placeholders counted as their expanded vision tokens), so every rank computes the same plan
without talking to the others:

- ``stride_plan`` is the fixed-rows rule (``train.micro_batch_size`` rows per micro-batch, samples
  dealt to ranks by stride). Its rows are padded to the longest row of the rank's mini-batch share,
  so one long-tailed sample makes a whole rank compute at its length.
- ``pack`` is the token-budget rule (``train.max_tokens_per_micro_batch``): samples go to ranks by
  longest-processing-time greedy (the longest unplaced sample to the rank with the fewest tokens),
  then each rank's samples are packed first-fit-decreasing into micro-batches whose cost stays
  within the budget. Sorting by length first also puts similar lengths together, which is what
  keeps per-micro-batch padding small. Every rank gets the same micro-batch count (Megatron's
  schedules run one count on all ranks; the short ranks get empty micro-batches the loss ignores).

A micro-batch's cost is what the trainer computes for it: ``rows x longest row`` when its rows
are padded to a common length (``padded=True``), the sum of the lengths when sequences are packed
into one row without padding.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

MicroBatch = tuple[int, ...]  # indices into the mini-batch's samples; () is an empty filler


@dataclass(frozen=True)
class PackingPlan:
    """``ranks[r][m]``: the sample indices of micro-batch ``m`` on data-parallel rank ``r``."""

    ranks: tuple[tuple[MicroBatch, ...], ...]

    @property
    def micro_batches_per_rank(self) -> int:
        return len(self.ranks[0])


@dataclass(frozen=True)
class PlanCost:
    real_tokens: int  # prompt + response tokens of the samples
    computed_tokens: int  # what the model runs on, padding included (summed over ranks)
    padding_efficiency: float  # real / computed
    dp_imbalance: float  # max / mean computed tokens per rank: the slowest rank sets the step's pace

    def as_stats(self) -> dict[str, float]:
        return {"real_tokens": float(self.real_tokens), "computed_tokens": float(self.computed_tokens),
                "padding_efficiency": self.padding_efficiency, "dp_imbalance": self.dp_imbalance}


def micro_batch_cost(lengths: Sequence[int], micro: MicroBatch, padded: bool) -> int:
    """Tokens the model runs on for one micro-batch; an empty filler is one pad token."""
    if not micro:
        return 1
    row_lengths = [lengths[i] for i in micro]
    return len(row_lengths) * max(row_lengths) if padded else sum(row_lengths)


def check_lengths(lengths: Sequence[int], max_seq_len: int, names: Sequence[str] | None = None) -> None:
    for i, n in enumerate(lengths):
        if n > max_seq_len:
            name = names[i] if names is not None else f"sample {i}"
            raise ValueError(f"{name}: {n} tokens (prompt + response, images expanded) exceed the model's maximum "
                             f"sequence length {max_seq_len}")


def pack(lengths: Sequence[int], budget: int, dp_size: int, max_seq_len: int, *, padded: bool = True,
         names: Sequence[str] | None = None) -> PackingPlan:
    """Token-balanced ranks, each cut into micro-batches of cost <= ``budget`` (a sample over the
    budget alone in its own); ``names`` label samples in the error for one over ``max_seq_len``."""
    if budget < 1 or dp_size < 1:
        raise ValueError(f"pack: budget and dp_size must be >= 1; got {budget}, {dp_size}")
    check_lengths(lengths, max_seq_len, names)
    shares = balance(lengths, dp_size)
    per_rank = [_first_fit_decreasing(share, lengths, budget, padded) for share in shares]
    count = max(1, max(len(m) for m in per_rank))
    if padded:  # the short ranks' filler slots can hold real rows instead, with less padding
        per_rank = [_least_padding(share, lengths, budget, count) or m for share, m in zip(shares, per_rank)]
    return PackingPlan(tuple(tuple(m) + ((),) * (count - len(m)) for m in per_rank))


def balance(lengths: Sequence[int], k: int) -> list[list[int]]:
    """Longest-processing-time greedy: max rank tokens <= mean + longest sample (list scheduling's
    bound) and <= 4/3 of the optimum. Ties go to the lower rank, so the plan is deterministic."""
    heap = [(0, r) for r in range(k)]
    shares: list[list[int]] = [[] for _ in range(k)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, r = heapq.heappop(heap)
        shares[r].append(i)
        heapq.heappush(heap, (load + lengths[i], r))
    return shares


def _first_fit_decreasing(share: Sequence[int], lengths: Sequence[int], budget: int, padded: bool) -> list[MicroBatch]:
    bins: list[list[int]] = []
    for i in sorted(share, key=lambda i: (-lengths[i], i)):
        for b in bins:
            # Longest first: a bin's first sample is its longest, so padded cost is rows x that.
            cost = (len(b) + 1) * lengths[b[0]] if padded else sum(lengths[j] for j in b) + lengths[i]
            if cost <= budget:
                b.append(i)
                break
        else:
            bins.append([i])
    return [tuple(b) for b in bins]


def _least_padding(share: Sequence[int], lengths: Sequence[int], budget: int, groups: int) -> list[MicroBatch]:
    """The split of the length-sorted ``share`` into at most ``groups`` consecutive micro-batches
    (each within the budget, or a lone sample) with the fewest padded tokens; [] if none fits.
    Exact dynamic programme over split points: a rank holds tens of samples, so it is cheap."""
    order = sorted(share, key=lambda i: (-lengths[i], i))
    n, inf = len(order), float("inf")
    # best[g][j]: least padded cost of the first j samples in g micro-batches; cut[g][j]: the last split.
    best = [[inf] * (n + 1) for _ in range(groups + 1)]
    cut = [[0] * (n + 1) for _ in range(groups + 1)]
    best[0][0] = 0
    for g in range(1, groups + 1):
        for j in range(1, n + 1):
            for i in range(j):
                cost = (j - i) * lengths[order[i]]  # descending: the group's first sample is its longest
                if (cost <= budget or j - i == 1) and best[g - 1][i] + cost < best[g][j]:
                    best[g][j], cut[g][j] = best[g - 1][i] + cost, i
    g = min(range(groups + 1), key=lambda g: (best[g][n], g))
    if best[g][n] == inf or n == 0:
        return []
    out, j = [], n
    while g:
        i = cut[g][j]
        out.append(tuple(order[i:j]))
        j, g = i, g - 1
    return out[::-1]


def stride_plan(n_samples: int, dp_size: int, rows_per_micro: int) -> PackingPlan:
    """The fixed-rows rule: rank r takes samples r, r + dp, ...; ``rows_per_micro`` per micro-batch.
    A short last micro-batch is filled with empty rows by the trainer (not listed here)."""
    ranks = []
    for r in range(dp_size):
        mine = list(range(r, n_samples, dp_size))
        ranks.append(tuple(tuple(mine[i : i + rows_per_micro]) for i in range(0, len(mine), rows_per_micro)) or ((),))
    return PackingPlan(tuple(ranks))


def plan_cost(lengths: Sequence[int], plan: PackingPlan, pad_to: str, rows_per_micro: int = 1) -> PlanCost:
    """Cost of ``plan`` when rows are padded to the rank's longest (``"rank"``, micro-batches filled
    to ``rows_per_micro`` rows: the fixed-rows trainer path), to their micro-batch's longest
    (``"micro"``), or not padded at all (``"none"``: sequences packed)."""
    if pad_to not in ("rank", "micro", "none"):
        raise ValueError(f"plan_cost: pad_to {pad_to!r} unknown; expected rank, micro or none")
    per_rank = []
    for micros in plan.ranks:
        if pad_to == "rank":
            rows = max(rows_per_micro, max(len(m) for m in micros))
            longest = max([lengths[i] for m in micros for i in m], default=1)
            per_rank.append(len(micros) * rows * longest)
        else:
            per_rank.append(sum(micro_batch_cost(lengths, m, pad_to == "micro") for m in micros))
    real = sum(lengths[i] for micros in plan.ranks for m in micros for i in m)
    computed = sum(per_rank)
    mean = computed / len(per_rank)
    return PlanCost(real, computed, real / computed if computed else 1.0, max(per_rank) / mean if mean else 1.0)
