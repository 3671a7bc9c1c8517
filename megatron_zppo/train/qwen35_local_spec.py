"""A local (torch, non-Transformer-Engine) Megatron layer spec for Qwen3.5 text (hybrid Gated-DeltaNet +
gated attention), and its Gated-DeltaNet path without FLA: Qwen3.5 without TE, FLA or CUDA.

Megatron-Bridge 0.6 maps HF ``Qwen3_5ForCausalLM`` onto a Megatron ``GPTModel`` whose block spec
(``get_transformer_block_with_experimental_attention_variant_spec``) only exists for Transformer
Engine, and whose ``GatedDeltaNet`` layers call flash-linear-attention (FLA) Triton kernels. Neither
runs on a CPU. Each piece below is named after what it works around:

- ``ZeroCenteredRMSNorm``: Megatron's only non-TE, non-Apex norm (``WrappedTorchNorm``) refuses
  ``layernorm_zero_centered_gamma``, which every Qwen3.5 norm uses (``x_hat * (1 + w)``).
- ``TorchLayerNormColumnParallelLinear``: ``LocalSpecProvider`` has no fused norm + column-parallel
  linear (it returns None), but ``GatedDeltaNet`` builds its ``in_proj`` from exactly that, and the
  bridge's Qwen3.5 mapping names the norms ``*.layer_norm_weight`` inside the fused linears.
  Keeping the TE layout (and those names) lets the bridge's mapping apply unchanged.
- ``HeadParallelRMSNorm``: GDN's output norm shares one weight across heads that TP splits, and
  Megatron-Core never all-reduces its gradient over TP ranks; at TP > 1 the copies would drift.
- ``local_block_spec``: the upstream block spec asserts ``transformer_impl == "transformer_engine"``
  and takes its full-attention layers from the TE GPT spec; this builds the same hybrid block from
  Megatron-Core modules (GatedDeltaNet, SelfAttention, MLP) and the classes above.
- ``enable_torch_gated_delta_rule``: without FLA, ``GatedDeltaNet`` refuses to build
  (``HAVE_FLA`` is False) and its q/k ``l2norm`` is None. Megatron ships plain-torch paths for the
  conv1d and the chunked delta rule, chosen by ``deterministic_mode``; the l2norm is missing,
  so we supply a torch one, and the delta rule is swapped for gated_delta_rule_torch.py's, which
  keeps the log-decays in float64 (Megatron's float32 ones drift by 5e-5 on video rows). This runs
  when CUDA is absent (Triton has no CPU driver) or FLA is (a GPU machine without it, such as the
  one benchmarks/gpu_check.py was run on).

``configure`` applies these to a bridge provider; the spec parts only when the local spec is
chosen, the delta-rule parts only without CUDA or without FLA. On a GPU with TE and FLA it changes
nothing. We never edit the installed packages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron.core.models.backends import LocalSpecProvider
from megatron.core.tensor_parallel.layers import ColumnParallelLinear

QWEN35_MODEL_TYPES = ("qwen3_5_text",)

_APPLIED: list[str] = []


def is_qwen35(hf_config) -> bool:
    """True for a Qwen3.5 text checkpoint (the bridge's ``Qwen35Bridge``)."""
    return getattr(hf_config, "model_type", None) in QWEN35_MODEL_TYPES


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, zero_centered: bool) -> torch.Tensor:
    # In float32 and in HF Qwen3.5's order (normalise, then scale), so fp32 logits match it.
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    scale = 1.0 + weight.float() if zero_centered else weight.float()
    return (normed * scale).to(x.dtype)


class ZeroCenteredRMSNorm(torch.nn.Module):
    """RMSNorm whose weight stores ``gamma - 1`` when ``config.layernorm_zero_centered_gamma``.

    Built by Megatron as ``norm(config=, hidden_size=, eps=)`` like any layer-norm builder. The
    weight is TP-replicated (no ``tensor_model_parallel`` attribute), as TE's norm is.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_):
        super().__init__()
        self.zero_centered = bool(config.layernorm_zero_centered_gamma)
        init = torch.zeros if self.zero_centered else torch.ones
        self.weight = torch.nn.Parameter(init(hidden_size, dtype=config.params_dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_norm(x, self.weight, self.eps, self.zero_centered)


class HeadParallelRMSNorm(ZeroCenteredRMSNorm):
    """GDN's ``out_norm``: one weight shared by all value heads, while each TP rank holds its own heads.

    Its gradient is therefore a partial sum on each TP rank, and Megatron-Core 0.19's
    ``finalize_model_grads`` all-reduces only q/k-norm and sequence-parallel weights, so at TP > 1
    the ranks' copies drift apart (with TE's spec too, unless sequence parallelism is on). Passing
    the weight through ``copy_to_tensor_model_parallel_region`` (identity forward, all-reduce
    backward) sums the partial gradients.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

        return _rms_norm(x, copy_to_tensor_model_parallel_region(self.weight), self.eps, self.zero_centered)


