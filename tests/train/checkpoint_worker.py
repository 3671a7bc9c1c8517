"""Checkpoint resharding under torchrun, driven by test_checkpointing.py.

Under the given TP/PP (and implied DP) layout this worker (1) trains a fresh policy for 2 PPO steps, records its
log-probs and saves a full checkpoint to ``<out>/ckpt``; then (2) loads ``--load`` (written by
the test under another layout) into a second fresh policy, records its log-probs, trains 1 more
step and records the exported HF weights. Each rank writes ``<out>/rank<N>.pt``.
"""

import argparse
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megatron_zppo.core.loss import LossConfig  # noqa: E402
from megatron_zppo.train import cpu_compat, parallel  # noqa: E402
from megatron_zppo.train.dist_checkpoint import adam_step_counts, load_checkpoint, save_checkpoint  # noqa: E402
from megatron_zppo.train.model import ModelConfig, build_policy, export_hf_weights  # noqa: E402
from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config  # noqa: E402
from megatron_zppo.train.steps import PolicyTrainer  # noqa: E402
from tests.train.tiny_qwen3 import ppo_micro_batches  # noqa: E402

OPT = OptimizerConfig(lr=1e-3, eps=1e-4, clip_grad=0.1)  # as in test_checkpointing.py
LOSS = LossConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)


def _trainer(hf_dir: str, layout) -> PolicyTrainer:
    policy = build_policy(ModelConfig(hf_path=hf_dir), layout, ddp_config=ddp_config(OPT))
    return PolicyTrainer(policy, *build_optimizer(policy, OPT), chunk_size=2)


def _logprobs(trainer: PolicyTrainer) -> torch.Tensor | None:
    """[4, T] log-probs of the whole fixed batch on the last pipeline stage, None elsewhere."""
    outputs = trainer.compute_logprobs([mb.sequences for mb in ppo_micro_batches(rows_per_micro=2)])
    return torch.cat([lp for lp, _ in outputs]) if outputs else None


def main() -> None:
    cpu_compat.enable()  # this worker is its process's entry point
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    args = ap.parse_args()

    layout = parallel.ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    dp_size = parallel.initialize(layout)
    from megatron.core import parallel_state

    # One row per micro-batch; data-parallel ranks take every dp_size-th one (the step's result
    # does not depend on the split, see test_trainer.py).
    mine = ppo_micro_batches(rows_per_micro=1)[parallel_state.get_data_parallel_rank() :: dp_size]
    trained = _trainer(args.hf_dir, layout)
    for _ in range(2):
        trained.ppo_step(mine, LOSS)
    result = {"logprobs_after_2": _logprobs(trained)}
    save_checkpoint(trained.policy, trained.optimizer, trained.scheduler, os.path.join(args.out, "ckpt"),
                    extra={"layout": [args.tp, args.pp]})  # fmt: skip

    resumed = _trainer(args.hf_dir, layout)
    result["extra"] = load_checkpoint(resumed.policy, resumed.optimizer, resumed.scheduler, args.load)
    result["logprobs_loaded"] = _logprobs(resumed)
    result["adam_steps_loaded"] = adam_step_counts(resumed.optimizer)
    resumed.ppo_step(mine, LOSS)
    result["weights_after_3"] = {name: t for bucket in export_hf_weights(resumed.policy) for name, t in bucket}
    torch.save(result, os.path.join(args.out, f"rank{dist.get_rank()}.pt"))
    parallel.destroy()


if __name__ == "__main__":
    main()
