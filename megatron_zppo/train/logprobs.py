"""Per-token log-probs (and entropy) of response tokens under a Megatron GPTModel.

The model runs on whole sequences (prompt + response, right-padded), but logits are computed only
at response positions and only ``chunk_size`` positions at a time, through GPTModel's
``output_processor`` hook. With gradients on, each chunk is recomputed in backward
(activation checkpointing), so B x T x V logits never exist at once. Under tensor parallelism
the vocabulary stays sharded: log-probs come from Megatron's ``vocab_parallel_cross_entropy``
and the entropy from two all-reduced partial sums.

Everything returned is response-aligned: position ``t`` of row ``b`` is the ``t``-th response
token of sample ``b``; positions past its response length are 0 and masked out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint


@dataclass
class SequenceBatch:
    """Prompt + response token rows, right-padded to a common length ``S``.

    For a vision-language model, the prompts' image placeholders are already expanded to one token
    per vision embedding, and ``pixel_values``/``image_grid_thw`` hold the images of all rows in
    the order their placeholders appear (row by row): the HF image processor's output. Videos
    likewise: each placeholder already replaced by its frames' timestamps and vision tokens, and
    ``pixel_values_videos``/``video_grid_thw`` the video processor's output.
    """

    tokens: torch.Tensor  # [B, S] int64
    prompt_lens: torch.Tensor  # [B]
    response_lens: torch.Tensor  # [B]
    response_width: int  # T: width of response-aligned outputs (>= max response length)
    pixel_values: torch.Tensor | None = None  # [patches, channels * temporal * patch * patch]
    image_grid_thw: torch.Tensor | None = None  # [images, 3]
    pixel_values_videos: torch.Tensor | None = None  # [patches, channels * temporal * patch * patch]
    video_grid_thw: torch.Tensor | None = None  # [videos, 3]
    # Run the model on the rows back to back in one packed (THD) row, no padding computed; outputs
    # stay response-aligned [B, T] (see packed_sequences.py).
    packed: bool = False

    def __post_init__(self) -> None:
        # The first response token is predicted from the last prompt token, so one must exist.
        if int(self.prompt_lens.min()) < 1:
            raise ValueError("every sample needs a prompt of at least one token")
        if int(self.response_lens.max()) > self.response_width:
            raise ValueError(f"response_width={self.response_width} < longest response")

    @classmethod
    def from_lists(cls, prompts, responses, pad_id: int = 0, response_width: int | None = None):
        rows = [list(p) + list(r) for p, r in zip(prompts, responses, strict=True)]
        width = max(len(r) for r in responses) if response_width is None else response_width
        tokens = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return cls(
            tokens=tokens,
            prompt_lens=torch.tensor([len(p) for p in prompts]),
            response_lens=torch.tensor([len(r) for r in responses]),
            response_width=width,
        )

    def response_mask(self) -> torch.Tensor:
        """[B, T] bool: True where a real response token sits."""
        steps = torch.arange(self.response_width, device=self.tokens.device)
        return steps[None, :] < self.response_lens.to(self.tokens.device)[:, None]

    def to(self, device) -> "SequenceBatch":
        return dataclasses.replace(
            self, tokens=self.tokens.to(device), prompt_lens=self.prompt_lens.to(device),
            response_lens=self.response_lens.to(device),
            pixel_values=None if self.pixel_values is None else self.pixel_values.to(device),
            image_grid_thw=None if self.image_grid_thw is None else self.image_grid_thw.to(device),
            pixel_values_videos=None if self.pixel_values_videos is None else self.pixel_values_videos.to(device),
            video_grid_thw=None if self.video_grid_thw is None else self.video_grid_thw.to(device),
        )  # fmt: skip

    def model_inputs(self) -> dict:
        """Keyword arguments for the model's forward besides the tokens: the images and videos, if any."""
        out = {}
        if self.pixel_values is not None:
            out |= {"pixel_values": self.pixel_values, "image_grid_thw": self.image_grid_thw}
        if self.pixel_values_videos is not None:
            out |= {"pixel_values_videos": self.pixel_values_videos, "video_grid_thw": self.video_grid_thw}
        return out


@dataclass(frozen=True)
class LogprobRequest:
    """What the output processor needs besides the hidden states (GPTModel passes it through)."""

    batch: SequenceBatch
    vocab_size: int  # the tokenizer's; Megatron's padded output rows beyond it are excluded
    chunk_size: int = 512
    with_entropy: bool = False
    row: object = None  # the batch as one packed row (packed_sequences.PackedRow), if batch.packed


def _response_positions(batch: SequenceBatch, row=None) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, B] indices of the hidden state that predicts each response token, and of the token:
    along each row's sequence dim, or along the one packed row when ``row`` is given."""
    steps = torch.arange(batch.response_width, device=batch.tokens.device)[:, None]
    first = batch.prompt_lens.to(steps.device)
    if row is not None:
        first = first + row.starts.to(steps.device)
    last = (batch.tokens.shape[1] if row is None else row.tokens.shape[1]) - 1
    target_pos = (first[None, :] + steps).clamp(max=last)
    # Clamped positions only occur past a row's response and are masked out afterwards.
    return (target_pos - 1).clamp(min=0), target_pos


