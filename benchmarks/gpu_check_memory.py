"""The chunked log-prob rows of the GPU check (benchmarks/gpu_check.py): peak memory of the trainer's
log-prob head at Qwen3.5's 248,320-token vocabulary.

``response_logprobs_processor`` (train/logprobs.py) computes logits ``chunk_size`` response positions at
a time and recomputes each chunk in backward, so [tokens x vocab] logits never exist at once. Here it
runs forward + backward on one 8k-token row through a real Megatron output layer (ColumnParallelLinear,
bf16), once with the trainer's 512-position chunks and once as a single chunk (the baseline: all
logits at once), in the same run. The rows give both peaks and that both give the same log-probs and
gradients. On CPU (the smoke run) there are no allocator statistics: only the agreement is reported.
"""

from __future__ import annotations

import torch

VOCAB = 248_320  # Qwen3.5's
HIDDEN = 2048
TOKENS, PROMPT, CHUNK = 8192, 128, 512
TINY = dict(vocab=2048, hidden=64, tokens=256, prompt=16, chunk=64)


def _head(vocab: int, hidden: int):
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(num_layers=1, hidden_size=hidden, num_attention_heads=1, bf16=True,
                            params_dtype=torch.bfloat16, use_cpu_initialization=not torch.cuda.is_available())
    torch.manual_seed(0)
    return ColumnParallelLinear(hidden, vocab, config=cfg, init_method=lambda w: torch.nn.init.normal_(w, std=0.02),
                                bias=False, gather_output=False)


def _forward_backward(head, hidden: torch.Tensor, batch, vocab: int, chunk: int):
    """(log-probs, d hidden, peak bytes above the inputs or None on CPU) of sum(log-probs)."""
    from megatron_zppo.train.logprobs import LogprobRequest, response_logprobs_processor

    hidden = hidden.detach().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    on_gpu = hidden.is_cuda
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    logprobs, _ = response_logprobs_processor(hidden_states=hidden, output_layer=head, output_weight=None,
                                              context=LogprobRequest(batch, vocab, chunk_size=chunk))
    logprobs.sum().backward()
    peak = None
    if on_gpu:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    return logprobs.detach().double().cpu(), hidden.grad.double().cpu(), peak


def chunked_logprob_memory_rows(smoke: bool) -> list[str]:
    from megatron_zppo.train.logprobs import SequenceBatch

    size = TINY if smoke else dict(vocab=VOCAB, hidden=HIDDEN, tokens=TOKENS, prompt=PROMPT, chunk=CHUNK)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    head = _head(size["vocab"], size["hidden"]).to(device)
    g = torch.Generator().manual_seed(0)
    n, p = size["tokens"], size["prompt"]
    batch = SequenceBatch(torch.randint(0, size["vocab"], (1, n), generator=g), torch.tensor([p]), torch.tensor([n - p]),
                          n - p).to(device)
    hidden = torch.randn(n, 1, size["hidden"], generator=g).to(device, torch.bfloat16)
    chunked = _forward_backward(head, hidden, batch, size["vocab"], size["chunk"])
    whole = _forward_backward(head, hidden, batch, size["vocab"], n)
    lp_diff = (chunked[0] - whole[0]).abs().max().item()
    grad_diff = (chunked[1] - whole[1]).abs().max().item()
    setting = f"1 x {n} tokens, vocab {size['vocab']:,}, hidden {size['hidden']}, bf16 head"
    if chunked[2] is None:
        memory = "peak memory: n/a on CPU (no allocator statistics)"
    else:
        memory = (f"peak {chunked[2] / 2**30:.2f} GiB in {size['chunk']}-position chunks vs {whole[2] / 2**30:.2f} GiB "
                  f"as one chunk ({whole[2] / max(chunked[2], 1):.1f}x less)")
    return [f"| chunked log-probs | forward + backward, {setting} | {memory}; chunked vs one chunk: log-probs max abs "
            f"diff {lp_diff:.2e}, d hidden max abs diff {grad_diff:.2e} |"]
