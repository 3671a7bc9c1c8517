"""Distributed checkpoints of policy + optimizer + scheduler resume training exactly.

Resume: 2 steps, save, load into a fresh policy/optimizer/scheduler, 1 more step must equal 3
uninterrupted steps bit for bit, with Adam's step count and moments restored. Resharding: a
checkpoint saved in one process loads at TP=2 or DP=2 (torchrun, gloo; tests/train/checkpoint_worker.py)
and one saved there loads in one process, with the same log-probs and the same next optimizer step.
"""

from pathlib import Path

import pytest
import torch

from megatron_zppo.run_checkpoint import CheckpointError, DamagedCheckpoint
from megatron_zppo.core.loss import LossConfig
from megatron_zppo.train.dist_checkpoint import adam_step_counts, load_checkpoint, save_checkpoint
from megatron_zppo.train.model import ModelConfig, build_policy, export_hf_weights
from megatron_zppo.train.parallel import ParallelConfig
from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config
from megatron_zppo.train.steps import PolicyTrainer
from tests.train.tiny_qwen3 import ppo_micro_batches
from tests.train.workers import run_worker

OPT = OptimizerConfig(lr=1e-3, eps=1e-4, clip_grad=0.1)  # see test_trainer.py for these values
LOSS = LossConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)


def _trainer(hf_dir, opt=OPT):
    policy = build_policy(ModelConfig(hf_path=hf_dir), ParallelConfig(), ddp_config=ddp_config(opt))
    return PolicyTrainer(policy, *build_optimizer(policy, opt), chunk_size=2)


def _train(trainer, steps):
    for _ in range(steps):
        trainer.ppo_step(ppo_micro_batches(rows_per_micro=2), LOSS)


def _weights(policy):
    return {name: t.clone() for bucket in export_hf_weights(policy) for name, t in bucket}


def _adam_moments(optimizer):
    """[(exp_avg, exp_avg_sq)] in the inner optimizer's parameter order (same for identical builds)."""
    from megatron_zppo.train.dist_checkpoint import _inner_torch_optimizers

    return [
        (inner.state[p]["exp_avg"].clone(), inner.state[p]["exp_avg_sq"].clone())
        for inner in _inner_torch_optimizers(optimizer)
        for group in inner.param_groups
        for p in group["params"]
    ]


@pytest.mark.parametrize("distributed_optimizer", [True, False], ids=["distributed_opt", "plain_opt"])
def test_resume_after_two_steps_equals_three_uninterrupted_steps(
    distributed_optimizer, tiny_qwen3_dir, megatron_world, tmp_path
):
    opt = OptimizerConfig(lr=1e-3, eps=1e-4, clip_grad=0.1, use_distributed_optimizer=distributed_optimizer)
    uninterrupted = _trainer(tiny_qwen3_dir, opt)
    _train(uninterrupted, 3)

    first = _trainer(tiny_qwen3_dir, opt)
    _train(first, 2)
    save_checkpoint(first.policy, first.optimizer, first.scheduler, str(tmp_path / "ckpt"), extra={"step": 2})

    resumed = _trainer(tiny_qwen3_dir, opt)
    extra = load_checkpoint(resumed.policy, resumed.optimizer, resumed.scheduler, str(tmp_path / "ckpt"))
    assert extra == {"step": 2}
    assert adam_step_counts(resumed.optimizer) == {2.0}
    assert resumed.scheduler.num_steps == 2
    for (m_saved, v_saved), (m_loaded, v_loaded) in zip(
        _adam_moments(first.optimizer), _adam_moments(resumed.optimizer), strict=True
    ):
        assert torch.equal(m_saved, m_loaded) and torch.equal(v_saved, v_loaded)
        assert v_loaded.abs().max() > 0  # real moments, not a fresh optimizer's zeros

    _train(resumed, 1)
    # One counter per parameter: a step tensor shared by all parameters would read 2 + #params.
    assert adam_step_counts(resumed.optimizer) == {3.0}
    assert adam_step_counts(uninterrupted.optimizer) == {3.0}
    expected, got = _weights(uninterrupted.policy), _weights(resumed.policy)
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), f"{name} differs after resume"


