"""Padding and data-parallel balance of the trainer's micro-batch rules, at the paper's shape and on CPU.

(a) No model: one mini-batch of the paper's shape, simulated with a seed. 96 questions x 8
    rollouts = 768 samples; a quarter of the questions are reformulated (BCQ/NCQ) prompts, which
    carry a teacher answer (+1,000-3,000 tokens); prompts are 200-1,200 tokens (image tokens
    included); responses are log-normal with median 2,048 and sigma 0.7, capped at 12,288 (about
    half a percent hit the cap, as long-tailed rollouts do); micro-batch 2; DP = 48.
    - today's rule (``train.micro_batch_size``): 2 rows per micro-batch, samples dealt to ranks by
      stride, every row padded to the longest of its rank's share (trainer.py ``_run``);
    - the new rule (``train.max_tokens_per_micro_batch``, budget 16,384 as in examples/paper):
      token-balanced ranks, micro-batches packed under the budget, each micro-batch's sequences
      back to back in one row (what the trainer runs); also printed: the same budget with rows
      padded to their micro-batch's longest (what logit distillation's teacher forward gets).
    padding_efficiency = real / computed tokens; dp_imbalance = max / mean computed tokens per rank.
(b) The toy Qwen3 on this CPU (packed rows, as for a text student), the same shape scaled down by 32 in length (responses capped at
    384, median 64; prompts 6-38 plus 31-94 for reformulated ones) and to 64 samples on one rank:
    real tokens per second of one PPO update, the packed path vs today's padded path, timed
    alternately in the same run (median of ``--steps``).

Run: python benchmarks/bench_packing.py [--steps 3]
Last lines: padding_efficiency=<new rule, (a)>  dp_imbalance=<new rule, (a)>
            packed_vs_padded_ratio=<(b) packed real tokens/s over padded real tokens/s>
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/bench_packing.py` from anywhere

import torch  # noqa: E402

from benchmarks.bench_trainer import _interleaved_medians  # noqa: E402
from megatron_zppo.core.loss import LossConfig  # noqa: E402
from megatron_zppo.core.records import PromptKind, Sample  # noqa: E402
from megatron_zppo.train.micro_batches import BatchRule, rank_micro_batches  # noqa: E402
from megatron_zppo.train.packing import pack, plan_cost, stride_plan  # noqa: E402

PAPER = dict(questions=96, rollouts=8, reformulated=0.25, prompt=(200, 1200), teacher=(1000, 3000),
             median=2048, sigma=0.7, cap=12288, micro=2, dp=48, budget=16384)
MAX_SEQ_LEN = 32768


def paper_lengths(seed: int = 0, scale: float = 1.0, questions: int | None = None) -> list[tuple[int, int]]:
    """(prompt, response) token lengths of one mini-batch, grouped by question as rollouts arrive."""
    rng = random.Random(seed)
    p = PAPER
    out = []
    for _ in range(questions or p["questions"]):
        prompt = rng.randint(*p["prompt"])
        if rng.random() < p["reformulated"]:
            prompt += rng.randint(*p["teacher"])
        for _ in range(p["rollouts"]):
            response = min(p["cap"], round(p["median"] * rng.lognormvariate(0.0, p["sigma"])))
            out.append((max(1, round(prompt / scale)), max(1, round(response / scale))))
    return out


def simulate() -> dict[str, object]:
    lengths = [a + b for a, b in paper_lengths()]
    today = plan_cost(lengths, stride_plan(len(lengths), PAPER["dp"], PAPER["micro"]), "rank",
                      PAPER["micro"])
    plan = pack(lengths, PAPER["budget"], PAPER["dp"], MAX_SEQ_LEN, padded=False)
    padded = pack(lengths, PAPER["budget"], PAPER["dp"], MAX_SEQ_LEN, padded=True)
    return {"lengths": lengths, "today": today, "new": plan_cost(lengths, plan, "none"),
            "padded_rows": plan_cost(lengths, padded, "micro"), "micro_batches": plan.micro_batches_per_rank}


# (b): a small Qwen3 and the paper's lengths divided by SCALE (budget too), one rank.
TOY = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           head_dim=32, vocab_size=1000, max_position_embeddings=1024, tie_word_embeddings=False)
SCALE, TOY_QUESTIONS = 32, 8


def _toy_samples(seed: int = 0) -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, (p, r) in enumerate(paper_lengths(seed, SCALE, TOY_QUESTIONS)):
        prompt = torch.randint(0, TOY["vocab_size"], (p,), generator=gen).tolist()
        response = torch.randint(0, TOY["vocab_size"], (r,), generator=gen).tolist()
        logprobs = (-3.0 + 0.3 * torch.randn(r, generator=gen)).tolist()
        adv = float(torch.randn((), generator=gen))
        out.append(Sample(f"q{i // 8}", f"q{i // 8}/{i % 8}", PromptKind.PLAIN, prompt, response, "", logprobs,
                          advantage=adv))
    return out


def _update(hf_dir: str, samples: list[Sample], budget: int | None):
    """One PPO update per call over ``samples`` as the trainer cuts them (old = rollout log-probs)."""
    from megatron_zppo.train.model import ModelConfig, build_policy
    from megatron_zppo.train.parallel import ParallelConfig
    from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config
    from megatron_zppo.train.steps import PolicyTrainer, PPOMicroBatch

    opt = OptimizerConfig(lr=1e-5)
    policy = build_policy(ModelConfig(hf_path=hf_dir), ParallelConfig(), ddp_config=ddp_config(opt))
    trainer = PolicyTrainer(policy, *build_optimizer(policy, opt), with_entropy=False,
                            variable_shapes=budget is not None)
    rule = BatchRule(PAPER["micro"], budget, TOY["max_position_embeddings"], pack_rows=True)
    batches, cost = rank_micro_batches(samples, rule, 0, 1)
    micro = []
    for seq, rows in batches:
        old = torch.zeros(len(rows), seq.response_width)
        for j, s in enumerate(rows):
            if s is not None:
                old[j, : len(s.logprobs)] = torch.tensor(s.logprobs)
        micro.append(PPOMicroBatch(seq, old, torch.tensor([s.advantage if s else 0.0 for s in rows])))
    return (lambda: trainer.ppo_step(micro, LossConfig())), cost


def measure(steps: int) -> float:
    """Real tokens/s of the packed update over that of the fixed-rows padded one (same run)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_zppo.train import cpu_compat, parallel

    cpu_compat.enable()
    samples = _toy_samples()
    parallel.initialize(parallel.ParallelConfig())
    try:
        with tempfile.TemporaryDirectory() as hf_dir:
            torch.manual_seed(0)
            Qwen3ForCausalLM(Qwen3Config(**TOY)).float().save_pretrained(hf_dir)
            padded, padded_cost = _update(hf_dir, samples, None)
            packed, packed_cost = _update(hf_dir, samples, PAPER["budget"] // SCALE)
            medians = _interleaved_medians({"padded": padded, "packed": packed}, warmup=1, steps=steps)
    finally:
        parallel.destroy()
    real = padded_cost.real_tokens
    print(f"(b) toy Qwen3 {TOY['hidden_size']}x{TOY['num_hidden_layers']} on CPU ({torch.get_num_threads()} "
          f"threads): {len(samples)} samples, {real} real tokens, budget {PAPER['budget'] // SCALE}")
    for name, cost in (("padded", padded_cost), ("packed", packed_cost)):
        t = medians[name]
        print(f"  {name}: {t * 1e3:.0f} ms/update, {real / t:.0f} real tokens/s, "
              f"padding_efficiency={cost.padding_efficiency:.3f}")
    return medians["padded"] / medians["packed"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--skip-model", action="store_true", help="part (a) only")
    args = ap.parse_args()
    sim = simulate()
    lengths = sim["lengths"]
    print(f"(a) paper shape: {len(lengths)} samples, mean {sum(lengths) / len(lengths):.0f} tokens, "
          f"max {max(lengths)}, DP={PAPER['dp']}, budget {PAPER['budget']}")
    for name in ("today", "new", "padded_rows"):
        c = sim[name]
        print(f"  {name:11s} real={c.real_tokens} computed={c.computed_tokens} "
              f"padding_efficiency={c.padding_efficiency:.3f} dp_imbalance={c.dp_imbalance:.3f}")
    print(f"  new rule: {sim['micro_batches']} micro-batches per rank "
          f"(today: {-(-len(lengths) // PAPER['dp'] // PAPER['micro'])})")
    ratio = None
    if not args.skip_model:
        ratio = measure(args.steps)
    print(f"padding_efficiency={sim['new'].padding_efficiency:.3f}")
    print(f"dp_imbalance={sim['new'].dp_imbalance:.3f}")
    if ratio is not None:
        print(f"packed_vs_padded_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
