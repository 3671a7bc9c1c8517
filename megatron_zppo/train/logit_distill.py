"""Logit distillation baseline: the teacher runs inside the trainer, and the student is pulled
towards the teacher's whole next-token distribution (or its top-k) on the student's own samples.

The divergence is nvidia-modelopt's Megatron distillation loss: `LogitsKLLoss` (forward KL,
KL(teacher || student), vocabulary-parallel under TP) or `TopKLogitsKLLoss` (the teacher's global
top-k entries only); or the generalised Jensen-Shannon divergence (`LogitsJSDLoss` below, the
paper's off- and on-policy distillation rows), written like modelopt's KL so it is
vocabulary-parallel too. Like the log-prob path (logprobs.py), logits exist only at response positions
and only `chunk_size` positions at a time, for both models: the teacher's forward returns its final
hidden states at response positions, and its output layer is applied chunk by chunk inside the
student's output processor, with the student's chunk recomputed in backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from megatron_zppo.train.logprobs import SequenceBatch, _response_positions


@dataclass(frozen=True)
class LogitTeacher:
    """The teacher the trainer holds for a distillation baseline, and the divergence to it."""

    hf_path: str
    temperature: float = 1.0
    top_k: int = 0  # 0: the whole distribution (forward_kl only)
    divergence: str = "forward_kl"  # forward_kl | jsd
    beta: float = 0.5  # jsd: the teacher's weight in the mixture


@dataclass
class KDMicroBatch:
    sequences: SequenceBatch
    teacher_hidden: torch.Tensor | None  # [T, B, H_teacher] on the last pipeline stage, else None

    def to(self, device) -> KDMicroBatch:
        hidden = None if self.teacher_hidden is None else self.teacher_hidden.to(device)
        return KDMicroBatch(self.sequences.to(device), hidden)


@dataclass(frozen=True)
class KDRequest:
    """What the student's output processor needs besides its own hidden states."""

    batch: SequenceBatch
    vocab_size: int
    teacher_hidden: torch.Tensor
    teacher_logits: Callable[[torch.Tensor], torch.Tensor]  # teacher hidden [t, B, H] -> logits shard
    criterion: torch.nn.Module  # a modelopt Megatron distillation loss
    chunk_size: int


def make_criterion(model_config, temperature: float, top_k: int, divergence: str = "forward_kl",
                   beta: float = 0.5) -> torch.nn.Module:
    """The per-token divergence for this (TP-sharded) model: modelopt's forward KL (top_k 0 = the full
    distribution), or the JSD below."""
    from modelopt.torch.distill.plugins.megatron import LogitsKLLoss, TopKLogitsKLLoss

    if divergence == "jsd":
        if top_k:
            raise ValueError(f"the JSD takes the teacher's whole distribution; top_k={top_k} is for forward_kl only")
        return jsd_loss_class()(model_config, temperature, beta)
    if divergence != "forward_kl":
        raise ValueError(f"distillation divergence {divergence!r} unknown; expected forward_kl or jsd")
    if top_k:
        return TopKLogitsKLLoss(model_config, temperature=temperature, top_k=top_k)
    return LogitsKLLoss(model_config, temperature=temperature)


def jsd_loss_class():
    """`LogitsJSDLoss`, defined on first use: modelopt is imported only by runs that distil."""
    from modelopt.torch.distill.plugins.megatron import BaseLoss
    from torch.distributed import nn as dist_nn

    from megatron.core import parallel_state

    from megatron_zppo.core.baselines import token_jsd

    class LogitsJSDLoss(BaseLoss):
        """Per-token JSD_beta(teacher, student) [b, s] of two logits tensors [s, b, v-shard]."""

        def __init__(self, model_config, temperature: float = 1.0, beta: float = 0.5):
            super().__init__(model_config)
            self.temperature, self.beta = temperature, beta

        def forward(self, predictions, targets):
            predictions, targets = self.pre_forward(predictions, targets)
            student = predictions.float() / self.temperature
            teacher = targets.float() / self.temperature
            if self._config.tensor_model_parallel_size > 1:
                group = parallel_state.get_tensor_model_parallel_group()
                student, teacher = _log_softmax(student, group, dist_nn), _log_softmax(teacher, group, dist_nn)
            else:
                student, teacher = student.log_softmax(-1), teacher.log_softmax(-1)
            # this shard's part of the sum over the vocabulary; the caller adds the shards' parts
            return self.post_forward(token_jsd(student, teacher, self.beta), tp_reduce=True)

    return LogitsJSDLoss


