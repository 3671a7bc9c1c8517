"""A mini-batch of `Sample` records as this data-parallel rank's Megatron micro-batches.

Two rules (see packing.py): fixed rows (``train.micro_batch_size``, samples dealt by stride, short
micro-batches filled with empty rows) or a token budget (``train.max_tokens_per_micro_batch``:
packed micro-batches, ranks balanced by tokens, empty micro-batches where a rank has fewer).
Every rank computes the same plan from the whole mini-batch, so no rank needs to ask another.
Under a budget, a micro-batch runs as one packed row (its sequences back to back, ``pack_rows``;
a vision-language model derives each sequence's multimodal positions from the row's cu_seqlens).
The fixed-rows path is padded to the rank's longest row by the trainer (one shape for the pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from megatron_zppo.images import vision_token_counts
from megatron_zppo.core.records import Sample
from megatron_zppo.train.logprobs import SequenceBatch
from megatron_zppo.train.packing import PlanCost, pack, plan_cost, stride_plan
from megatron_zppo.train.vision_batch import expand_images, expand_videos_of_rows


@dataclass(frozen=True)
class BatchRule:
    rows_per_micro: int  # the fixed-rows rule's micro-batch size
    budget: int | None  # the token budget; None: fixed rows
    max_seq_len: int  # the model's; a longer sample is an error
    pad_id: int = 0
    image_processor: object = None  # a vision-language student's, else None
    image_token_id: int | None = None
    vision_start_id: int | None = None
    # Videos: the student's video processor, tokenizer (for the frames' timestamp text) and
    # videos.VideoTokens; None: samples with videos are refused.
    video_processor: object = None
    tokenizer: object = None
    video_tokens: object = None
    # Under a budget: each micro-batch's sequences back to back in one row (no padding computed;
    # packed_sequences.py), else rows padded to the micro-batch's longest.
    pack_rows: bool = False


def _name(s: Sample) -> str:
    return f"sample {s.group_id!r}"


def sample_lengths(samples: Sequence[Sample], rule: BatchRule) -> list[int]:
    """Prompt + response tokens of each sample, each image placeholder counted as its vision tokens
    and each video placeholder as its timestamped frames."""
    out = []
    for s in samples:
        n = len(s.prompt_ids) + len(s.response_ids)
        if s.images and rule.image_processor is not None:
            n += sum(vision_token_counts(rule.image_processor, s.images)) - len(s.images)
        if s.videos and rule.video_processor is not None:
            from megatron_zppo.videos import video_inputs

            n += sum(map(len, video_inputs(rule.video_processor, rule.tokenizer, rule.video_tokens, s.videos)[1]))
            n -= len(s.videos)
        out.append(n)
    return out


def plan_for(samples: Sequence[Sample], rule: BatchRule, dp_size: int):
    """(the plan, its cost): which samples each rank's micro-batches hold, and what they compute."""
    lengths = sample_lengths(samples, rule)
    names = [_name(s) for s in samples]
    if rule.budget is None:  # the fixed-rows path as it always was (no length check of its own)
        plan = stride_plan(len(samples), dp_size, rule.rows_per_micro)
        return plan, plan_cost(lengths, plan, "rank", rule.rows_per_micro)
    plan = pack(lengths, rule.budget, dp_size, rule.max_seq_len, padded=not rule.pack_rows, names=names)
    return plan, plan_cost(lengths, plan, "none" if rule.pack_rows else "micro")


def rank_micro_batches(samples: Sequence[Sample], rule: BatchRule, dp_rank: int, dp_size: int
                       ) -> tuple[list[tuple[SequenceBatch, list[Sample | None]]], PlanCost]:
    """This rank's (micro-batch, its rows' samples; None for an empty row) and the plan's cost."""
    plan, cost = plan_for(samples, rule, dp_size)
    out = []
    for micro in plan.ranks[dp_rank]:
        rows: list[Sample | None] = [samples[i] for i in micro]
        if rule.budget is None:
            rows += [None] * (rule.rows_per_micro - len(rows))
        out.append((_build(rows or [None], rule), rows or [None]))
    return out, cost


def _build(rows: Sequence[Sample | None], rule: BatchRule) -> SequenceBatch:
    """Empty rows are one pad token with no response: the loss masks them out entirely."""
    prompts = [list(s.prompt_ids) if s else [rule.pad_id] for s in rows]
    responses = [list(s.response_ids) if s else [] for s in rows]
    names = [_name(s) if s else "filler" for s in rows]
    prompts, pixels, grid = expand_images(prompts, [s.images if s else () for s in rows], rule.image_processor,
                                          rule.image_token_id, names, rule.vision_start_id)
    prompts, video_pixels, video_grid = expand_videos_of_rows(prompts, [s.videos if s else () for s in rows],
                                                              rule.video_processor, rule.tokenizer, rule.video_tokens,
                                                              names)
    width = max(1, max(len(r) for r in responses))
    batch = SequenceBatch.from_lists(prompts, responses, rule.pad_id, width)
    packed = rule.budget is not None and rule.pack_rows
    return replace(batch, pixel_values=pixels, image_grid_thw=grid, pixel_values_videos=video_pixels,
                   video_grid_thw=video_grid, packed=packed)
