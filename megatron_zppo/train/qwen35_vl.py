"""Qwen3.5 vision-language students: Megatron-Bridge's ``Qwen35VLBridge`` -> ``Qwen3VLModel``.

The language half is the hybrid Gated-DeltaNet model of qwen35_local_spec.py with mRoPE attention; the
vision half is a ViT whose patch merger feeds image embeddings into the prompt's image-placeholder
positions. Two things here apply everywhere, GPU included:

- ``exact_gelu_merger``: the bridge's vision config gives the patch merger tanh-approximated GELU
  (right for the ViT's MLPs), while HF's Qwen3.5 merger uses exact GELU (``nn.GELU()``). Left as
  it is, every image embedding is slightly off (~2.6e-5 in the logits of a tiny model, 1.8e-7
  once corrected), so the trained policy would not be the checkpoint the rollout engine serves.

And, only with the local (non-Transformer-Engine) spec, i.e. on CPU:

- The language block comes from ``qwen35_local_spec.local_block_spec`` with the bridge's
  ``Qwen3VLSelfAttention`` (multimodal rotary positions) for the full-attention layers.
- ``Qwen3VLModel.__init__`` builds its vision tower from Transformer Engine classes it imports by
  name; ``local_vision_modules`` swaps those names for local ones while the model is constructed:
  the fused norm + linear of qwen35_local_spec (LayerNorm here, TE's parameter names kept so the bridge's
  mapping applies), torch LayerNorm, Megatron's plain parallel linears, and ``PackedVisionAttention``.
- ``PackedVisionAttention``: the ViT attends within each image only (packed ``cu_seqlens``), which
  Megatron's local ``DotProductAttention`` cannot do.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

QWEN35_VL_MODEL_TYPES = ("qwen3_5",)


def is_qwen35_vl(hf_config) -> bool:
    """True for a Qwen3.5 vision-language checkpoint (the bridge's ``Qwen35VLBridge``)."""
    return getattr(hf_config, "model_type", None) in QWEN35_VL_MODEL_TYPES


class PackedVisionAttention(torch.nn.Module):
    """Bidirectional softmax attention within each packed segment (one image) of a THD sequence.

    Built and called like Megatron's core attention modules; query/key/value arrive as
    [tokens, heads, head_dim] with ``packed_seq_params.cu_seqlens_q`` marking the images.
    """

    def __init__(self, config, layer_number=None, attn_mask_type=None, attention_type=None,
                 attention_dropout=None, softmax_scale=None, **_):
        super().__init__()
        self.softmax_scale = softmax_scale

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is None or attention_bias is not None:
            raise NotImplementedError("PackedVisionAttention takes packed (THD) vision input only")
        bounds = packed_seq_params.cu_seqlens_q.tolist()
        out = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            # [t, h, d] -> [h, t, d] for SDPA; float32 like the ViT's softmax_in_fp32.
            q, k, v = (x[start:end].transpose(0, 1).float() for x in (query, key, value))
            ctx = F.scaled_dot_product_attention(q, k, v, scale=self.softmax_scale)
            out.append(ctx.transpose(0, 1).to(query.dtype))
        ctx = torch.cat(out)
        return ctx.reshape(ctx.shape[0], -1)


def _vision_layer_spec():
    """The ViT layer of ``get_vit_layer_with_transformer_engine_spec`` from local modules."""
    from megatron.bridge.models.qwen_vl.modelling_qwen3_vl.attention import Qwen3VLSelfAttention
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.tensor_parallel.layers import RowParallelLinear
    from megatron.core.transformer.attention import SelfAttentionSubmodules
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.identity_op import IdentityOp
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

    from megatron_zppo.train.qwen35_local_spec import TorchLayerNormColumnParallelLinear

    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=IdentityOp,  # fused into linear_qkv, as in TE's spec
            self_attention=ModuleSpec(
                module=Qwen3VLSelfAttention,
                params={"attn_mask_type": AttnMaskType.no_mask},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=TorchLayerNormColumnParallelLinear,
                    core_attention=PackedVisionAttention,
                    linear_proj=RowParallelLinear,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=IdentityOp,  # fused into linear_fc1
            mlp=ModuleSpec(
                module=MLP,
                submodules=MLPSubmodules(linear_fc1=TorchLayerNormColumnParallelLinear, linear_fc2=RowParallelLinear),
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )


class TorchLayerNorm(torch.nn.LayerNorm):
    """TENorm's LayerNorm (``weight``/``bias``) in torch, built like it: for the patch merger."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_):
        if config.normalization != "LayerNorm":
            raise ValueError(f"the vision merger norm is LayerNorm, not {config.normalization}")
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)


@contextlib.contextmanager
def local_vision_modules():
    """While active, ``Qwen3VLModel`` builds its vision tower from local (non-TE) modules."""
    from megatron.bridge.models.qwen_vl.modelling_qwen3_vl import model as qwen3vl_model
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    local = {
        "get_vit_layer_with_transformer_engine_spec": _vision_layer_spec,
        "TENorm": TorchLayerNorm,
        "TEColumnParallelLinear": ColumnParallelLinear,
        "TERowParallelLinear": RowParallelLinear,
    }
    saved = {name: getattr(qwen3vl_model, name) for name in local}
    try:
        for name, value in local.items():
            setattr(qwen3vl_model, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(qwen3vl_model, name, value)


def exact_gelu_merger(model) -> None:
    """Give the vision patch merger HF's exact GELU (see the module docstring)."""
    vision = getattr(model, "vision_model", None)
    if vision is not None and vision.merger is not None:
        vision.merger.activation_func = F.gelu


def configure(provider, local_spec: bool) -> list[str]:
    """Adapt the bridge's Qwen3.5-VL ``provider`` before ``finalize()``; returns what was changed."""
    from megatron.bridge.models.qwen_vl.modelling_qwen3_vl.attention import Qwen3VLSelfAttention

    from megatron_zppo.train import qwen35_local_spec

    changed = qwen35_local_spec.configure(provider, local_spec=False)  # the torch delta rule, when without CUDA
    provide = provider.provide
    if local_spec:
        provider.build_language_spec = functools.partial(qwen35_local_spec.local_block_spec, provider,
                                                         attention=Qwen3VLSelfAttention)
        changed.append("build_language_spec->local_block_spec (Qwen3VLSelfAttention)")

    def provide_fixed(*args, **kwargs):
        with local_vision_modules() if local_spec else contextlib.nullcontext():
            model = provide(*args, **kwargs)
        exact_gelu_merger(model)
        return model

    provider.provide = provide_fixed
    changed.append("vision merger GELU->exact" + (", local vision modules" if local_spec else ""))
    return changed
