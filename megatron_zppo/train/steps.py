"""One optimiser step of the policy on Megatron: PPO (the ZPPO policy update), supervised CE, or
logit distillation from a teacher model held by the trainer (a baseline).

A step takes a mini-batch already split into equal-shape micro-batches, runs Megatron's
forward/backward schedule over them (pipeline-parallel or not), and applies one AdamW update
through Megatron's (distributed) optimizer.

Loss normalisation: every micro-batch loss is divided by the token (or sequence) count of the
*whole* mini-batch across data-parallel ranks, so summing the micro-batch losses over all ranks
gives the mini-batch mean. Megatron is therefore told not to average anything itself
(``calculate_per_token_loss``, set in model.py, makes DDP sum gradients across DP ranks and stops
the schedule dividing by the number of micro-batches), and the model-grad finaliser below is
called without a token count so it does not rescale the gradients a second time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from megatron_zppo.core.loss import LossConfig, policy_loss
from megatron_zppo.train.logit_distill import KDMicroBatch, KDRequest, forward_kd, forward_teacher_hidden
from megatron_zppo.train.logprobs import LogprobRequest, SequenceBatch, forward_response_logprobs
from megatron_zppo.train.model import Policy


@dataclass
class PPOMicroBatch:
    """One micro-batch of the policy update; all [B, T] tensors are response-aligned."""

    sequences: SequenceBatch
    old_logprobs: torch.Tensor  # [B, T] under the policy that produced the rollouts (trainer side)
    advantages: torch.Tensor  # [B]
    rollout_logprobs: torch.Tensor | None = None  # [B, T] from the rollout engine, for TIS
    ref_logprobs: torch.Tensor | None = None  # [B, T] under the reference policy, for a KL term

    def to(self, device) -> "PPOMicroBatch":
        def move(t):
            return None if t is None else t.to(device)

        return PPOMicroBatch(
            self.sequences.to(device), move(self.old_logprobs), move(self.advantages),
            move(self.rollout_logprobs), move(self.ref_logprobs),
        )  # fmt: skip


def _finalize_grads_without_token_scaling(model, num_tokens, **kwargs):
    """DP reduction plus the TP all-reduce of replicated q/k-norm grads, but no 1/num_tokens."""
    from megatron.core.distributed import finalize_model_grads

    finalize_model_grads(model, None, **kwargs)


def _device() -> torch.device:
    """Batches are built on CPU; the model lives on the current GPU when there is one."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _pad_to_length(batch: SequenceBatch, length: int) -> SequenceBatch:
    pad = length - batch.tokens.shape[1]
    if pad == 0:
        return batch
    tokens = torch.nn.functional.pad(batch.tokens, (0, pad))  # right padding is never attended to
    return dataclasses.replace(batch, tokens=tokens)


