"""One PPO step on the tiny Qwen3 under a given TP/PP layout; run by torchrun from test_parallel_equivalence.

Each rank saves what it can see to ``<out>/rank<N>.pt``: the response log-probs (last pipeline
stage), the q/k-norm gradients of its layers keyed by global layer number, the step's stats and
the exported HF weights after the step. The test compares these across layouts.
"""

import argparse
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megatron_zppo.core.loss import LossConfig  # noqa: E402
from megatron_zppo.train import cpu_compat, parallel  # noqa: E402
from megatron_zppo.train.model import ModelConfig, build_policy, export_hf_weights  # noqa: E402
from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config  # noqa: E402
from megatron_zppo.train.steps import PolicyTrainer  # noqa: E402
from tests.train.tiny_qwen3 import packed_ppo_micro_batches, ppo_micro_batches  # noqa: E402

OPT = OptimizerConfig(lr=1e-3, eps=1e-4, clip_grad=0.1)  # see test_trainer.py for these values
LOSS = LossConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)


def _qk_norm_grads(policy) -> dict:
    from megatron.core.utils import unwrap_model

    grads = {}
    for chunk in policy.chunks:
        for layer in unwrap_model(chunk).decoder.layers:
            attn = layer.self_attention
            for kind in ("q_layernorm", "k_layernorm"):
                grads[f"layer{layer.layer_number}.{kind}"] = getattr(attn, kind).weight.main_grad.clone()
    return grads


def main() -> None:
    cpu_compat.enable()  # this worker is its process's entry point
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--pack-budget", type=int, default=None, help="micro-batches packed under this token budget")
    ap.add_argument("--pack-rows", action="store_true", help="each packed micro-batch as one THD row")
    args = ap.parse_args()

    layout = parallel.ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    dp_size = parallel.initialize(layout)
    from megatron.core import parallel_state

    policy = build_policy(ModelConfig(hf_path=args.hf_dir), layout, ddp_config=ddp_config(OPT))
    packed = args.pack_budget is not None
    trainer = PolicyTrainer(policy, *build_optimizer(policy, OPT), chunk_size=2, variable_shapes=packed)
    dp_rank = parallel_state.get_data_parallel_rank()
    if packed:  # the packer's plan: this rank's micro-batches, of varying rows and lengths
        mine, rows = zip(*packed_ppo_micro_batches(args.pack_budget, dp_rank, dp_size, args.pack_rows))
    else:  # one row per micro-batch; data-parallel ranks take every dp_size-th one
        mine = ppo_micro_batches(rows_per_micro=1)[dp_rank::dp_size]
        rows = [[dp_rank + i * dp_size] for i in range(len(mine))]
    logprobs = trainer.compute_logprobs([mb.sequences for mb in mine])
    stats = trainer.ppo_step(mine, LOSS)
    width = ppo_micro_batches(rows_per_micro=1)[0].sequences.response_width
    result = {
        # Each sample's row, at the whole mini-batch's response width (positions past it are 0).
        "logprobs": {f"row{r}": torch.nn.functional.pad(lp[j : j + 1], (0, width - lp.shape[1]))
                     for (lp, _), micro in zip(logprobs, rows) for j, r in enumerate(micro)},
        "qk_norm_grads": _qk_norm_grads(policy),
        "stats": stats,
        "weights": {name: t for bucket in export_hf_weights(policy) for name, t in bucket},
    }
    torch.save(result, os.path.join(args.out, f"rank{dist.get_rank()}.pt"))
    parallel.destroy()


if __name__ == "__main__":
    main()
