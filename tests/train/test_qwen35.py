"""Qwen3.5 text students (hybrid Gated-DeltaNet + gated attention) on the Megatron trainer, on CPU.

A tiny random HF ``Qwen3_5ForCausalLM`` goes through the bridge into a Megatron GPTModel built from
the local spec and torch delta-rule path of ``megatron_zppo.train.qwen35_local_spec``. HF's own torch
fallback (no FLA / causal-conv1d here either) is the reference throughout.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megatron_zppo.train.logprobs import LogprobRequest, SequenceBatch, forward_response_logprobs
from tests.train.tolerances import FP32_VS_FP64
from megatron_zppo.train.model import ModelConfig, Policy, build_policy, export_hf_weights
from megatron_zppo.train.parallel import ParallelConfig
from tests.train.qwen35_worker import LAYER_TYPES, save_tiny_qwen35
from tests.train.tiny_qwen3 import ppo_loss_atol
from tests.train.workers import run_worker

REPO = Path(__file__).resolve().parents[2]
GDN_PARAMS = ("in_proj.weight", "in_proj.layer_norm_weight", "conv1d.weight", "A_log", "dt_bias",
              "out_norm.weight", "out_proj.weight")  # fmt: skip

# The first row is longer than the delta rule's 64-token chunk, so state passes between chunks.
PROMPTS = [[(7 * i) % 250 for i in range(66)], [9], [100, 101, 102, 103, 104], [1, 2]]
RESPONSES = [[7, 8, 9, 10, 11, 12], [42, 43], [200, 249, 0], [60, 61, 62, 63]]


@pytest.fixture(scope="module")
def tiny_qwen35_dir(tmp_path_factory):
    return save_tiny_qwen35(tmp_path_factory.mktemp("tiny_qwen35"))


@pytest.fixture(scope="module")
def policy(tiny_qwen35_dir, megatron_world) -> Policy:
    return build_policy(ModelConfig(hf_path=tiny_qwen35_dir), ParallelConfig())


def _hf_logprobs_and_entropy(hf_dir: str, batch: SequenceBatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float64)  # reference: tests/train/tolerances.py
    with torch.no_grad():
        logp = torch.log_softmax(model(batch.tokens).logits, dim=-1)
    width = batch.response_width
    lps, ents = torch.zeros(len(PROMPTS), width, dtype=torch.float64), torch.zeros(len(PROMPTS), width, dtype=torch.float64)
    for i, (p, n) in enumerate(zip(batch.prompt_lens.tolist(), batch.response_lens.tolist())):
        rows = logp[i, p - 1 : p - 1 + n]
        lps[i, :n] = rows.gather(-1, batch.tokens[i, p : p + n, None])[:, 0]
        ents[i, :n] = -(rows.exp() * rows).sum(-1)
    return lps, ents


def test_build_gives_gated_delta_net_and_gated_attention_layers_in_hf_order(policy):
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet
    from megatron.core.transformer.attention import SelfAttention

    (chunk,) = policy.chunks
    kinds = [(GatedDeltaNet, "linear_attention"), (SelfAttention, "full_attention")]  # or their subclasses
    assert [next(name for cls, name in kinds if isinstance(layer.self_attention, cls))
            for layer in chunk.decoder.layers] == LAYER_TYPES
    assert chunk.config.attention_output_gate and chunk.config.layernorm_zero_centered_gamma
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in chunk.parameters())


def test_logprobs_and_entropy_match_hf_in_fp32(policy, tiny_qwen35_dir):
    batch = SequenceBatch.from_lists(PROMPTS, RESPONSES)
    (chunk,) = policy.chunks
    with torch.no_grad():
        logprobs, entropy = forward_response_logprobs(chunk, LogprobRequest(batch, policy.vocab_size, 4, True))
    expected_lp, expected_ent = _hf_logprobs_and_entropy(tiny_qwen35_dir, batch)
    assert expected_lp.min() < -8.0  # far from uniform (log 250 = 5.5): the layers really matter
    torch.testing.assert_close(logprobs.double(), expected_lp, **FP32_VS_FP64)
    torch.testing.assert_close(entropy.double(), expected_ent, **FP32_VS_FP64)


def test_export_returns_every_hf_tensor_bit_exact(policy, tiny_qwen35_dir):
    expected = load_file(str(Path(tiny_qwen35_dir) / "model.safetensors"))
    exported = dict(pair for bucket in export_hf_weights(policy) for pair in bucket)
    assert exported.keys() == expected.keys()
    for name, tensor in expected.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name


def test_backward_reaches_every_gated_delta_net_parameter_and_channel(policy):
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet

    batch = SequenceBatch.from_lists(PROMPTS, RESPONSES)
    (chunk,) = policy.chunks
    chunk.zero_grad(set_to_none=True)
    logprobs, _ = forward_response_logprobs(chunk, LogprobRequest(batch, policy.vocab_size, 4))
    logprobs.sum().backward()
    try:
        gdn_layers = [layer.self_attention for layer in chunk.decoder.layers]
        gdn_layers = [module for module in gdn_layers if isinstance(module, GatedDeltaNet)]
        assert len(gdn_layers) == LAYER_TYPES.count("linear_attention")
        for i, gdn in enumerate(gdn_layers):
            params = dict(gdn.named_parameters())
            assert params.keys() == set(GDN_PARAMS)
            for name, param in params.items():
                # Every row (head, channel, q/k/v/z/beta/alpha output) gets a gradient of its own.
                per_row = param.grad.reshape(param.shape[0], -1).abs().amax(dim=1)
                assert (per_row > 0).all(), f"GDN layer {i}: {name} has rows without gradient"
    finally:
        chunk.zero_grad(set_to_none=True)


def test_ppo_step_matches_a_hand_written_hf_adamw_step(tiny_qwen35_dir, megatron_world):
    from transformers import AutoModelForCausalLM

    from megatron_zppo.train.optimizer import build_optimizer, ddp_config
    from megatron_zppo.train.steps import PolicyTrainer
    from tests.train.test_trainer import LOSS, OPT, _reference_ppo_step
    from tests.train.tiny_qwen3 import ppo_micro_batches

    policy = build_policy(ModelConfig(hf_path=tiny_qwen35_dir), ParallelConfig(), ddp_config=ddp_config(OPT))
    trainer = PolicyTrainer(policy, *build_optimizer(policy, OPT), chunk_size=2)
    before = {name: t.clone() for bucket in export_hf_weights(policy) for name, t in bucket}
    stats = trainer.ppo_step(ppo_micro_batches(rows_per_micro=2), LOSS)
    after = dict(pair for bucket in export_hf_weights(policy) for pair in bucket)

    hf_model = AutoModelForCausalLM.from_pretrained(tiny_qwen35_dir, dtype=torch.float32)
    expected, expected_loss, expected_grad_norm = _reference_ppo_step(hf_model, OPT)
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5, abs=ppo_loss_atol(tiny_qwen35_dir))
    assert stats["grad_norm"] == pytest.approx(expected_grad_norm, rel=1e-4)
    assert stats["grad_norm"] > OPT.clip_grad  # the clip is exercised
    assert after.keys() == expected.keys()
    for name, tensor in expected.items():
        assert (after[name] - before[name]).abs().max() > 0, f"{name} was not updated"
        torch.testing.assert_close(after[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def test_distributed_checkpoint_resumes_the_hybrid_model_exactly(tiny_qwen35_dir, megatron_world, tmp_path):
    # The fused-norm linears and GDN layers must shard and reload like Megatron's own modules.
    from tests.train.tiny_qwen3 import ppo_micro_batches

    assert_resume_is_exact(tiny_qwen35_dir, lambda: ppo_micro_batches(rows_per_micro=2), tmp_path / "ckpt")


def assert_resume_is_exact(hf_dir: str, micro_batches, ckpt: Path) -> None:
    """A PPO step, a checkpoint, a fresh trainer loading it: the next step is bit-identical."""
    from megatron_zppo.train.dist_checkpoint import load_checkpoint, save_checkpoint
    from megatron_zppo.train.optimizer import build_optimizer, ddp_config
    from megatron_zppo.train.steps import PolicyTrainer
    from tests.train.test_trainer import LOSS, OPT

    def trainer():
        policy = build_policy(ModelConfig(hf_path=hf_dir), ParallelConfig(), ddp_config=ddp_config(OPT))
        return PolicyTrainer(policy, *build_optimizer(policy, OPT), chunk_size=2)

    uninterrupted, resumed = trainer(), trainer()
    uninterrupted.ppo_step(micro_batches(), LOSS)
    save_checkpoint(uninterrupted.policy, uninterrupted.optimizer, uninterrupted.scheduler, str(ckpt))
    load_checkpoint(resumed.policy, resumed.optimizer, resumed.scheduler, str(ckpt))
    for t in (uninterrupted, resumed):
        t.ppo_step(micro_batches(), LOSS)
    expected = dict(pair for bucket in export_hf_weights(uninterrupted.policy) for pair in bucket)
    got = dict(pair for bucket in export_hf_weights(resumed.policy) for pair in bucket)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_configure_changes_nothing_with_cuda_and_fla_but_takes_the_torch_path_on_cuda_without_fla():
    # A fresh interpreter: the delta-rule fallback is process-wide once applied here. FLA is not
    # installed here, so "with FLA" is its import guard set as a successful import would leave it.
    script = textwrap.dedent(
        """
        import types, torch
        torch.cuda.is_available = lambda: True
        from megatron.core.ssm.gated_delta_net import common
        assert not common.HAVE_FLA  # this machine has no FLA, as the lent GPU machine has none
        common.HAVE_FLA, fla_l2norm = True, object()
        common.l2norm = fla_l2norm
        from megatron_zppo.train import qwen35_local_spec
        te_spec = object()
        provider = types.SimpleNamespace(transformer_layer_spec=te_spec, deterministic_mode=False)
        assert qwen35_local_spec.configure(provider, local_spec=False) == []
        assert provider.transformer_layer_spec is te_spec and provider.deterministic_mode is False
        assert qwen35_local_spec.enable_torch_gated_delta_rule() == []
        # A GPU without Transformer Engine still needs the local spec, but keeps FLA's kernels.
        assert qwen35_local_spec.configure(provider, local_spec=True) == ["transformer_layer_spec->local_block_spec"]
        assert provider.deterministic_mode is False and common.l2norm is fla_l2norm
        # A GPU without FLA (the lent machine): Megatron's torch conv1d and delta rule on CUDA.
        common.HAVE_FLA = False
        provider = types.SimpleNamespace(transformer_layer_spec=te_spec, deterministic_mode=False)
        changed = qwen35_local_spec.configure(provider, local_spec=True)
        assert provider.deterministic_mode is True and common.HAVE_FLA
        assert common.l2norm is qwen35_local_spec.torch_l2norm, changed
        from megatron.core.ssm.gated_delta_net import gdn
        from megatron_zppo.train import gated_delta_rule_torch
        assert gdn.torch_chunk_gated_delta_rule is gated_delta_rule_torch.chunk_gated_delta_rule, changed
        print("as expected")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), TORCHDYNAMO_DISABLE="1")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "as expected" in result.stdout