class PolicyTrainer:
    """Owns the optimiser step for one policy; the loss itself is a pure function passed in.

    All ranks of a tensor/pipeline-parallel group must pass the same micro-batches; each
    data-parallel rank passes its own share of the mini-batch, and every rank the same number.
    With ``variable_shapes`` (packed micro-batches), micro-batches may differ in rows and length and
    each runs at its own shape (Megatron's pipeline then sends each activation's shape ahead of it);
    otherwise all share one row count and are padded to the longest.
    """

    def __init__(
        self, policy: Policy, optimizer, scheduler, *, chunk_size: int = 512, with_entropy: bool = True,
        variable_shapes: bool = False,
    ):
        from megatron.core import parallel_state
        from megatron.core.utils import get_model_config

        self.policy, self.optimizer, self.scheduler = policy, optimizer, scheduler
        self.chunk_size, self.with_entropy, self.variable_shapes = chunk_size, with_entropy, variable_shapes
        self.dp_group = parallel_state.get_data_parallel_group()
        config = get_model_config(policy.chunks[0])
        config.finalize_model_grads_func = _finalize_grads_without_token_scaling
        config.grad_scale_func = optimizer.scale_loss

    def ppo_step(
        self, micro_batches: Sequence[PPOMicroBatch], loss_cfg: LossConfig, loss_fn: Callable = policy_loss
    ) -> dict:
        """One policy update over this rank's micro-batches of the mini-batch."""
        per_sequence = loss_cfg.aggregation == "seq_mean"
        normalizer = self._global_count([mb.sequences for mb in micro_batches], per_sequence)

        def loss_func(mb: PPOMicroBatch, output):
            logprobs, entropy = output
            mask = mb.sequences.response_mask()
            loss, stats = loss_fn(
                logprobs, mb.old_logprobs, mb.advantages, mask, loss_cfg,
                rollout_logprobs=mb.rollout_logprobs, ref_logprobs=mb.ref_logprobs,
                entropy=entropy, normalizer=normalizer,
            )  # fmt: skip
            return loss, mask.sum().int(), {"loss": loss.detach(), **stats}

        return self._step([mb.sequences for mb in micro_batches], micro_batches, loss_func, self.with_entropy)

    def sft_step(self, micro_batches: Sequence[SequenceBatch]) -> dict:
        """One supervised update: mean next-token cross-entropy over all response tokens."""
        normalizer = self._global_count(micro_batches, per_sequence=False)

        def loss_func(batch: SequenceBatch, output):
            logprobs, _ = output
            mask = batch.response_mask()
            loss = -(logprobs * mask).sum() / normalizer
            return loss, mask.sum().int(), {"loss": loss.detach()}

        return self._step(micro_batches, micro_batches, loss_func, with_entropy=False)

    def _global_count(self, batches: Sequence[SequenceBatch], per_sequence: bool) -> float:
        """Response tokens (or sequences) in the whole mini-batch, summed over DP ranks."""
        # Rows without response tokens (filler for equal micro-batch sizes) are not sequences.
        local = sum(int((b.response_lens > 0).sum() if per_sequence else b.response_lens.sum()) for b in batches)
        # NCCL only reduces GPU tensors; gloo takes CPU ones.
        count = torch.tensor([local], dtype=torch.float64, device=_device())
        dist.all_reduce(count, group=self.dp_group)
        return max(float(count.item()), 1.0)

    def compute_logprobs(self, micro_batches: Sequence[SequenceBatch]) -> list[tuple]:
        """Forward only: (logprobs, entropy) [B, T] per micro-batch on the last pipeline stage.

        Other pipeline stages get an empty list. Used for the old/reference log-probs of a batch.
        """

        def keep_output(batch: SequenceBatch, output):
            logprobs, entropy = output
            return logprobs.new_zeros(()), batch.response_mask().sum().int(), {"out": (logprobs, entropy)}

        with torch.no_grad():
            per_micro = self._run(
                micro_batches, micro_batches, keep_output, self.with_entropy, forward_only=True
            )
        return [m["out"] for m in per_micro]

    def kd_step(self, micro_batches: Sequence[KDMicroBatch], teacher_logits, criterion) -> dict:
        """One logit-distillation update: mean per-token KL(teacher || student) over the response
        tokens of the mini-batch (teacher hidden states precomputed by `teacher_hidden`)."""
        normalizer = self._global_count([mb.sequences for mb in micro_batches], per_sequence=False)

        def forward(model, batch, item: KDMicroBatch):
            return forward_kd(model, KDRequest(batch, self.policy.vocab_size, item.teacher_hidden, teacher_logits,
                                               criterion, self.chunk_size))

        def loss_func(mb: KDMicroBatch, kl):
            mask = mb.sequences.response_mask()
            loss = kl.sum() / normalizer
            return loss, mask.sum().int(), {"loss": loss.detach(), "kl": kl.detach().sum() / mask.sum().clamp(min=1)}

        return self._step([mb.sequences for mb in micro_batches], micro_batches, loss_func, False, forward)

    def teacher_hidden(self, teacher: Policy, batches: Sequence[SequenceBatch]) -> list[torch.Tensor | None]:
        """The teacher's final hidden states at response positions [T, B, H], per micro-batch, on
        the last pipeline stage (None elsewhere); the teacher is laid out like the student."""

        def keep(batch: SequenceBatch, hidden):
            return hidden.new_zeros(()), batch.response_mask().sum().int(), {"out": hidden.detach()}

        with torch.no_grad():
            per_micro = self._run(batches, batches, keep, False, True, lambda m, b, _: forward_teacher_hidden(m, b),
                                  teacher.chunks)
        return [m["out"] for m in per_micro] if per_micro else [None] * len(batches)

    def _step(self, batches: Sequence[SequenceBatch], items: Sequence, loss_func, with_entropy: bool,
              forward=None) -> dict:
        for chunk in self.policy.chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        per_micro = self._run(batches, items, loss_func, with_entropy, False, forward)
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(1)
        # Micro-batches without a response token (a short rank's fillers) add nothing to the loss
        # and would drag the means of per-micro-batch stats towards 0.
        real = [m for m, b in zip(per_micro, batches) if int(b.response_lens.sum()) > 0]
        return _summarise(real if real else per_micro, grad_norm)

    def _run(self, batches, items, loss_func, with_entropy: bool, forward_only: bool, forward=None,
             chunks=None) -> list[dict]:
        """Megatron's forward(/backward) schedule over ``items`` through ``chunks`` (default: the
        policy); ``forward(model, padded batch, item)`` replaces the log-prob forward. Returns the
        last stage's stats."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from megatron.core.utils import get_model_config

        chunks = chunks or self.policy.chunks
        sizes = {b.tokens.shape[0] for b in batches}
        if len(sizes) != 1 and not self.variable_shapes:
            raise ValueError(f"micro-batches must share one batch size for the pipeline; got {sorted(sizes)}")
        # Without variable shapes, pipeline stages exchange [S, B, H] activations of one fixed
        # shape, so every row is padded to the longest S; with them, each micro-batch keeps its own.
        seq_len = max(b.tokens.shape[1] for b in batches)
        get_model_config(chunks[0]).variable_seq_lengths = self.variable_shapes
        device = _device()

        def forward_step(data_iterator, model):
            item = next(data_iterator).to(device)
            batch = item if isinstance(item, SequenceBatch) else item.sequences
            batch = batch if self.variable_shapes else _pad_to_length(batch, seq_len)
            if forward is not None:
                return forward(model, batch, item), partial(loss_func, item)
            request = LogprobRequest(batch, self.policy.vocab_size, self.chunk_size, with_entropy)
            return forward_response_logprobs(model, request), partial(loss_func, item)

        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(items),
            model=chunks,
            num_microbatches=len(items),
            seq_length=seq_len,  # ignored with variable shapes
            micro_batch_size=max(sizes),
            forward_only=forward_only,
        )


def _summarise(per_micro: list[dict], grad_norm) -> dict:
    """Mean of each stat over this rank's micro-batches (max/min for ``*_max``/``*_min``).

    "loss" is summed instead: the shares add up to this rank's part of the mini-batch mean (sum it
    over data-parallel ranks for the whole mean). Only the last pipeline stage has these stats.
    """
    stats = {"grad_norm": float(grad_norm) if grad_norm is not None else float("nan")}
    for key in per_micro[0] if per_micro else ():
        values = torch.stack([torch.as_tensor(m[key]).float() for m in per_micro])
        if key == "loss":
            stats[key] = float(values.sum())
        elif key.endswith(("_max", "_min")):
            stats[key] = float(values.amax() if key.endswith("_max") else values.amin())
        else:
            stats[key] = float(values.mean())
    return stats
