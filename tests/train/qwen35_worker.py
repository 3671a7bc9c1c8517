"""A tiny random Qwen3.5 text checkpoint, and one PPO step on it under a TP/PP layout (torchrun).

``save_tiny_qwen35`` writes the checkpoint the Qwen3.5 tests share. Run as a script (from
test_qwen35.py), each rank saves to ``<out>/rank<N>.pt`` the response log-probs it sees (last
pipeline stage), the step's stats and the exported HF weights after the step.
"""

import argparse
import dataclasses
import os
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

from megatron_zppo.toy.shapes import QWEN35_TEXT  # noqa: E402

# The shared shape with 4 layers instead of 2: two Gated-DeltaNet layers, then gated full attention,
# then GDN again. The pattern is not periodic, so a layer-index slip in the spec or the weight
# mapping shows. Vocabulary as tiny_qwen3's, so its PPO mini-batch (tokens up to 249) applies.
LAYER_TYPES = ["linear_attention", "linear_attention", "full_attention", "linear_attention"]
TINY = dict(
    QWEN35_TEXT,
    num_hidden_layers=len(LAYER_TYPES),
    layer_types=LAYER_TYPES,
    vocab_size=250,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    # 10x HF's default: logits far from uniform, so a wrong GDN detail moves the log-probs visibly.
    initializer_range=0.2,
)


def save_tiny_qwen35(path: Path, seed: int = 0) -> str:
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    from tests.train.tiny_qwen3 import save_with_perturbed_norms

    torch.manual_seed(seed)
    # Perturbed norms: HF sets them to 0 (zero-centred) or 1 (GDN's gated norm), so a wrong "+1"
    # mapping shows; 0.1 noise keeps the gated norm within [0.5, 2], where w - 1 + 1 == w exactly.
    return save_with_perturbed_norms(Qwen3_5ForCausalLM(Qwen3_5TextConfig(**TINY)).float(), path)


def main(make_micro_batches=None) -> None:
    """One PPO step under the command line's layout on ``make_micro_batches(hf_dir)`` (default:
    tiny_qwen3's text mini-batch in micro-batches of two rows)."""
    import torch.distributed as dist

    from megatron_zppo.core.loss import LossConfig
    from megatron_zppo.train import cpu_compat, parallel
    from megatron_zppo.train.model import ModelConfig, build_policy, export_hf_weights
    from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config
    from megatron_zppo.train.steps import PolicyTrainer
    from tests.train.tiny_qwen3 import ppo_micro_batches

    cpu_compat.enable()  # this worker is its process's entry point
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--packed", action="store_true", help="each micro-batch's rows as one packed (THD) row")
    args = ap.parse_args()

    layout = parallel.ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    parallel.initialize(layout)
    opt = OptimizerConfig(lr=1e-3, eps=1e-4, clip_grad=0.1)  # see test_trainer.py for these values
    policy = build_policy(ModelConfig(hf_path=args.hf_dir), layout, ddp_config=ddp_config(opt))
    trainer = PolicyTrainer(policy, *build_optimizer(policy, opt), chunk_size=2, variable_shapes=args.packed)
    micro_batches = (make_micro_batches or (lambda _: ppo_micro_batches(rows_per_micro=2)))(args.hf_dir)
    if args.packed:
        micro_batches = [dataclasses.replace(mb, sequences=dataclasses.replace(mb.sequences, packed=True))
                         for mb in micro_batches]
    logprobs = trainer.compute_logprobs([mb.sequences for mb in micro_batches])
    stats = trainer.ppo_step(micro_batches, LossConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0))
    result = {
        "logprobs": {f"micro{i}": lp for i, (lp, _) in enumerate(logprobs)},
        "stats": stats,
        "weights": {name: t for bucket in export_hf_weights(policy) for name, t in bucket},
    }
    torch.save(result, os.path.join(args.out, f"rank{dist.get_rank()}.pt"))
    parallel.destroy()


if __name__ == "__main__":
    main()
