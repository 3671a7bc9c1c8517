"""Training throughput of our Megatron trainer against a plain PyTorch loop, on CPU, in one run.

Both sides train the same small random Qwen3 (hidden 256, 4 layers, vocab 2000, float32) on the
same PPO mini-batch (8 sequences x 256 tokens: 32 prompt + 224 response tokens) with the same loss
(megatron_zppo.core.loss.policy_loss), gradient clipping and AdamW settings:

- ours: ``PolicyTrainer.ppo_step`` (Megatron GPTModel, local layer spec, DDP + distributed
  optimizer at world size 1, chunked vocab-parallel log-probs, entropy off);
- plain: the Hugging Face model, forward, log-softmax and gather at response positions,
  ``policy_loss``, backward, ``clip_grad_norm_``, ``torch.optim.AdamW``.

Each side runs a few warm-up steps; then the two sides' steps are timed alternately (so load from
elsewhere on the machine hits both alike) and the median of ``--steps`` steps per side is reported.

Run: python benchmarks/bench_trainer.py [--steps 5] [--warmup 2]
Last line: trainer_vs_torch_ratio=<our step time / plain step time>  (> 1: we are slower)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

from megatron_zppo.core.loss import LossConfig, policy_loss  # noqa: E402

MODEL = dict(
    hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=64, vocab_size=2000, max_position_embeddings=512, tie_word_embeddings=False,
)  # fmt: skip
BATCH, PROMPT, RESPONSE = 8, 32, 224
LR, WEIGHT_DECAY, CLIP = 1e-5, 0.1, 1.0
LOSS = LossConfig()


def _save_model(path: str) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(**MODEL)).float().save_pretrained(path)


def _batch():
    """Tokens [B, S], old log-probs [B, T] and advantages [B], fixed by a seed."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, MODEL["vocab_size"], (BATCH, PROMPT + RESPONSE), generator=gen)
    old = -3.0 + 0.3 * torch.randn(BATCH, RESPONSE, generator=gen)
    advantages = torch.randn(BATCH, generator=gen)
    return tokens, old, advantages


def _interleaved_medians(steps_by_name: dict, warmup: int, steps: int) -> dict[str, float]:
    """Median seconds per step of each side, timing them alternately.

    Alternating step by step means a burst of load from elsewhere on the machine hits both sides
    alike instead of whichever happened to run at the time.
    """
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def our_step(hf_dir: str):
    """One ``PolicyTrainer.ppo_step`` per call; ``parallel.initialize`` must have run."""
    from megatron_zppo.train.logprobs import SequenceBatch
    from megatron_zppo.train.model import ModelConfig, build_policy
    from megatron_zppo.train.parallel import ParallelConfig
    from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config
    from megatron_zppo.train.steps import PolicyTrainer, PPOMicroBatch

    opt = OptimizerConfig(lr=LR, weight_decay=WEIGHT_DECAY, clip_grad=CLIP)
    policy = build_policy(ModelConfig(hf_path=hf_dir), ParallelConfig(), ddp_config=ddp_config(opt))
    trainer = PolicyTrainer(policy, *build_optimizer(policy, opt), with_entropy=False)
    tokens, old, advantages = _batch()
    sequences = SequenceBatch(tokens, torch.full((BATCH,), PROMPT), torch.full((BATCH,), RESPONSE), RESPONSE)
    micro = [PPOMicroBatch(sequences, old, advantages)]
    return lambda: trainer.ppo_step(micro, LOSS)


def plain_step(hf_dir: str):
    """One hand-written PPO step of the HF model per call."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.train()
    params = dict(model.named_parameters())
    groups = [  # as Megatron does: no weight decay on norm weights (1-D parameters)
        {"params": [p for p in params.values() if p.dim() > 1], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params.values() if p.dim() <= 1], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    tokens, old, advantages = _batch()
    mask = torch.ones(BATCH, RESPONSE)
    targets = tokens[:, PROMPT:]

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(tokens).logits[:, PROMPT - 1 : -1].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
        loss, _ = policy_loss(logprobs, old, advantages, mask, LOSS, normalizer=float(mask.sum()))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), CLIP)
        optimizer.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    tokens_per_step = BATCH * (PROMPT + RESPONSE)
    from megatron_zppo.train import cpu_compat, parallel

    cpu_compat.enable()
    parallel.initialize(parallel.ParallelConfig())
    try:
        with tempfile.TemporaryDirectory() as hf_dir:
            _save_model(hf_dir)
            sides = {"plain": plain_step(hf_dir), "ours": our_step(hf_dir)}
            medians = _interleaved_medians(sides, args.warmup, args.steps)
    finally:
        parallel.destroy()
    plain, ours = medians["plain"], medians["ours"]
    print(f"threads={torch.get_num_threads()} batch={BATCH}x{PROMPT + RESPONSE} tokens model={MODEL}")
    print(f"plain_torch: {plain * 1e3:.1f} ms/step, {tokens_per_step / plain:.0f} tokens/s")
    print(f"megatron_trainer: {ours * 1e3:.1f} ms/step, {tokens_per_step / ours:.0f} tokens/s")
    print(f"trainer_vs_torch_ratio={ours / plain:.3f}")


if __name__ == "__main__":
    main()
