"""Build the policy as a Megatron GPTModel from a Hugging Face checkpoint, and export it back.

Megatron-Bridge's ``AutoBridge`` owns the architecture mapping (HF Qwen3 and Qwen3.5 text ->
GPTModel and back; Qwen3.5's hybrid Gated-DeltaNet layers get their spec from qwen35_local_spec.py);
we only choose what the bridge cannot know: the layer spec (Transformer Engine or local torch
layers), the parameter dtype, and whether to wrap the chunks in Megatron's DDP. Parallel sizes
come from ``ParallelConfig`` and the already-initialised ``parallel_state``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from megatron_zppo.rollout.sync.buckets import bucketed
from megatron_zppo.train.parallel import ParallelConfig
from megatron_zppo.train.precision import PrecisionConfig, check_precision, detect, transformer_config_fields

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# recompute -> Megatron TransformerConfig fields
RECOMPUTE = {
    "none": {},
    "selective": {"recompute_granularity": "selective"},
    "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
}
# Fused kernels some bridges switch on (Llama's: TE's fused RoPE, Apex's persistent layer norm, the
# jit-fused bias+SwiGLU and bias+dropout). Local torch layers have no TE/Apex kernels to fuse with
# (Megatron refuses rope fusion without TE), so the local spec runs them unfused, as Qwen3's does.
LOCAL_UNFUSED = {"apply_rope_fusion": False, "persist_layer_norm": False, "bias_activation_fusion": False,
                 "bias_dropout_fusion": False}


@dataclass(frozen=True)
class ModelConfig:
    hf_path: str
    dtype: str = "float32"  # "bfloat16" on GPU; CPU tests compare against HF in float32
    # "auto": Transformer Engine layers when TE and a GPU are present, otherwise local torch layers.
    layer_spec: str = "auto"
    fp8: str = "none"  # none | delayed | tensorwise | blockwise | mxfp8 (see precision.py)
    fp8_param_gather: bool = False
    # Activation recomputation: none | selective (attention core only) | full (every layer's input kept,
    # the layer recomputed in backward): less activation memory for long responses, more compute.
    recompute: str = "none"

    @property
    def precision(self) -> PrecisionConfig:
        return PrecisionConfig(self.dtype, self.fp8, self.fp8_param_gather)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype={self.dtype!r}; expected one of {sorted(_DTYPES)}")
        if self.layer_spec not in ("auto", "local", "transformer_engine"):
            raise ValueError(f"layer_spec={self.layer_spec!r}; expected auto, local or transformer_engine")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"recompute={self.recompute!r}; expected one of {sorted(RECOMPUTE)}")


@dataclass
class Policy:
    """The model chunks of this rank plus what is needed to export them.

    ``chunks`` is Megatron's list of model chunks (one per virtual pipeline stage; possibly
    DDP-wrapped). ``vocab_size`` is the tokenizer's vocabulary: Megatron pads the output layer to a
    multiple of the TP size, and those padded logits must never receive probability mass.
    """

    bridge: Any
    chunks: list[torch.nn.Module]
    vocab_size: int


def _use_local_spec(layer_spec: str) -> bool:
    if layer_spec != "auto":
        return layer_spec == "local"
    has_te = importlib.util.find_spec("transformer_engine") is not None
    return not (has_te and torch.cuda.is_available())


def _has_fused_softmax_kernels() -> bool:
    names = ("scaled_upper_triang_masked_softmax_cuda", "scaled_masked_softmax_cuda", "scaled_softmax_cuda")
    return all(importlib.util.find_spec(name) is not None for name in names)


def _provider(cfg: ModelConfig, parallel: ParallelConfig, bridge):
    from megatron_zppo.train import qwen35_local_spec, qwen35_vl
    from megatron_zppo.train.packed_sequences import packed_local_layer_spec, register_with_bridge

    register_with_bridge()
    provider = bridge.to_megatron_provider(load_weights=True)
    local = _use_local_spec(cfg.layer_spec)
    hf_config = bridge.hf_pretrained.config
    if qwen35_local_spec.is_qwen35(hf_config):  # hybrid GDN/attention: its own local spec
        qwen35_local_spec.configure(provider, local_spec=local)
    elif qwen35_vl.is_qwen35_vl(hf_config):  # the same language model, plus a vision tower
        qwen35_vl.configure(provider, local_spec=local)
    elif local:  # Megatron's local layers, with a core attention that also takes packed (THD) rows
        provider.transformer_layer_spec = packed_local_layer_spec
    if local and not _has_fused_softmax_kernels():
        # The local attention's bf16 softmax imports Megatron's fused-softmax CUDA extensions (Apex's
        # build) when masked_softmax_fusion is on, the bridge's default; without them (a CPU, or a GPU
        # machine without Apex or TE) take its torch softmax rather than fail at the first forward.
        provider.masked_softmax_fusion = False
    for key, value in (LOCAL_UNFUSED if local else {}).items():
        setattr(provider, key, value)
    provider.tensor_model_parallel_size = parallel.tensor_parallel
    provider.pipeline_model_parallel_size = parallel.pipeline_parallel
    te_version, capability, cuda = detect()  # FP8 without TE or on the wrong GPU: an error, not a fallback
    check_precision(cfg.precision, te_version, capability, cuda_version=cuda, layer_spec=cfg.layer_spec)
    for key, value in transformer_config_fields(cfg.precision).items():  # bf16, params_dtype, fp8...
        setattr(provider, key, value)
    # Our losses arrive already divided by the whole mini-batch's token count (see trainer.py), so
    # Megatron must neither divide by the micro-batch count nor average gradients over DP ranks.
    # DDP reads this flag when it wraps the model, so it is set here and not in the trainer.
    provider.calculate_per_token_loss = True
    for key, value in RECOMPUTE[cfg.recompute].items():
        setattr(provider, key, value)
    provider.finalize()
    return provider


def build_policy(cfg: ModelConfig, parallel: ParallelConfig, ddp_config=None) -> Policy:
    """Load ``cfg.hf_path`` into Megatron model chunks for this rank.

    ``parallel.initialize`` must have run. ``ddp_config`` (a Megatron
    ``DistributedDataParallelConfig``) wraps the chunks in Megatron's DDP for training;
    leave it None for a forward-only model (reference policy, tests).
    """
    from megatron.bridge import AutoBridge  # importable once cpu_compat.enable() ran (parallel.initialize checks)

    bridge = AutoBridge.from_hf_pretrained(cfg.hf_path, dtype=_DTYPES[cfg.dtype])
    provider = _provider(cfg, parallel, bridge)
    chunks = provider.provide_distributed_model(
        ddp_config=ddp_config,
        wrap_with_ddp=ddp_config is not None,
        bf16=provider.bf16,
        fp16=False,
        # Without a GPU the model must be created on CPU; on GPU Megatron moves it to the device.
        use_cpu_initialization=not torch.cuda.is_available(),
    )
    text_config = bridge.hf_pretrained.config.get_text_config()  # a VL checkpoint nests it
    return Policy(bridge=bridge, chunks=chunks, vocab_size=int(text_config.vocab_size))


def export_hf_weights(
    policy: Policy, bucket_bytes: int = 256 << 20
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Yield the weights in HF naming, grouped into buckets of about ``bucket_bytes``.

    The bridge gathers TP/PP shards with collectives, so every rank of the model-parallel group
    must drain this generator, even if only one of them sends the weights on.
    Tensors are on CPU (what a weight sync to the rollout engine or to disk needs); on a CPU run they
    may share memory with the parameters, so a caller that keeps them past the next update copies them.
    Buckets follow the weight sync's one rule (rollout/sync/buckets.py): at most ``bucket_bytes``
    unless one tensor alone is larger.
    """
    tensors = policy.bridge.export_hf_weights(policy.chunks, cpu=True, show_progress=False)
    for bucket, _ in bucketed(tensors, bucket_bytes):
        yield bucket
