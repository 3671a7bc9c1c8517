"""The sequence-packing rows of the GPU check (benchmarks/gpu_check.py's packing section): on a random
~1B Qwen3 shape, through our ``build_policy`` (Transformer Engine layers on a GPU):

1. THD vs padded log-prob parity in bf16: the same sequences once as padded rows and once back to
   back in one packed row (``SequenceBatch.packed``: THD layout, ``PackedSeqParams`` cu_seqlens, so
   TE's attention and RoPE restart at each boundary); max |difference| of the response log-probs.
   A leak across a boundary shows as differences of order 1, bf16 rounding as about 1e-2.
2. tokens/s of one PPO update on a mini-batch of the paper's length mix (benchmarks/bench_packing.py,
   lengths / 4): today's fixed rows (2 a micro-batch, padded to the longest) vs packed rows under a
   16,384-token budget, real tokens per second of each and their ratio.

gpu_check.py's ``packing_rows`` runs it after the VL rows (``--sections packing`` alone).
``--cpu-smoke`` (tiny model, fp32, the local spec's per-sequence attention) runs here in seconds:
    python benchmarks/gpu_check_packing.py --cpu-smoke
Not run on a GPU yet.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

QWEN3_1B = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=16, num_attention_heads=16,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=16384,
                tie_word_embeddings=False)
BUDGET, SCALE, QUESTIONS = 16384, 4, 2  # 16 samples of the paper's mix at a quarter of its lengths


def _samples(vocab: int, smoke: bool):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.bench_packing import paper_lengths
    from megatron_zppo.core.records import PromptKind, Sample

    g = torch.Generator().manual_seed(0)
    out = []
    for i, (p, r) in enumerate(paper_lengths(0, SCALE * (32 if smoke else 1), QUESTIONS)):
        out.append(Sample(f"q{i}", f"q{i}", PromptKind.PLAIN, torch.randint(0, vocab, (p,), generator=g).tolist(),
                          torch.randint(0, vocab, (r,), generator=g).tolist(), "", [-3.0] * r, advantage=1.0))
    return out


def _ppo_micro_batches(samples, rule):
    from megatron_zppo.train.micro_batches import rank_micro_batches
    from megatron_zppo.train.steps import PPOMicroBatch

    batches, cost = rank_micro_batches(samples, rule, 0, 1)
    micro = []
    for seq, rows in batches:
        old = torch.full((len(rows), seq.response_width), -3.0) * seq.response_mask()
        micro.append(PPOMicroBatch(seq, old, torch.tensor([1.0 if s else 0.0 for s in rows])))
    return micro, cost


@torch.no_grad()
def thd_parity(policy, vocab: int) -> float:
    """max |log-prob difference| between padded rows and the same sequences in one packed row."""
    from megatron_zppo.train.logprobs import LogprobRequest, SequenceBatch, forward_response_logprobs

    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (40, 7, 120, 16)]
    responses = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (200, 30, 90, 300)]
    padded = SequenceBatch.from_lists(prompts, responses)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    for chunk in policy.chunks:
        chunk.eval()
    outs = [forward_response_logprobs(policy.chunks[0], LogprobRequest(b.to(device), policy.vocab_size))[0]
            for b in (padded, dataclasses.replace(padded, packed=True))]
    mask = padded.response_mask().to(device)
    return float(((outs[0].double() - outs[1].double()) * mask).abs().max())


def packing_rows(build, time_steps, smoke: bool, warmup: int, steps: int) -> list[str]:
    """Markdown rows; a failure is a row, so the rows of the other checks still come back."""
    from megatron_zppo.train.micro_batches import BatchRule
    from megatron_zppo.train.steps import PolicyTrainer

    from gpu_check import TINY, save_random_model

    shape = dict(TINY, max_position_embeddings=1024) if smoke else QWEN3_1B
    kind = "fp32" if smoke else "bf16"
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            hf_dir = save_random_model(tmp, shape, torch.float32 if smoke else torch.bfloat16)
            policy, padded_trainer = build(hf_dir, kind, train=True)
            diff = thd_parity(policy, shape["vocab_size"])
            verdict = "ok" if diff < (1e-4 if smoke else 0.1) else "MISMATCH"
            rows.append(f"| packing | THD packed row vs padded rows, {kind} log-probs | max abs diff {diff:.2e} "
                        f"({verdict}) |")
            packed_trainer = PolicyTrainer(policy, padded_trainer.optimizer, padded_trainer.scheduler,
                                           with_entropy=False, variable_shapes=True)
            samples = _samples(shape["vocab_size"], smoke)
            max_len = shape["max_position_embeddings"]
            budget = BUDGET // 32 if smoke else BUDGET
            timed = {}
            for name, trainer, rule in (("fixed rows (2, padded)", padded_trainer, BatchRule(2, None, max_len)),
                                        ("packed rows", packed_trainer, BatchRule(2, budget, max_len, pack_rows=True))):
                micro, cost = _ppo_micro_batches(samples, rule)
                t0 = time.perf_counter()
                seconds = time_steps(trainer, micro, warmup, steps)
                timed[name] = seconds
                rows.append(f"| packing | {kind} PPO update, {len(samples)} samples, {name} | "
                            f"{cost.real_tokens / seconds:,.0f} real tokens/s ({seconds * 1e3:.0f} ms; padding "
                            f"efficiency {cost.padding_efficiency:.2f}; {time.perf_counter() - t0:.0f} s) |")
            ratio = timed["fixed rows (2, padded)"] / timed["packed rows"]
            rows.append(f"| packing | packed vs padded real tokens/s | {ratio:.2f}x |")
    except Exception as e:  # noqa: BLE001 - reported as a row
        rows.append(f"| packing | failed | {type(e).__name__}: {str(e)[:300]} |")
    return rows


def main() -> int:
    import argparse

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_check import build, time_steps

    from megatron_zppo.train import cpu_compat, parallel

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    cpu_compat.enable()
    parallel.initialize(parallel.ParallelConfig(seed=0))
    try:
        rows = packing_rows(build, time_steps, args.cpu_smoke, args.warmup, args.steps)
    finally:
        parallel.destroy()
    print("\n".join(rows))
    return 0 if not any("failed" in r or "MISMATCH" in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
