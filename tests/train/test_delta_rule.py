"""gated_delta_rule_torch.chunk_gated_delta_rule against the gated delta rule's definition, in float64.

``with_float64_delta_rule`` gives an HF Qwen3.5 model that definition as its kernel: HF's torch
delta rule computes in float32 even in a float64 model, so without it an "HF float64" reference
carries the float32 log-decay error gated_delta_rule_torch.py removes (5e-5 on video rows' log-probs).
"""

import torch
import torch.nn.functional as F

from megatron_zppo.train.gated_delta_rule_torch import chunk_gated_delta_rule


def recurrent_float64(q, k, v, g, beta):
    """The rule token by token: S <- S exp(g); S <- S + k (beta (v - S^T k))^T; o = S^T q / sqrt(K)."""
    q, k, v, g, beta = (x.double() for x in (q, k, v, g, beta))
    state = torch.zeros(k.shape[0], k.shape[2], k.shape[3], v.shape[3], dtype=torch.float64)
    out = []
    for t in range(k.shape[1]):
        state = state * g[:, t].exp()[..., None, None]
        delta = (v[:, t] - torch.einsum("bhkv,bhk->bhv", state, k[:, t])) * beta[:, t][..., None]
        state = state + torch.einsum("bhk,bhv->bhkv", k[:, t], delta)
        out.append(torch.einsum("bhkv,bhk->bhv", state, q[:, t]) * k.shape[3] ** -0.5)
    return torch.stack(out, 1), state


def _hf_float64_delta_rule(query, key, value, g, beta, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, cu_seqlens=None, **_):
    if initial_state is not None or cu_seqlens is not None:
        raise NotImplementedError("the float64 reference rule runs whole unpacked rows without a cache")
    if use_qk_l2norm_in_kernel:  # HF's l2norm (FLA's), in float64
        query, key = (x.double() * torch.rsqrt(x.double().pow(2).sum(-1, keepdim=True) + 1e-6) for x in (query, key))
    out, state = recurrent_float64(query, key, value, g, beta)
    return out.to(value.dtype), state.to(value.dtype) if output_final_state else None


def with_float64_delta_rule(hf_model):
    """``hf_model`` with every Gated DeltaNet layer's delta rule computed in float64 by its definition."""
    layers = [m for m in hf_model.modules() if hasattr(m, "chunk_gated_delta_rule")]
    assert layers, "no Gated DeltaNet layers in the model"
    for layer in layers:
        layer.chunk_gated_delta_rule = _hf_float64_delta_rule  # the cached one-token path is not used here
    return hf_model


def rows_with_strong_forget_gates(length: int, seed: int = 0):
    """Two rows of 2 heads; the first 24 tokens forget almost everything (g ~ -90, as after a video's
    frames), the rest slowly (g ~ -0.05): within a chunk |cumsum(g)| passes 2000."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (F.normalize(torch.randn(2, length, 2, 16, generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(2, length, 2, 16, generator=gen)
    g = -0.05 * torch.rand(2, length, 2, generator=gen)
    g[:, :24] = -90 + torch.rand(2, 24, 2, generator=gen)
    return q, k, v, g, torch.rand(2, length, 2, generator=gen).sigmoid()


def _relative(out, ref):
    """Per token and head, as GDN's output norm sees it (it rescales each head's vector to unit RMS)."""
    return ((out.double() - ref).pow(2).mean(-1) / ref.pow(2).mean(-1)).sqrt()


def test_the_decays_stay_exact_where_megatrons_float32_cumsum_loses_them():
    from megatron.core.ssm.gated_delta_net.common import torch_chunk_gated_delta_rule

    inputs = rows_with_strong_forget_gates(48)
    ref, _ = recurrent_float64(*inputs)
    out, _ = chunk_gated_delta_rule(*inputs)
    megatron, _ = torch_chunk_gated_delta_rule(*inputs[:3], g=inputs[3], beta=inputs[4])
    assert out.dtype == torch.float32
    # float32 matmuls leave ~1e-6 (4e-6 over three chunks); Megatron's float32 log-decays leave 2e-4.
    assert _relative(out, ref).max() < 1e-5
    assert _relative(megatron, ref).max() > 5e-5


def test_several_chunks_and_the_final_state_follow_the_recurrence():
    q, k, v, g, beta = rows_with_strong_forget_gates(150, seed=1)  # 3 chunks of 64, the last one padded
    ref, ref_state = recurrent_float64(q, k, v, g, beta)
    out, state = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    assert out.shape == v.shape and _relative(out, ref).max() < 1e-5
    torch.testing.assert_close(state.double(), ref_state, atol=1e-5, rtol=1e-5)
    assert chunk_gated_delta_rule(q, k, v, g, beta)[1] is None
