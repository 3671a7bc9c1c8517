"""The trainer as the loop sees it: samples in, one optimizer update per mini-batch, weights out.

Turns `Sample` records into Megatron micro-batches (this data-parallel rank's share), hands them to
the method's loss (train/losses.py: one seam, `update(minibatches, loss)`, whatever the method),
and reports the statistics users watch, gathered on rank 0 whichever pipeline stage produced them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_zppo.run_checkpoint import CheckpointError
from megatron_zppo.images import is_vision_language
from megatron_zppo.core.records import Sample
from megatron_zppo.train import parallel
from megatron_zppo.train.logprobs import SequenceBatch
from megatron_zppo.train.micro_batches import BatchRule, rank_micro_batches
from megatron_zppo.train.precision import ddp_config_fields
from megatron_zppo.train.model import ModelConfig, build_policy
from megatron_zppo.train.logit_distill import LogitTeacher
from megatron_zppo.train.losses import HeldTeacher, Loss
from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config
from megatron_zppo.train.steps import PolicyTrainer


# Settings a resume must keep: the optimizer state carries them (Megatron restores lr, betas, eps and
# weight decay from it, or refuses a change deep in its loader), and Adam's moments were gathered
# under them. The others apply from this run's config (the checkpoint reshards to any layout).
KEPT_ON_RESUME = ("optimizer.lr", "optimizer.beta1", "optimizer.beta2", "optimizer.eps", "optimizer.weight_decay",
                  "optimizer.use_distributed_optimizer")


@dataclass(frozen=True)
class Batching:
    """How samples become micro-batches (config.TrainConfig's fields of the same names)."""

    micro_batch_size: int = 8
    max_tokens_per_micro_batch: int | None = None  # set: packed under this token budget, balanced by tokens
    logprob_chunk_size: int = 512


def resume_settings(optimizer: OptimizerConfig, parallel_cfg: parallel.ParallelConfig, dp_size: int) -> dict:
    settings = {f"optimizer.{f.name}": getattr(optimizer, f.name) for f in dataclasses.fields(optimizer)}
    return {**settings, "train.tensor_parallel": parallel_cfg.tensor_parallel,
            "train.pipeline_parallel": parallel_cfg.pipeline_parallel, "data-parallel size": dp_size}


def settings_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(refused, applied): "key: checkpoint value -> this run's value" for each setting that differs."""
    changed = [k for k in current if k in saved and saved[k] != current[k]]
    lines = {k: f"{k}: {saved[k]!r} -> {current[k]!r}" for k in changed}
    return [lines[k] for k in changed if k in KEPT_ON_RESUME], [lines[k] for k in changed if k not in KEPT_ON_RESUME]


class RLTrainer:
    """`logit_teacher`: which frozen teacher (path, divergence, temperature, top k) a distillation
    baseline holds inside the trainer, built here as `kd_teacher` (methods.trainer_teacher); None
    for every other method."""

    def __init__(self, model_cfg: ModelConfig, parallel_cfg: parallel.ParallelConfig, optimizer: OptimizerConfig,
                 batching: Batching, logit_teacher: LogitTeacher | None = None):
        from megatron.core import parallel_state

        self.dp_size = parallel.initialize(parallel_cfg)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.last_stage = parallel_state.is_pipeline_last_stage()
        ddp = ddp_config(optimizer)
        for key, value in ddp_config_fields(model_cfg.precision).items():  # FP8 weight all-gather, if asked
            setattr(ddp, key, value)
        self.policy = build_policy(model_cfg, parallel_cfg, ddp)
        self.optimizer, self.scheduler = build_optimizer(self.policy, optimizer)
        self.core = PolicyTrainer(self.policy, self.optimizer, self.scheduler, chunk_size=batching.logprob_chunk_size,
                                  variable_shapes=batching.max_tokens_per_micro_batch is not None)
        self.settings = resume_settings(optimizer, parallel_cfg, self.dp_size)
        hf_config = self.policy.bridge.hf_pretrained.config
        text_config = hf_config.get_text_config()
        # A vision-language student: its image processor turns samples' images into patches.
        image_processor = video_processor = tokenizer = video_tokens = None
        if is_vision_language(hf_config):
            from transformers import AutoImageProcessor, AutoTokenizer

            from megatron_zppo.videos import VideoTokens, load_video_processor

            image_processor = AutoImageProcessor.from_pretrained(model_cfg.hf_path)
            video_processor = load_video_processor(model_cfg.hf_path)  # and its videos' timestamp text:
            if video_processor is not None:
                tokenizer, video_tokens = AutoTokenizer.from_pretrained(model_cfg.hf_path), VideoTokens.of(hf_config)
        self.rule = BatchRule(batching.micro_batch_size, batching.max_tokens_per_micro_batch,
                              int(getattr(text_config, "max_position_embeddings", None) or 1 << 30),
                              int(getattr(text_config, "pad_token_id", None) or 0), image_processor,
                              getattr(hf_config, "image_token_id", None),
                              getattr(hf_config, "vision_start_token_id", None),
                              video_processor, tokenizer, video_tokens, pack_rows=True)
        self.kd_teacher = None
        if logit_teacher is not None:  # laid out like the student, frozen
            from megatron.core.utils import get_model_config

            from megatron_zppo.train.logit_distill import make_criterion, output_logits_fn

            teacher = build_policy(dataclasses.replace(model_cfg, hf_path=logit_teacher.hf_path, fp8="none",
                                                       fp8_param_gather=False, recompute="none"), parallel_cfg)
            for chunk in teacher.chunks:
                chunk.requires_grad_(False)
            self.kd_teacher = HeldTeacher(
                teacher, output_logits_fn(teacher.chunks[-1]) if self.last_stage else None,
                make_criterion(get_model_config(self.policy.chunks[0]), logit_teacher.temperature, logit_teacher.top_k,
                               logit_teacher.divergence, logit_teacher.beta))

    @property
    def is_main(self) -> bool:
        return dist.get_rank() == 0

    # -- batches ---------------------------------------------------------------------------
    def _micro_batches(self, samples: Sequence[Sample], pack_rows: bool = True
                       ) -> tuple[list[tuple[SequenceBatch, list[Sample | None]]], dict[str, float]]:
        """This rank's share of the mini-batch as micro-batches (train.micro_batch_size rows each, or
        packed under train.max_tokens_per_micro_batch), and the plan's token stats (every rank's)."""
        rule = self.rule if pack_rows else dataclasses.replace(self.rule, pack_rows=False)
        batches, cost = rank_micro_batches(samples, rule, self.dp_rank, self.dp_size)
        return batches, cost.as_stats()

    # -- the update ------------------------------------------------------------------------
    def update(self, minibatches: Sequence[Sequence[Sample]], loss: Loss) -> dict[str, float]:
        """One optimizer update per mini-batch under `loss` (train/losses.py: the policy gradient,
        cross-entropy or logit distillation). Returns the mean of each statistic over the updates,
        gathered from every rank that has them."""
        return self._gather(loss.updates(self, [self._micro_batches(mb, loss.pack_rows) for mb in minibatches]))

    def _gather(self, local: dict[str, float]) -> dict[str, float]:
        """Statistics of the ranks that have them (last pipeline stage), averaged; losses summed
        over data-parallel ranks, since each holds its share of the mini-batch mean."""
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, local if self.last_stage else None)
        have = [s for s in everyone if s]
        # Ranks of one tensor-parallel group hold identical copies: count each DP replica once.
        tp = len(have) // max(self.dp_size, 1) or 1
        replicas = have[::tp]
        keys = {k for s in replicas for k in s}
        out = {}
        for k in keys:
            vals = [s[k] for s in replicas if k in s]
            out[k] = sum(vals) if k == "loss" else (max(vals) if k.endswith("_max") else
                                                    min(vals) if k.endswith("_min") else sum(vals) / len(vals))
        return out

    # -- weights and checkpoints -------------------------------------------------------------
    def export_hf(self) -> Iterator[tuple[str, torch.Tensor]]:
        """HF-named weights one at a time, on the model's device: the weight sync buckets and moves
        them itself, so no bucket list and no CPU copy is held here (NCCL sends from the GPU)."""
        yield from self.policy.bridge.export_hf_weights(self.policy.chunks, cpu=False, show_progress=False)

    def save(self, directory: str) -> None:
        from megatron_zppo.train import dist_checkpoint

        dist_checkpoint.save_checkpoint(self.policy, self.optimizer, self.scheduler, directory,
                                      extra={"settings": self.settings})

    def load(self, directory: str, weights_only: bool = False) -> None:
        from megatron_zppo.train import dist_checkpoint

        if weights_only:
            dist_checkpoint.load_checkpoint(self.policy, None, None, directory)
            return
        saved = dist_checkpoint.read_extra(directory).get("settings")
        if saved:
            refused, applied = settings_changes(saved, self.settings)
            if refused:
                raise CheckpointError(f"checkpoint {directory} was written with other optimizer settings, which its "
                                      f"state carries: {'; '.join(refused)}; resume with the checkpoint's values, "
                                      "or start a new run")
            if applied and self.is_main:
                print(f"resume: this run's settings apply over the checkpoint's: {'; '.join(applied)}")
        try:
            dist_checkpoint.load_checkpoint(self.policy, self.optimizer, self.scheduler, directory)
        except (KeyError, ValueError, AssertionError) as e:
            # A checkpoint without recorded settings: Megatron matches optimizer parameter groups by
            # their hyperparameters (lr, wd, ...), and the scheduler asserts its own.
            raise CheckpointError(f"checkpoint {directory}: its optimizer state does not fit this run's optimizer "
                                  f"settings (optimizer.lr/weight_decay/...: {type(e).__name__}: {str(e)[:200]}); resume "
                                  "with the settings it was written with") from None

    def close(self) -> None:
        parallel.destroy()