def _mask_padded_vocab(logits: torch.Tensor, vocab_size: int, tp_rank: int) -> torch.Tensor:
    local = logits.shape[-1]
    valid = vocab_size - tp_rank * local
    if valid >= local:
        return logits
    # A finite minimum, not -inf: the entropy multiplies exp(logit) by logit, and 0 * -inf is NaN.
    columns = torch.arange(local, device=logits.device)
    return logits.masked_fill(columns >= valid, torch.finfo(logits.dtype).min)


def _vocab_parallel_entropy(logits: torch.Tensor, tp_group) -> torch.Tensor:
    """Entropy of softmax(logits) when the last dim is one TP shard of the vocabulary.

    H = log S - U / S with S = sum exp(l - m), U = sum exp(l - m) (l - m), m the global max.
    S and U are summed across shards with Megatron's all-reduce whose backward is the identity,
    which is the correct gradient for a sum of per-shard partials.
    """
    from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

    global_max = logits.detach().amax(dim=-1)
    if dist.get_world_size(tp_group) > 1:
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=tp_group)
    shifted = logits - global_max.unsqueeze(-1)
    exp = shifted.exp()
    sum_exp = reduce_from_tensor_model_parallel_region(exp.sum(dim=-1), group=tp_group)
    sum_exp_shifted = reduce_from_tensor_model_parallel_region((exp * shifted).sum(dim=-1), group=tp_group)
    return sum_exp.log() - sum_exp_shifted / sum_exp


def _chunk_stats(hidden, targets, output_layer, output_weight, vocab_size: int, with_entropy: bool):
    """Log-probs [t, B] and entropy [t, B] (or an empty tensor) for one chunk of positions."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    tp_group = output_layer.tp_group
    logits, _ = output_layer(hidden, weight=output_weight)
    logits = _mask_padded_vocab(logits.float(), vocab_size, dist.get_rank(tp_group))
    entropy = _vocab_parallel_entropy(logits, tp_group) if with_entropy else logits.new_empty(0)
    # vocab_parallel_cross_entropy shifts its input in place; keep the entropy's input intact.
    ce_input = logits.clone() if with_entropy else logits
    logprobs = -vocab_parallel_cross_entropy(ce_input, targets, tp_group=tp_group)
    return logprobs, entropy


def response_logprobs_processor(*, hidden_states, output_layer, output_weight, context: LogprobRequest, **_):
    """GPTModel ``output_processor``: response-aligned (logprobs [B, T], entropy [B, T] | None)."""
    batch, row = context.batch, context.row
    hidden_pos, target_pos = _response_positions(batch, row)  # [T, B]
    if row is None:
        hidden = hidden_states.gather(0, hidden_pos.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))
        targets = batch.tokens.t().gather(0, target_pos)
    else:  # hidden_states [L, 1, H] of the packed row
        hidden, targets = hidden_states[hidden_pos, 0], row.tokens[0, target_pos]
    logprobs, entropies = [], []
    for start in range(0, batch.response_width, context.chunk_size):
        chunk = slice(start, start + context.chunk_size)
        args = (hidden[chunk], targets[chunk], output_layer, output_weight)
        args += (context.vocab_size, context.with_entropy)
        if torch.is_grad_enabled():
            # Recompute this chunk's logits in backward instead of keeping them alive.
            lp, ent = checkpoint(_chunk_stats, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_stats(*args)
        logprobs.append(lp)
        entropies.append(ent)
    mask = batch.response_mask()
    logprobs = torch.cat(logprobs).t() * mask
    entropy = torch.cat(entropies).t() * mask if context.with_entropy else None
    return logprobs, entropy


def forward_response_logprobs(model, request: LogprobRequest):
    """Run ``model`` (a GPTModel chunk, possibly DDP/Float16-wrapped) on ``request.batch``.

    Returns (logprobs, entropy) on the last pipeline stage and the hidden states on other stages.
    """
    batch = request.batch
    if batch.packed:
        from megatron_zppo.train.packed_sequences import packed_row

        row = packed_row(batch.tokens, batch.prompt_lens + batch.response_lens)
        return model(row.tokens, row.position_ids, None, packed_seq_params=row.params,
                     output_processor=response_logprobs_processor,
                     output_processor_context=dataclasses.replace(request, row=row),
                     # A VL model derives each sequence's multimodal positions from cu_seqlens itself.
                     **batch.model_inputs())
    tokens = request.batch.tokens
    position_ids = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return model(
        tokens,
        position_ids,  # a VL model derives its multimodal positions from the tokens and images instead
        None,  # causal attention; right padding never leaks into earlier positions
        output_processor=response_logprobs_processor,
        output_processor_context=request,
        **request.batch.model_inputs(),
    )