class TorchLayerNormColumnParallelLinear(ColumnParallelLinear):
    """RMSNorm then ``ColumnParallelLinear``: TE's ``LayerNormColumnParallelLinear`` in plain torch.

    The norm's weight is called ``layer_norm_weight`` like TE's, so the bridge maps HF's
    ``input_layernorm``/``post_attention_layernorm`` onto it (and, because the class name
    contains ``LayerNormColumnParallelLinear``, treats it as replicated across TP ranks).
    """

    def __init__(self, input_size: int, output_size: int, *, config, **kwargs):
        super().__init__(input_size, output_size, config=config, **kwargs)
        if config.normalization not in ("RMSNorm", "LayerNorm"):  # LayerNorm: the Qwen3.5 vision tower
            raise ValueError(f"only RMSNorm and LayerNorm are implemented here, not {config.normalization}")
        self.zero_centered = bool(config.layernorm_zero_centered_gamma)
        self.eps = config.layernorm_epsilon
        init = torch.zeros if self.zero_centered else torch.ones
        self.layer_norm_weight = torch.nn.Parameter(init(input_size, dtype=config.params_dtype))
        self.layer_norm_bias = None
        if config.normalization == "LayerNorm":
            if self.zero_centered:
                raise ValueError("a zero-centred LayerNorm is not implemented here")
            self.layer_norm_bias = torch.nn.Parameter(torch.zeros(input_size, dtype=config.params_dtype))

    def forward(self, input_: torch.Tensor, weight=None, runtime_gather_output=None):
        if self.layer_norm_bias is None:
            normed = _rms_norm(input_, self.layer_norm_weight, self.eps, self.zero_centered)
        else:
            normed = F.layer_norm(input_, input_.shape[-1:], self.layer_norm_weight, self.layer_norm_bias, self.eps)
        return super().forward(normed, weight=weight, runtime_gather_output=runtime_gather_output)


class _LocalFusedNormBackend(LocalSpecProvider):
    """Megatron's local backend, plus the fused norm + linear and zero-centred norm above."""

    def fuse_layernorm_and_linear(self) -> bool:
        return True

    def column_parallel_layer_norm_linear(self):
        return TorchLayerNormColumnParallelLinear

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False, has_residual: bool = False):
        return ZeroCenteredRMSNorm

    def core_attention(self):
        from megatron_zppo.train.packed_sequences import PackedCausalAttention

        return PackedCausalAttention  # DotProductAttention that also takes packed (THD) rows


def _self_attention_spec(backend, attention=None):
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.spec_utils import ModuleSpec

    return ModuleSpec(
        module=attention or SelfAttention,
        params={"attn_mask_type": AttnMaskType.causal},
        submodules=SelfAttentionSubmodules(
            linear_qkv=backend.column_parallel_layer_norm_linear(),
            core_attention=backend.core_attention(),
            linear_proj=backend.row_parallel_linear(),
            q_layernorm=backend.layer_norm(rms_norm=True, for_qk=True),
            k_layernorm=backend.layer_norm(rms_norm=True, for_qk=True),
        ),
    )


def _gated_delta_net_spec(backend):
    from megatron.core.ssm.gated_delta_net import GatedDeltaNetSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec

    from megatron_zppo.train.packed_sequences import SegmentedGatedDeltaNet

    return ModuleSpec(
        module=SegmentedGatedDeltaNet,  # GatedDeltaNet, run per sequence of a packed row on CPU
        submodules=GatedDeltaNetSubmodules(
            in_proj=backend.column_parallel_layer_norm_linear(),
            out_norm=HeadParallelRMSNorm,
            out_proj=backend.row_parallel_linear(),
        ),
    )


