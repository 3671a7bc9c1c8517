"""Padding and data-parallel balance of the trainer's micro-batch rules, at the paper's shape and on CPU.

(a) No model: one mini-batch of the paper's shape, simulated with a seed. 96 questions x 8
    rollouts = 768 samples; a quarter of the questions are reformulated (BCQ/NCQ) prompts, which
    carry a teacher answer (+1,000-3,000 tokens); prompts are 200-1,200 tokens (image tokens
    included); responses are log-normal with median 2,048 and sigma 0.7, capped at 12,288 (about
    half a percent hit the cap, as long-tailed rollouts do); micro-batch 2; DP = 48.
    - today's rule (``train.micro_batch_size``): 2 rows per micro-batch, samples dealt to ranks by
      stride, every row padded to the longest of its rank's share (trainer.py ``_run``);
    - the new rule (``train.max_tokens_per_micro_batch``, budget 16,384 as in examples/paper):
      token-balanced ranks, micro-batches packed under the budget, each padded only to its own
      longest row (what the trainer runs); the fully packed cost (no padding) is printed too.
    padding_efficiency = real / computed tokens; dp_imbalance = max / mean computed tokens per rank.
(b) The toy Qwen3 on this CPU, the same shape scaled down by 32 in length (responses capped at
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

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

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
    plan = pack(lengths, PAPER["budget"], PAPER["dp"], MAX_SEQ_LEN)
    return {"lengths": lengths, "today": today, "new": plan_cost(lengths, plan, "micro"),
            "packed": plan_cost(lengths, plan, "none"), "micro_batches": plan.micro_batches_per_rank}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--skip-model", action="store_true", help="part (a) only")
    args = ap.parse_args()
    sim = simulate()
    lengths = sim["lengths"]
    print(f"(a) paper shape: {len(lengths)} samples, mean {sum(lengths) / len(lengths):.0f} tokens, "
          f"max {max(lengths)}, DP={PAPER['dp']}, budget {PAPER['budget']}")
    for name in ("today", "new", "packed"):
        c = sim[name]
        print(f"  {name:7s} real={c.real_tokens} computed={c.computed_tokens} "
              f"padding_efficiency={c.padding_efficiency:.3f} dp_imbalance={c.dp_imbalance:.3f}")
    print(f"  new rule: {sim['micro_batches']} micro-batches per rank "
          f"(today: {-(-len(lengths) // PAPER['dp'] // PAPER['micro'])})")
    ratio = None
    if not args.skip_model:
        from benchmarks.bench_packing_model import measure

        ratio = measure(args.steps)
    print(f"padding_efficiency={sim['new'].padding_efficiency:.3f}")
    print(f"dp_imbalance={sim['new'].dp_imbalance:.3f}")
    if ratio is not None:
        print(f"packed_vs_padded_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
