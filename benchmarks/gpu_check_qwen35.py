"""The Qwen3.5 text rows of the GPU check (benchmarks/gpu_check.py): a random Qwen3.5 hybrid model
(Gated DeltaNet + gated full attention, 3:1, at Qwen3.5's 248,320-token vocabulary) through our
``build_policy``: response log-probs in fp32 and bf16 against HF's model in float64 on CPU, and a PPO
step at 2k tokens.

Without flash-linear-attention (the lent GPU machine has none) the GDN layers run Megatron's torch
conv1d and chunked delta rule (train/qwen35_local_spec.py); the rows name the path that was built.
"""

from __future__ import annotations

from collections.abc import Iterator

import tempfile

import torch

from gpu_check_vl import LAYERS, TEXT, TINY_TEXT

VOCAB = 248_320


def save_random_qwen35(out_dir: str, smoke: bool) -> str:
    """Random weights with the norms perturbed (HF sets them to constants, which would hide a wrong mapping)."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    shape = dict(TINY_TEXT if smoke else dict(TEXT, vocab_size=VOCAB), num_hidden_layers=2 * len(LAYERS),
                 layer_types=2 * LAYERS, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**shape))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.to(torch.float32 if smoke else torch.bfloat16).save_pretrained(out_dir)
    return out_dir


def _gdn_path(policy) -> str:
    from megatron.core.utils import get_model_config

    return "torch delta rule" if get_model_config(policy.chunks[0]).deterministic_mode else "FLA kernels"


def qwen35_rows(check, smoke: bool, args) -> Iterator[str]:
    """The Markdown rows; ``check`` is the gpu_check module (its build, parity and timing helpers)."""
    from megatron_zppo.train.logprobs import SequenceBatch
    from megatron_zppo.train.steps import PPOMicroBatch

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = save_random_qwen35(tmp, smoke)
        vocab = TINY_TEXT["vocab_size"] if smoke else VOCAB
        batch = check.parity_batch(vocab)
        ref = check.reference_logprobs(hf_dir, batch)
        policy, _ = check.build(hf_dir, "fp32")
        diff = (check.trainer_logprobs(policy, batch) - ref).abs().max().item()
        yield (f"| Qwen3.5 hybrid log-prob parity | fp32 trainer ({_gdn_path(policy)}) vs float64 CPU | "
               f"max abs diff {diff:.2e} |")
        del policy
        kind = check.train_kind()[0]
        policy, trainer = check.build(hf_dir, kind, train=True)
        yield check.parity_row("Qwen3.5 hybrid log-prob parity", f"bf16 trainer ({_gdn_path(policy)}) vs float64 CPU",
                               policy, batch, ref)
        # Longer than the delta rule's 64-token chunk even in the smoke run, so state crosses chunks.
        seq = 96 if smoke else 2048
        prompt = seq // 8
        g = torch.Generator().manual_seed(seq)
        rows_batch = SequenceBatch(torch.randint(0, vocab, (1, seq), generator=g), torch.tensor([prompt]),
                                   torch.tensor([seq - prompt]), seq - prompt)
        mb = [PPOMicroBatch(rows_batch, torch.full((1, seq - prompt), -3.0), torch.ones(1))]
        seconds = check.time_steps(trainer, mb, args.warmup, args.steps)
        yield (f"| Qwen3.5 hybrid throughput | {kind} PPO step, 1 x {seq} tokens, {2 * len(LAYERS)} layers "
               f"({_gdn_path(policy)}) | {seq / seconds:,.0f} tokens/s ({seconds * 1e3:.1f} ms) |")
