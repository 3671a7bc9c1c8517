"""Embedded (in-process HF) engine throughput vs a one-prompt-at-a-time `generate` loop.

Both sides serve the same random toy Qwen3 (megatron_zppo.toy.models, size "small") and sample
the same number of new tokens per prompt; the baseline is measured in the same run. Reported:
generated tokens/s of the engine at batch sizes 1, 8 and 64, of the plain loop, and their ratio.

Run: python benchmarks/bench_engine.py
Last line: engine_vs_loop_ratio_b64=<engine tokens/s at batch 64 / loop tokens/s>
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from transformers.utils import logging

from megatron_zppo.core.prompts import encode_prompt
from megatron_zppo.rollout.engine import GenerateRequest, SamplingParams
from megatron_zppo.rollout.hf_engine import HFEngine
from megatron_zppo.toy.models import build_tokenizer, new_qwen3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=64)
    args = ap.parse_args()
    logging.disable_progress_bar()
    torch.set_num_threads(2)
    d = tempfile.mkdtemp()
    texts = [f"State the final answer: {i % 10} + {i % 7} - {i % 3} =" for i in range(args.prompts)]
    tok = build_tokenizer(d, texts * 4, vocab_size=300)
    new_qwen3(d, "small", tok, seed=0)
    engine = HFEngine(d, max_batch=64)
    prompts = [encode_prompt(tok, t) for t in texts]
    # min_new_tokens is not an engine option; a random model rarely emits EOS, and tokens are counted.
    params = SamplingParams(max_new_tokens=args.new_tokens, seed=0)

    def engine_rate(batch: int) -> float:
        engine.max_batch = batch
        t0 = time.perf_counter()
        out = engine.generate([GenerateRequest(p, 1) for p in prompts], params)
        return sum(len(g[0].response_ids) for g in out) / (time.perf_counter() - t0)

    def loop_rate() -> float:
        n, t0 = 0, time.perf_counter()
        with torch.no_grad():
            for p in prompts:
                ids = torch.tensor([p])
                out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                            max_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
                n += out.shape[1] - ids.shape[1]
        return n / (time.perf_counter() - t0)

    engine_rate(8)  # warm-up
    loop = loop_rate()
    rates = {b: engine_rate(b) for b in (1, 8, 64)}
    print(f"{args.prompts} prompts x {args.new_tokens} new tokens, toy Qwen3 'small' on CPU ({torch.get_num_threads()} threads)")
    print(f"plain one-prompt generate loop: {loop:.0f} tokens/s")
    for b, r in rates.items():
        print(f"embedded engine, batch {b:>2}: {r:.0f} tokens/s ({r / loop:.2f}x the loop)")
    print(f"engine_vs_loop_ratio_b64={rates[64] / loop:.2f}")


if __name__ == "__main__":
    main()
