"""Response log-probs and one PPO step of SmolLM2-135M-Instruct under a TP layout (test_real_model.py).

Run under torchrun (``--tp 3``: the model's 9 query / 3 KV heads split only 1 or 3 ways) or imported
for the single-process reference: ``one_step`` is the same code in both. Rank 0 saves the results.
"""

import argparse
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

from megatron_zppo.core.loss import LossConfig  # noqa: E402
from megatron_zppo.train import cpu_compat, parallel  # noqa: E402
from megatron_zppo.train.model import ModelConfig, build_policy, export_hf_weights  # noqa: E402
from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config  # noqa: E402
from megatron_zppo.train.steps import PolicyTrainer, PPOMicroBatch  # noqa: E402

OPT = OptimizerConfig(lr=1e-4, eps=1e-6, clip_grad=1.0)
LOSS = LossConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)
# Real text through the model's own chat template: two questions with answers of different lengths.
CHATS = [("What is 3 + 4?", "3 + 4 = 7, so the answer is \\boxed{7}."),
         ("Name a primary colour.", "Red is a primary colour.")]
# Weights whose value after the step shows the whole update: the tied embedding / output layer,
# one layer's fused projections split by TP (rows, columns, query groups), the last norm.
WATCHED = ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
           "model.layers.0.self_attn.k_proj.weight", "model.layers.29.mlp.down_proj.weight", "model.norm.weight")


def micro_batches(hf_dir: str) -> list[PPOMicroBatch]:
    from transformers import AutoTokenizer

    from megatron_zppo.core.prompts import encode_prompt
    from megatron_zppo.train.logprobs import SequenceBatch

    tok = AutoTokenizer.from_pretrained(hf_dir)
    prompts = [encode_prompt(tok, q) for q, _ in CHATS]
    responses = [tok(a)["input_ids"] + [tok.eos_token_id] for _, a in CHATS]
    width = max(map(len, responses))
    out = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = SequenceBatch.from_lists([p], [r], response_width=width)
        old = -2.0 * seq.response_mask()  # off-policy "old" log-probs: ratios differ from 1
        out.append(PPOMicroBatch(seq, old, torch.tensor([1.0 if i == 0 else -0.5])))
    return out


def one_step(hf_dir: str, layout: parallel.ParallelConfig) -> dict:
    """Log-probs before the step, the step's stats, and the watched weights after it."""
    policy = build_policy(ModelConfig(hf_path=hf_dir), layout, ddp_config=ddp_config(OPT))
    trainer = PolicyTrainer(policy, *build_optimizer(policy, OPT), chunk_size=8)
    batches = micro_batches(hf_dir)
    logprobs = [lp for lp, _ in trainer.compute_logprobs([mb.sequences for mb in batches])]
    stats = trainer.ppo_step(batches, LOSS)
    weights = {name: t for bucket in export_hf_weights(policy) for name, t in bucket if name in WATCHED}
    return {"logprobs": logprobs, "stats": stats, "weights": weights}


def main() -> None:
    cpu_compat.enable()  # this worker is its process's entry point
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tp", type=int, default=1)
    args = ap.parse_args()
    layout = parallel.ParallelConfig(tensor_parallel=args.tp)
    parallel.initialize(layout)
    result = one_step(args.hf_dir, layout)
    rank = torch.distributed.get_rank()
    torch.save(result if rank == 0 else {}, os.path.join(args.out, f"rank{rank}.pt"))
    parallel.destroy()


if __name__ == "__main__":
    main()
