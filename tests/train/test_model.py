"""The bridge round trip: HF Qwen3 -> Megatron GPTModel -> HF names and tensors."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megatron_zppo.train.model import ModelConfig, Policy, build_policy, export_hf_weights
from megatron_zppo.train.parallel import ParallelConfig


@pytest.fixture(scope="module")
def policy(tiny_qwen3_dir, megatron_world) -> Policy:
    return build_policy(ModelConfig(hf_path=tiny_qwen3_dir), ParallelConfig())


def test_build_policy_gives_a_local_spec_gpt_model_with_qk_norm(policy):
    (chunk,) = policy.chunks
    names = {name for name, _ in chunk.named_parameters()}
    assert "decoder.layers.0.self_attention.q_layernorm.weight" in names
    assert "decoder.layers.1.self_attention.k_layernorm.weight" in names
    assert policy.vocab_size == 250
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in chunk.parameters())


def test_export_returns_every_hf_tensor_bit_exact_in_several_buckets(policy, tiny_qwen3_dir):
    expected = load_file(str(Path(tiny_qwen3_dir) / "model.safetensors"))
    buckets = list(export_hf_weights(policy, bucket_bytes=64 << 10))
    assert len(buckets) > 1  # 64 KiB buckets cannot hold this ~0.4 MiB model
    exported = dict(pair for bucket in buckets for pair in bucket)
    assert exported.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(exported[name], tensor), name


def test_export_sees_a_weight_changed_in_megatron(policy):
    (chunk,) = policy.chunks
    weight = chunk.decoder.layers[0].self_attention.q_layernorm.weight
    before = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    try:
        exported = dict(pair for bucket in export_hf_weights(policy) for pair in bucket)
        assert torch.allclose(exported["model.layers.0.self_attn.q_norm.weight"], before + 1.0)
    finally:
        with torch.no_grad():
            weight.copy_(before)


def test_model_config_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="float16"):
        ModelConfig(hf_path="x", dtype="float16")