def local_block_spec(config, vp_stage: int | None = None, pp_rank: int | None = None, attention=None):
    """This pipeline stage's hybrid GDN/attention decoder block, from local (non-TE) modules.

    Same signature as the upstream ``get_transformer_block_with_experimental_attention_variant_spec``
    (the provider calls it with the finalised config); dense MLPs only. ``attention`` replaces
    ``SelfAttention`` in the full-attention layers (the VL model's multimodal-rotary attention).
    """
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.models.gpt.experimental_attention_variant_module_specs import get_linear_attention_pattern
    from megatron.core.models.gpt.gpt_layer_specs import get_mlp_module_spec_for_backend
    from megatron.core.transformer.identity_op import IdentityOp
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import (
        TransformerLayer,
        TransformerLayerSubmodules,
        get_transformer_layer_offset,
    )

    if config.num_moe_experts is not None:
        raise NotImplementedError("the local Qwen3.5 spec covers dense models only (no MoE)")
    if config.sequence_parallel:
        # The norms here would need their partial gradients summed over TP ranks, as TE's are.
        raise NotImplementedError("the local Qwen3.5 spec does not support sequence parallelism")
    if config.pipeline_model_parallel_layout is not None:
        raise NotImplementedError("the local Qwen3.5 spec does not take a custom pipeline layout")
    backend = _LocalFusedNormBackend()
    # Norms are fused into the linears that follow them, so the layer's own norms are identities.
    attention = {
        1: _gated_delta_net_spec(backend),
        0: _self_attention_spec(backend, attention),
    }
    mlp = get_mlp_module_spec_for_backend(backend=backend, num_experts=None)
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage, pp_rank=pp_rank)
    count = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    pattern = get_linear_attention_pattern(config)[offset : offset + count]
    layers = [
        ModuleSpec(
            module=TransformerLayer,
            submodules=TransformerLayerSubmodules(
                input_layernorm=IdentityOp,
                self_attention=attention[is_linear],
                self_attn_bda=get_bias_dropout_add,
                pre_mlp_layernorm=IdentityOp,
                mlp=mlp,
                mlp_bda=get_bias_dropout_add,
            ),
        )
        for is_linear in pattern
    ]
    return TransformerBlockSubmodules(layer_specs=layers, layer_norm=ZeroCenteredRMSNorm)


def torch_l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """FLA's ``l2norm`` (x / sqrt(sum x^2 + eps), in float32) in plain torch."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).sum(dim, keepdim=True) + eps)).to(x.dtype)


def needs_torch_gated_delta_rule() -> bool:
    """True without CUDA (FLA's Triton kernels cannot run) or without an importable FLA."""
    from megatron.core.ssm.gated_delta_net import common as gdn_common

    return bool(_APPLIED) or not torch.cuda.is_available() or not gdn_common.HAVE_FLA


def enable_torch_gated_delta_rule() -> list[str]:
    """Let ``GatedDeltaNet`` build and run without FLA; a no-op with CUDA and FLA.

    Megatron's torch conv1d and delta rule also need ``deterministic_mode=True`` on the model
    config (``configure`` sets it).
    """
    if _APPLIED or not needs_torch_gated_delta_rule():
        return list(_APPLIED)
    from megatron.core.ssm.gated_delta_net import common as gdn_common
    from megatron.core.ssm.gated_delta_net import gdn

    from megatron_zppo.train import gated_delta_rule_torch

    # The FLA import guard: GatedDeltaNet.__init__ raises ImportError while it is False.
    gdn_common.HAVE_FLA = True
    # Read as a module global by _prepare_input_for_gated_delta_rule (and FLA's is Triton).
    gdn_common.l2norm = torch_l2norm
    # Read by GatedDeltaNet.__init__ under deterministic_mode; Megatron's loses the log-decays to float32
    # rounding (gated_delta_rule_torch.py), which made TP=2 differ from one process on video rows.
    gdn.torch_chunk_gated_delta_rule = gated_delta_rule_torch.chunk_gated_delta_rule
    _APPLIED.append("gated_delta_net: HAVE_FLA=True, l2norm->torch_l2norm, "
                    "torch_chunk_gated_delta_rule->gated_delta_rule_torch.chunk_gated_delta_rule")
    return list(_APPLIED)


def configure(provider, local_spec: bool) -> list[str]:
    """Adapt the bridge's Qwen3.5 ``provider`` before ``finalize()``; returns what was changed."""
    changed = []
    if local_spec:
        provider.transformer_layer_spec = local_block_spec
        changed.append("transformer_layer_spec->local_block_spec")
    if needs_torch_gated_delta_rule():
        # Selects Megatron's F.conv1d and torch_chunk_gated_delta_rule instead of FLA's kernels.
        provider.deterministic_mode = True
        changed.append("deterministic_mode=True (torch conv1d and delta rule)")
        changed += enable_torch_gated_delta_rule()
    return changed