def _run_layout(hf_dir: str, out: Path, nproc: int, *layout_args: str) -> list[dict]:
    return run_worker("qwen35_worker.py", hf_dir, out, nproc, *layout_args)


@pytest.fixture(scope="module")
def single_process_step(tiny_qwen35_dir, tmp_path_factory) -> dict:
    (rank0,) = _run_layout(tiny_qwen35_dir, tmp_path_factory.mktemp("tp1") / "out", 1)
    return rank0


@pytest.mark.slow
@pytest.mark.parametrize("layout", [("--tp", "2"), ("--pp", "2")], ids=["tp2", "pp2"])
def test_tensor_and_pipeline_parallel_match_single_process(tiny_qwen35_dir, single_process_step, tmp_path, layout):
    # At TP=2 each rank holds half the GDN heads: this fails if the GDN output norm's partial
    # gradients are not summed over TP ranks (its exported weight then differs per rank).
    assert_layout_matches(single_process_step, _run_layout(tiny_qwen35_dir, tmp_path / "out", 2, *layout),
                          ppo_loss_atol(tiny_qwen35_dir))


def assert_layout_matches(reference: dict, ranks: list[dict], loss_atol: float) -> None:
    """Every rank's step under a TP/PP layout equals the single-process one."""
    last = ranks[-1]  # holds the log-probs and loss under either layout
    assert last["logprobs"].keys() == reference["logprobs"].keys()
    for key, lp in reference["logprobs"].items():
        torch.testing.assert_close(last["logprobs"][key], lp, atol=1e-5, rtol=1e-5, msg=key)
    assert last["stats"]["loss"] == pytest.approx(reference["stats"]["loss"], rel=1e-5, abs=loss_atol)
    for rank in ranks:
        assert rank["stats"]["grad_norm"] == pytest.approx(reference["stats"]["grad_norm"], rel=1e-5)
        assert rank["weights"].keys() == reference["weights"].keys()
        for name, weight in reference["weights"].items():
            torch.testing.assert_close(rank["weights"][name], weight, atol=1e-6, rtol=1e-5, msg=name)