def test_model_only_checkpoint_round_trips_weights_and_refuses_optimizer_load(
    tiny_qwen3_dir, megatron_world, tmp_path
):
    trained = _trainer(tiny_qwen3_dir)
    _train(trained, 1)
    save_checkpoint(trained.policy, None, None, str(tmp_path / "model_only"))

    fresh = _trainer(tiny_qwen3_dir)
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        load_checkpoint(fresh.policy, fresh.optimizer, None, str(tmp_path / "model_only"))
    load_checkpoint(fresh.policy, None, None, str(tmp_path / "model_only"))
    expected, got = _weights(trained.policy), _weights(fresh.policy)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_bad_checkpoint_paths_give_clear_errors(tiny_qwen3_dir, megatron_world, tmp_path):
    trainer = _trainer(tiny_qwen3_dir)
    with pytest.raises(CheckpointError, match="not a Megatron distributed checkpoint"):
        load_checkpoint(trainer.policy, None, None, str(tmp_path / "missing"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "stale.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        save_checkpoint(trainer.policy, None, None, str(tmp_path / "full"))




def test_a_checkpoint_of_another_model_is_refused_naming_both(tiny_qwen3_dir, megatron_world, tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tests.train.tiny_qwen3 import TINY, save_with_perturbed_norms

    trainer = _trainer(tiny_qwen3_dir)
    save_checkpoint(trainer.policy, trainer.optimizer, trainer.scheduler, str(tmp_path / "ckpt"))
    narrow = Qwen3ForCausalLM(Qwen3Config(**{**TINY, "hidden_size": 32, "head_dim": 8})).float()
    other = _trainer(save_with_perturbed_norms(narrow, tmp_path / "narrow"))
    with pytest.raises(CheckpointError, match=r"ckpt was written for Qwen3ForCausalLM \(model_type=qwen3, "
                                              r"hidden_size=64, num_hidden_layers=2.*\); this run builds "
                                              r"Qwen3ForCausalLM \(model_type=qwen3, hidden_size=32, .*narrow"):
        load_checkpoint(other.policy, other.optimizer, other.scheduler, str(tmp_path / "ckpt"))


def test_a_shard_overwritten_with_random_bytes_is_named_not_unpickled(tiny_qwen3_dir, megatron_world, tmp_path):
    import os

    trainer = _trainer(tiny_qwen3_dir)
    save_checkpoint(trainer.policy, trainer.optimizer, trainer.scheduler, str(tmp_path / "ckpt"))
    shard = max((tmp_path / "ckpt").glob("*.distcp"), key=lambda f: f.stat().st_size)
    shard.write_bytes(os.urandom(shard.stat().st_size))
    with pytest.raises(DamagedCheckpoint, match=rf"checkpoint {tmp_path / 'ckpt'}: its files \(.*{shard.name}.*\) "
                                                r"cannot be read \(UnpicklingError: .*\); one of them is damaged"):
        load_checkpoint(trainer.policy, trainer.optimizer, trainer.scheduler, str(tmp_path / "ckpt"))


def _run_worker(hf_dir: str, out: Path, load: Path, nproc: int, *layout_args: str) -> list[dict]:
    return run_worker("checkpoint_worker.py", hf_dir, out, nproc, "--load", str(load), *layout_args)


def _logprobs(trainer):
    outputs = trainer.compute_logprobs([mb.sequences for mb in ppo_micro_batches(rows_per_micro=2)])
    return torch.cat([lp for lp, _ in outputs])


def _assert_weights_close(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    "layout_args",
    [
        pytest.param(("--tp", "2"), id="tp2"),
        # DP=2: the distributed optimizer really shards its state; saving gathers it, loading splits it.
        pytest.param((), id="dp2", marks=pytest.mark.slow),
    ],
)
def test_checkpoints_reshard_between_single_process_and_two_ranks(
    layout_args, tiny_qwen3_dir, megatron_world, tmp_path
):
    # TP=1 here: 2 steps, save, then a 3rd step as the uninterrupted reference.
    reference = _trainer(tiny_qwen3_dir)
    initial_logprobs = _logprobs(reference)
    _train(reference, 2)
    logprobs_after_2 = _logprobs(reference)
    assert (logprobs_after_2 - initial_logprobs).abs().max() > 1e-3  # loading the weights is visible
    save_checkpoint(reference.policy, reference.optimizer, reference.scheduler, str(tmp_path / "ckpt_tp1"),
                    extra={"layout": [1, 1]})  # fmt: skip
    _train(reference, 1)
    weights_after_3 = _weights(reference.policy)

    # Two ranks (torchrun, gloo): their own 2 steps + save, and a resume from the TP=1 checkpoint.
    ranks = _run_worker(tiny_qwen3_dir, tmp_path / "two_ranks", tmp_path / "ckpt_tp1", 2, *layout_args)
    for rank in ranks:
        assert rank["extra"] == {"layout": [1, 1]}
        assert rank["adam_steps_loaded"] == {2.0}
        torch.testing.assert_close(rank["logprobs_after_2"], logprobs_after_2, atol=1e-5, rtol=1e-5)
        # Single-process checkpoint on two ranks: the same model, up to float32 summation order.
        torch.testing.assert_close(rank["logprobs_loaded"], logprobs_after_2, atol=1e-6, rtol=1e-6)
        # ... and the same Adam moments: one more step lands where the uninterrupted run did.
        _assert_weights_close(rank["weights_after_3"], weights_after_3)

    # The two-rank checkpoint back in one process.
    resumed = _trainer(tiny_qwen3_dir)
    two_rank_ckpt = str(tmp_path / "two_ranks" / "ckpt")
    extra = load_checkpoint(resumed.policy, resumed.optimizer, resumed.scheduler, two_rank_ckpt)
    assert extra == {"layout": [2, 1] if layout_args else [1, 1]}
    assert adam_step_counts(resumed.optimizer) == {2.0}
    torch.testing.assert_close(_logprobs(resumed), ranks[0]["logprobs_after_2"], atol=1e-6, rtol=1e-6)
    _train(resumed, 1)
    _assert_weights_close(_weights(resumed.policy), weights_after_3)


def test_a_resume_refuses_settings_the_optimizer_state_carries_and_applies_the_others():
    from megatron_zppo.config import load_config
    from megatron_zppo.train.rl_trainer import resume_settings, settings_changes

    def settings(cfg, dp_size):
        return resume_settings(cfg.optimizer, ParallelConfig(cfg.train.tensor_parallel, cfg.train.pipeline_parallel),
                               dp_size)

    base = ["student.hf_path=s", "teacher.hf_path=t"]
    saved = settings(load_config(None, base), dp_size=2)
    changed = load_config(None, base + ["optimizer.beta2=0.99", "optimizer.eps=1e-6", "optimizer.clip_grad=0.5",
                                        "train.tensor_parallel=2"])
    refused, applied = settings_changes(saved, settings(changed, dp_size=1))
    assert refused == ["optimizer.beta2: 0.999 -> 0.99", "optimizer.eps: 1e-08 -> 1e-06"]
    assert applied == ["optimizer.clip_grad: 1.0 -> 0.5", "train.tensor_parallel: 1 -> 2", "data-parallel size: 2 -> 1"]
    assert settings_changes(saved, saved) == ([], [])