def _log_softmax(logits: torch.Tensor, group, dist_nn) -> torch.Tensor:
    """Log-softmax over a vocabulary split across `group`: the normaliser is summed over the shards
    through an all-reduce whose backward sums the shards' gradients (each rank's loss differs)."""
    top = logits.detach().max(dim=-1, keepdim=True).values
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    shifted = logits - top
    return shifted - dist_nn.functional.all_reduce(shifted.exp().sum(-1, keepdim=True), group=group).log()


def response_hidden_processor(*, hidden_states, context: SequenceBatch, **_):
    """GPTModel ``output_processor`` for the teacher: final hidden states at the positions that
    predict each response token, [T, B, H]."""
    hidden_pos, _ = _response_positions(context)
    return hidden_states.gather(0, hidden_pos.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))


def output_logits_fn(model_chunk) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden -> logits (this rank's vocabulary shard) through the chunk's output layer, with tied
    embeddings where the model ties them."""
    from megatron.core.utils import unwrap_model

    gpt = unwrap_model(model_chunk)
    gpt = getattr(gpt, "language_model", gpt)  # a vision-language model's text half holds the output layer
    weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out, _ = gpt.output_layer(hidden, weight=weight)
        return out

    return logits


def _chunk_kl(hidden, teacher_hidden, output_layer, output_weight, ctx: KDRequest) -> torch.Tensor:
    """Per-token KL(teacher || student) [B, t] for one chunk of response positions."""
    from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

    tp_group = output_layer.tp_group
    student, _ = output_layer(hidden, weight=output_weight)
    with torch.no_grad():
        teacher = ctx.teacher_logits(teacher_hidden)
    # Megatron pads the vocabulary to a multiple of its shard size: cut the padding columns off
    # (modelopt's loss takes shards of unequal width) rather than fill them with huge negatives.
    keep = ctx.vocab_size - dist.get_rank(tp_group) * student.shape[-1]
    loss, tp_reduce, _ = ctx.criterion(student[..., :keep].float(), teacher[..., :keep].float())
    if tp_reduce:
        # modelopt leaves the sum of per-shard partial KLs to the caller; the all-reduce's backward
        # is the identity, and the softmax normalisers inside the loss carry the cross-shard terms.
        return reduce_from_tensor_model_parallel_region(loss, group=tp_group)
    tp = dist.get_world_size(tp_group)
    if tp > 1:
        # The top-k loss is the same global value on every TP rank, built through an all-gather
        # whose backward sums the ranks' gradients: tp times the true gradient (measured in
        # tests/train/test_logit_distill.py). Keep the value, scale the gradient by 1/tp.
        return loss / tp + (loss - loss / tp).detach()
    return loss


def kd_processor(*, hidden_states, output_layer, output_weight, context: KDRequest, **_):
    """GPTModel ``output_processor`` for the student: per-token forward KL [B, T], 0 off the response."""
    batch = context.batch
    hidden_pos, _ = _response_positions(batch)
    hidden = hidden_states.gather(0, hidden_pos.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))
    pieces = []
    for start in range(0, batch.response_width, context.chunk_size):
        chunk = slice(start, start + context.chunk_size)
        args = (hidden[chunk], context.teacher_hidden[chunk], output_layer, output_weight, context)
        pieces.append(checkpoint(_chunk_kl, *args, use_reentrant=False) if torch.is_grad_enabled()
                      else _chunk_kl(*args))
    return torch.cat(pieces, dim=1) * batch.response_mask()


def forward_teacher_hidden(model, batch: SequenceBatch):
    tokens = batch.tokens
    position_ids = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return model(tokens, position_ids, None, output_processor=response_hidden_processor,
                 output_processor_context=batch, **batch.model_inputs())


def forward_kd(model, request: KDRequest):
    tokens = request.batch.tokens
    position_ids = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return model(tokens, position_ids, None, output_processor=kd_processor, output_processor_context=request,
                 **request.batch.model_inputs())
