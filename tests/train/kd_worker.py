"""One logit-distillation step on the tiny Qwen3 under a given TP/PP layout (torchrun), from
test_logit_distill.py: each rank saves the step's stats and the exported weights after it."""

import argparse
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megatron_zppo.train import cpu_compat, parallel  # noqa: E402
from megatron_zppo.train.logit_distill import KDMicroBatch, make_criterion, output_logits_fn  # noqa: E402
from megatron_zppo.train.logprobs import SequenceBatch  # noqa: E402
from megatron_zppo.train.model import ModelConfig, build_policy, export_hf_weights  # noqa: E402
from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config  # noqa: E402
from megatron_zppo.train.steps import PolicyTrainer  # noqa: E402
from tests.train.tiny_qwen3 import PROMPTS, RESPONSES  # noqa: E402

OPT = OptimizerConfig(lr=1e-3, eps=1e-4, clip_grad=0.01)


def main() -> None:
    cpu_compat.enable()  # this worker is its process's entry point
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher-dir", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--divergence", default="forward_kl")
    args = ap.parse_args()

    from megatron.core import parallel_state
    from megatron.core.utils import get_model_config

    layout = parallel.ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    dp_size = parallel.initialize(layout)
    policy = build_policy(ModelConfig(hf_path=args.hf_dir), layout, ddp_config=ddp_config(OPT))
    trainer = PolicyTrainer(policy, *build_optimizer(policy, OPT), chunk_size=2)
    teacher = build_policy(ModelConfig(hf_path=args.teacher_dir), layout)
    width = max(map(len, RESPONSES))
    rows = list(range(len(PROMPTS)))[parallel_state.get_data_parallel_rank()::dp_size]
    micro = [SequenceBatch.from_lists([PROMPTS[i]], [RESPONSES[i]], response_width=width) for i in rows]
    hidden = trainer.teacher_hidden(teacher, micro)
    last = parallel_state.is_pipeline_last_stage()
    stats = trainer.kd_step([KDMicroBatch(b, h) for b, h in zip(micro, hidden)],
                            output_logits_fn(teacher.chunks[-1]) if last else None,
                            make_criterion(get_model_config(policy.chunks[0]), 1.0, args.top_k, args.divergence))
    weights = {name: t for bucket in export_hf_weights(policy) for name, t in bucket}
    torch.save({"stats": stats, "weights": weights, "last_stage": last},
               os.path.join(args.out, f"rank{dist.get_rank()}.pt"))
    parallel.destroy()


if __name__ == "__main__":
    main()
