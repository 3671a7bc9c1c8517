"""The trainer as the loop sees it: samples in, one optimizer update per mini-batch, weights out.

Turns `Sample` records into Megatron micro-batches (this data-parallel rank's share), computes the
old log-probs of the whole rollout step before the first update (PPO's behaviour policy), runs
`updates_per_step` PPO updates, and reports the statistics users watch, gathered on rank 0
whichever pipeline stage produced them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_zppo.run_checkpoint import CheckpointError
from megatron_zppo.images import is_vision_language
from megatron_zppo.core.loss import LossConfig, importance_stats
from megatron_zppo.core.records import PromptKind, Sample
from megatron_zppo.train import parallel
from megatron_zppo.train.logprobs import SequenceBatch
from megatron_zppo.train.micro_batches import BatchRule, rank_micro_batches
from megatron_zppo.train.precision import ddp_config_fields
from megatron_zppo.train.model import ModelConfig, build_policy
from megatron_zppo.train.logit_distill import LogitTeacher
from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config
from megatron_zppo.train.steps import PolicyTrainer, PPOMicroBatch


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


def _pad(rows: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.float32)
    return out


class RLTrainer:
    """`logit_teacher`: the frozen teacher the logit-distillation baseline holds inside the trainer
    (methods.trainer_teacher); None for every other method."""

    def __init__(self, model_cfg: ModelConfig, parallel_cfg: parallel.ParallelConfig, optimizer: OptimizerConfig,
                 loss: LossConfig, batching: Batching, logit_teacher: LogitTeacher | None = None):
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
        self.loss_cfg = loss
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
        self.teacher = None
        if logit_teacher is not None:  # laid out like the student, frozen
            from megatron.core.utils import get_model_config

            from megatron_zppo.train.logit_distill import make_criterion, output_logits_fn

            self.teacher = build_policy(dataclasses.replace(model_cfg, hf_path=logit_teacher.hf_path, fp8="none",
                                                            fp8_param_gather=False, recompute="none"), parallel_cfg)
            for chunk in self.teacher.chunks:
                chunk.requires_grad_(False)
            self._teacher_logits = output_logits_fn(self.teacher.chunks[-1]) if self.last_stage else None
            self._criterion = make_criterion(get_model_config(self.policy.chunks[0]), logit_teacher.temperature,
                                             logit_teacher.top_k)

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

    def _old_logprobs(self, batches) -> list[torch.Tensor]:
        outputs = self.core.compute_logprobs([b for b, _ in batches])
        if not self.last_stage:  # only the last stage computes the loss, so only it needs them
            return [torch.zeros(b.tokens.shape[0], b.response_width) for b, _ in batches]
        return [lp.detach().float().cpu() for lp, _ in outputs]

    # -- the update ------------------------------------------------------------------------
    def train(self, minibatches: list[list[Sample]]) -> dict[str, float]:
        """Old log-probs for every sample first (all under the same, pre-update weights), then one
        optimizer update per mini-batch. Returns the mean of each statistic over the updates."""
        cut, costs = zip(*[self._micro_batches(mb) for mb in minibatches])
        olds = [self._old_logprobs(batches) for batches in cut]
        diffs, log_ratios, per_update = [], [], []
        for batches, old, cost in zip(cut, olds, costs):
            mbs = []
            for (seq, rows), old_lp in zip(batches, old):
                rollout = _pad([s.logprobs if s else [] for s in rows], seq.response_width)
                adv = _advantages(rows, seq.response_width)
                mbs.append(PPOMicroBatch(seq, old_lp, adv, rollout_logprobs=rollout))
                mask = seq.response_mask()
                if self.last_stage and mask.any():
                    log_ratios.append((old_lp - rollout)[mask])
                    diffs.append(log_ratios[-1].abs())
            per_update.append({**self.core.ppo_step(mbs, self.loss_cfg), **cost})
        local = _mean_stats(per_update)
        if diffs:
            d = torch.cat(diffs)
            local.update(logprob_diff_mean=float(d.mean()), logprob_diff_max=float(d.max()))
            local.update(importance_stats(torch.cat(log_ratios), self.loss_cfg.tis_cap))
        return self._gather(local)

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

    def distill(self, minibatches: list[list[Sample]]) -> dict[str, float]:
        """Logit distillation (the baseline): one update per mini-batch towards the teacher's
        next-token distributions on these samples' tokens."""
        from megatron_zppo.train.logit_distill import KDMicroBatch

        if self.teacher is None:
            raise ValueError("distill() needs a logit_teacher (method.objective=logit_distill builds one)")
        per_update = []
        for mb in minibatches:
            cut, cost = self._micro_batches(mb, pack_rows=False)  # the KD forward takes padded rows
            batches = [b for b, _ in cut]
            hidden = self.core.teacher_hidden(self.teacher, batches)
            items = [KDMicroBatch(b, h) for b, h in zip(batches, hidden)]
            per_update.append({**self.core.kd_step(items, self._teacher_logits, self._criterion), **cost})
        return self._gather(_mean_stats(per_update))

    def sft_step(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> float:
        """One supervised update on (prompt ids, response ids) pairs; returns the mean token loss."""
        rows = [Sample("sft", "sft", PromptKind.PLAIN, p, r, "", [0.0] * len(r)) for p, r in pairs]
        return self.sft([rows]).get("loss", float("nan"))

    def sft(self, minibatches: Sequence[Sequence[Sample]]) -> dict[str, float]:
        """One supervised (mean token cross-entropy) update per mini-batch of samples' (prompt,
        response) tokens, whoever sampled them; the mean of each statistic over the updates."""
        per_update = []
        for rows in minibatches:
            cut, cost = self._micro_batches(rows)
            per_update.append({**self.core.sft_step([b for b, _ in cut]), **cost})
        return self._gather(_mean_stats(per_update))

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


def _advantages(rows: Sequence[Sample | None], width: int) -> torch.Tensor:
    """[B] sequence advantages, or [B, T] when any sample carries per-token ones (distillation)."""
    if not any(s is not None and s.token_advantages is not None for s in rows):
        return torch.tensor([s.advantage if s else 0.0 for s in rows], dtype=torch.float32)
    per_token = [[] if s is None else s.token_advantages if s.token_advantages is not None
                 else [s.advantage] * len(s.response_ids) for s in rows]
    return _pad(per_token, width)


def _mean_stats(per_update: list[dict]) -> dict[str, float]:
    keys = {k for s in per_update for k in s}
    out = {}
    for k in keys:
        vals = [s[k] for s in per_update if k in s]
        out[k] = max(vals) if k.endswith("_max") else min(vals) if k.endswith("_min") else sum(vals) / len(vals)
    return out
