"""Several sequences in one row (Megatron's THD layout) on the local, CPU-capable layer spec.

A packed micro-batch is one row of concatenated sequences with ``PackedSeqParams`` (cu_seqlens)
saying where each starts: Megatron's attention then applies RoPE per sequence (positions restart
at each boundary) and hands the core attention [tokens, heads, dim] tensors. With Transformer
Engine, ``TEDotProductAttention`` and FLA's Gated DeltaNet kernels take cu_seqlens themselves. The
local spec's modules do not, so this module supplies the two exact CPU counterparts:

- ``PackedCausalAttention``: Megatron's ``DotProductAttention`` (which asserts
  ``packed_seq_params is None``) run once per sequence, so no token sees across a boundary and
  each sequence gets bit-for-bit the arithmetic of an unpacked row.
- ``SegmentedGatedDeltaNet``: Megatron's torch fallback ``torch_chunk_gated_delta_rule`` asserts
  ``cu_seqlens is None`` (and the THD path refuses ``deterministic_mode``, which selects that
  fallback), so the whole layer runs once per sequence: neither the recurrent state nor the short
  convolution's window carries over into the next sequence.

Both behave exactly as their parents without packed_seq_params. ``packed_row`` turns a
``SequenceBatch`` into the row, its per-sequence position ids and the PackedSeqParams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.ssm.gated_delta_net import GatedDeltaNet
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


def _bounds(packed_seq_params) -> list[int]:
    cu = packed_seq_params.cu_seqlens_q_padded
    return (packed_seq_params.cu_seqlens_q if cu is None else cu).tolist()


def _is_thd(packed_seq_params) -> bool:
    return packed_seq_params is not None and packed_seq_params.qkv_format == "thd"


class PackedCausalAttention(DotProductAttention):
    """Causal softmax attention within each sequence of a THD row (see the module docstring)."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if not _is_thd(packed_seq_params):
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias)
        bounds = _bounds(packed_seq_params)
        out = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            # [t, heads, dim] -> [s, b=1, heads, dim]; no mask given: the causal one is built.
            q, k, v = (x[start:end].unsqueeze(1) for x in (query, key, value))
            out.append(super().forward(q, k, v, None, AttnMaskType.causal, attention_bias))
        ctx = torch.cat(out)  # [t, 1, heads * dim]
        return ctx.reshape(ctx.shape[0], -1)


class SegmentedGatedDeltaNet(GatedDeltaNet):
    """The Gated DeltaNet layer once per sequence of a THD row, on the torch fallback path only."""

    def forward(self, hidden_states, attention_mask, inference_context=None, packed_seq_params=None,
                sequence_len_offset=None, **kwargs):
        if not (_is_thd(packed_seq_params) and self.config.deterministic_mode):
            return super().forward(hidden_states, attention_mask, inference_context, packed_seq_params,
                                   sequence_len_offset, **kwargs)
        if self.cp_size > 1 or self.sp_size > 1:
            raise NotImplementedError("segment-wise Gated DeltaNet: no context or sequence parallelism")
        bounds = _bounds(packed_seq_params)
        outs, bias = [], None
        for start, end in zip(bounds[:-1], bounds[1:]):
            out, bias = super().forward(hidden_states[start:end], attention_mask, inference_context, None,
                                        sequence_len_offset, **kwargs)
            outs.append(out)
        return torch.cat(outs), bias


def register_with_bridge() -> None:
    """Megatron-Bridge picks a weight's TP split by its module's class name; ours split as their
    parents do (GatedDeltaNet: column). Idempotent."""
    from megatron.bridge.models.conversion.param_mapping import AutoMapping

    AutoMapping.register_module_type(SegmentedGatedDeltaNet.__name__, "column")
    AutoMapping.register_module_type(PackedCausalAttention.__name__, "column")


def packed_local_layer_spec(config):
    """The bridge's local GPT layer spec (Qwen3) with the THD-capable causal core attention."""
    from megatron.bridge.models.gpt_provider import local_layer_spec

    spec = local_layer_spec(config)
    spec.submodules.self_attention.submodules.core_attention = PackedCausalAttention
    return spec


@dataclass(frozen=True)
class PackedRow:
    tokens: torch.Tensor  # [1, L]: the sequences back to back, no padding
    position_ids: torch.Tensor  # [1, L]: restarting at 0 for each sequence
    starts: torch.Tensor  # [B]: where each sequence begins in the row
    params: object  # megatron.core PackedSeqParams (qkv_format "thd", cu_seqlens)


def packed_row(tokens: torch.Tensor, lengths: torch.Tensor) -> PackedRow:
    """Rows of right-padded ``tokens`` [B, S] with ``lengths`` [B] real tokens, as one THD row."""
    from megatron.core.packed_seq_params import PackedSeqParams

    lengths = lengths.to(tokens.device)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=tokens.device)
    cu[1:] = torch.cumsum(lengths, 0)
    keep = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
    row = tokens[keep][None, :]
    positions = torch.cat([torch.arange(int(n), device=tokens.device) for n in lengths])[None, :]
    longest = int(lengths.max())
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                             max_seqlen_kv=longest)
    return PackedRow(row, positions, cu[:-1].long(), params)
