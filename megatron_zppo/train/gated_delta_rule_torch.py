"""The chunked gated delta rule (Gated DeltaNet's linear attention) in plain torch, with its decays exact.

Megatron-Core's ``torch_chunk_gated_delta_rule`` (megatron/core/ssm/gated_delta_net/common.py, the
path ``GatedDeltaNet`` takes without FLA) and HF's copy of it run everything in float32, including
the cumulative log-decay ``G = cumsum(g)`` of each 64-token chunk and the differences
``G_i - G_j`` whose exponentials weight every token pair. A token with a strong forget gate has
``g`` near -90 (video frames' embeddings reach them: |G| passes 1000 within one chunk of a video
row), and float32 then rounds ``G`` to ~1e-4, so ``exp(G_i - G_j)`` is off by ~1e-4 relative even
where ``G_i - G_j`` is small. The result drifts from the exact rule by up to 5e-5 relative, and
because the error is rounding, any last-bit change in the inputs (TP=2's split matmuls) moves it:
video rows' log-probs moved 2e-4 between TP=1 and TP=2 (issue 19).

``chunk_gated_delta_rule`` below is the same algorithm with the log-decays, their differences and
their exponentials in float64 (cheap: O(chunk^2) elementwise per head); the matmuls stay in the
compute dtype (float32). It is within 2e-6 relative of a float64 recurrence on those rows, and
TP=1 and TP=2 agree to 1e-7 on the layer's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, cu_seqlens=None):
    """Megatron's ``torch_chunk_gated_delta_rule`` contract: q/k [B, T, H, K], v [B, T, H, V],
    g/beta [B, T, H]; returns (output [B, T, H, V] in q's dtype, final state [B, H, K, V] or None)."""
    if cu_seqlens is not None:
        raise NotImplementedError("the torch gated delta rule takes unpacked [B, T] rows, not cu_seqlens")
    if use_qk_l2norm_in_kernel:
        raise NotImplementedError("GatedDeltaNet l2-normalises q and k before calling the delta rule")
    out_dtype, dtype = q.dtype, torch.float32
    batch, length, heads, k_dim = k.shape
    pad = (chunk_size - length % chunk_size) % chunk_size
    q, k, v = (F.pad(x.transpose(1, 2).to(dtype), (0, 0, 0, pad)) for x in (q, k, v))
    beta = F.pad(beta.transpose(1, 2).to(dtype), (0, pad))
    # float64: the decays' whole point (see the module docstring); padded steps decay by 1.
    g = F.pad(g.transpose(1, 2).to(torch.float64), (0, pad)).reshape(batch, heads, -1, chunk_size).cumsum(-1)
    q = q * k_dim**-0.5
    chunks = (batch, heads, -1, chunk_size)
    q, k, v, k_beta, v_beta = (x.reshape(*chunks, x.shape[-1]) for x in (q, k, v, k * beta[..., None],
                                                                          v * beta[..., None]))
    decay = (g[..., :, None] - g[..., None, :]).tril().exp().tril().to(dtype)  # [B, H, n, C, C]

    # Within a chunk: (I + strictly-lower(beta k k^T * decay))^-1 by forward substitution.
    attn = -((k_beta @ k.transpose(-1, -2)) * decay).masked_fill(
        torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).triu(), 0)
    for i in range(1, chunk_size):
        row = attn[..., i, :i].clone()
        attn[..., i, :i] = row + (row[..., None] * attn[..., :i, :i].clone()).sum(-2)
    attn = attn + torch.eye(chunk_size, dtype=dtype, device=q.device)
    v = attn @ v_beta
    k_cumdecay = attn @ (k_beta * g.exp().to(dtype)[..., None])

    state = (torch.zeros(batch, heads, k_dim, v.shape[-1], dtype=dtype, device=q.device)
             if initial_state is None else initial_state.to(dtype))
    out = torch.zeros_like(v)
    future = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).triu(1)
    for c in range(g.shape[2]):
        q_c, k_c, g_c = q[:, :, c], k[:, :, c], g[:, :, c]
        scores = (q_c @ k_c.transpose(-1, -2) * decay[:, :, c]).masked_fill(future, 0)
        v_new = v[:, :, c] - k_cumdecay[:, :, c] @ state
        out[:, :, c] = (q_c * g_c.exp().to(dtype)[..., None]) @ state + scores @ v_new
        to_end = (g_c[..., -1:] - g_c).exp().to(dtype)[..., None]  # each token's decay to the chunk's end
        state = state * g_c[..., -1].exp().to(dtype)[..., None, None] + (k_c * to_end).transpose(-1, -2) @ v_new
    out = out.reshape(batch, heads, -1, out.shape[-1])[:, :, :length].transpose(1, 2).contiguous()
    return out.to(out_dtype), state if output_final_state else None
