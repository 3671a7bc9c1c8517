"""A tiny random Qwen3 checkpoint, written on the fly (no download), for tests and the worker."""

from pathlib import Path

import torch

from megatron_zppo.toy.shapes import QWEN3

TINY = dict(
    QWEN3,
    # Not a power of two on purpose; 125 rows per rank at TP=2 (the bridge does not pad the vocab).
    vocab_size=250,
    max_position_embeddings=128,
    tie_word_embeddings=False,
)


def save_with_perturbed_norms(model, path: Path) -> str:
    """HF initialises norms to constants; perturb them so a wrong norm mapping shows, then save."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(path)
    return str(path)


def save_tiny_qwen3(path: Path, seed: int = 0) -> str:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    return save_with_perturbed_norms(Qwen3ForCausalLM(Qwen3Config(**TINY)).float(), path)


# A fixed PPO mini-batch for that model: variable prompt and response lengths, mixed-sign advantages.
PROMPTS = [[5, 17, 3], [9], [100, 101, 102, 103, 104], [1, 2]]
RESPONSES = [[7, 8, 9, 10, 11, 12], [42, 43], [200, 249, 0], [60, 61, 62, 63]]
ADVANTAGES = torch.tensor([1.0, -0.5, 0.25, -1.0])


def old_logprobs(seed: int = 0):
    """The full batch and off-policy 'old' log-probs, so ratios differ from 1 and clipping triggers."""
    from megatron_zppo.train.logprobs import SequenceBatch

    gen = torch.Generator().manual_seed(seed)
    batch = SequenceBatch.from_lists(PROMPTS, RESPONSES)
    noise = torch.randn(batch.response_mask().shape, generator=gen)
    return batch, (-3.0 + 0.3 * noise) * batch.response_mask()


def ppo_micro_batches(rows_per_micro: int):
    from megatron_zppo.train.logprobs import SequenceBatch
    from megatron_zppo.train.steps import PPOMicroBatch

    full, old = old_logprobs()
    out = []
    for start in range(0, len(PROMPTS), rows_per_micro):
        rows = slice(start, start + rows_per_micro)
        seq = SequenceBatch.from_lists(PROMPTS[rows], RESPONSES[rows], response_width=full.response_width)
        out.append(PPOMicroBatch(seq, old[rows], ADVANTAGES[rows]))
    return out


PACK_BUDGET = 16  # the mini-batch's lengths are 9, 3, 8, 6: packed micro-batches of 1 and 2 rows


def packed_ppo_micro_batches(budget: int = PACK_BUDGET, dp_rank: int = 0, dp_size: int = 1, pack_rows: bool = False):
    """The same mini-batch under the token-budget rule: this rank's (micro-batch, sample indices),
    each micro-batch at its own rows and lengths (or, ``pack_rows``, as one packed row), an empty
    filler where the rank has fewer."""
    import dataclasses

    from megatron_zppo.train.logprobs import SequenceBatch
    from megatron_zppo.train.packing import pack
    from megatron_zppo.train.steps import PPOMicroBatch

    _, old = old_logprobs()
    lengths = [len(p) + len(r) for p, r in zip(PROMPTS, RESPONSES)]
    plan = pack(lengths, budget, dp_size, max_seq_len=TINY["max_position_embeddings"], padded=not pack_rows)
    out = []
    for micro in plan.ranks[dp_rank]:
        rows = list(micro)
        if not rows:
            empty = SequenceBatch.from_lists([[0]], [[]], response_width=1)
            out.append((PPOMicroBatch(empty, torch.zeros(1, 1), torch.zeros(1)), rows))
            continue
        seq = SequenceBatch.from_lists([PROMPTS[i] for i in rows], [RESPONSES[i] for i in rows])
        seq = dataclasses.replace(seq, packed=pack_rows)
        out.append((PPOMicroBatch(seq, old[rows, : seq.response_width], ADVANTAGES[rows]), rows))
    return out


def ppo_loss_atol(hf_dir: str) -> float:
    """The float32 error bound of a PPO loss on this mini-batch (tests/train/tolerances.py): its
    advantages have both signs, so it is bounded by sum |A * ratio * log p| / tokens, not by itself."""
    from transformers import AutoModelForCausalLM

    from tests.train import tolerances

    batch, old = old_logprobs()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float64)
    with torch.no_grad():
        logp_all = torch.log_softmax(model(batch.tokens).logits, dim=-1)
    mask = batch.response_mask()
    logp = torch.zeros_like(old, dtype=torch.float64)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        logp[i, : len(r)] = logp_all[i, len(p) - 1 : len(p) - 1 + len(r)].gather(-1, torch.tensor(r)[:, None])[:, 0]
    return tolerances.ppo_loss_atol(logp, old, ADVANTAGES, mask)
