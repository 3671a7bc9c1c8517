"""One Megatron PPO / SFT step equals the same step done by hand on the HF model with torch AdamW."""

import pytest
import torch

from megatron_zppo.core.loss import LossConfig, policy_loss
from megatron_zppo.train.logprobs import SequenceBatch
from megatron_zppo.train.model import ModelConfig, build_policy, export_hf_weights
from megatron_zppo.train.parallel import ParallelConfig
from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config
from megatron_zppo.train.steps import PolicyTrainer, PPOMicroBatch
from tests.train.tiny_qwen3 import ADVANTAGES, PROMPTS, RESPONSES, old_logprobs, packed_ppo_micro_batches, \
    ppo_loss_atol, ppo_micro_batches

# A large lr makes the update visible far above float32 noise; clipping at 0.1 is active here.
# eps=1e-4 instead of 1e-8: with a tiny eps, Adam's first step is lr*g/|g|, which turns the
# float-rounding noise of near-zero gradients into lr-sized differences, and is blind to the
# gradient's scale. With eps above those gradients the comparison is exact and scale-sensitive.
OPT = OptimizerConfig(lr=1e-3, eps=1e-4, clip_grad=0.1)
LOSS = LossConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)


def _trainer(tiny_qwen3_dir, opt=OPT, variable_shapes=False):
    policy = build_policy(ModelConfig(hf_path=tiny_qwen3_dir), ParallelConfig(), ddp_config=ddp_config(opt))
    return PolicyTrainer(policy, *build_optimizer(policy, opt), chunk_size=2, variable_shapes=variable_shapes)


def _exported(policy):
    return {name: t.clone() for bucket in export_hf_weights(policy) for name, t in bucket}


def _reference_ppo_step(hf_model, opt: OptimizerConfig):
    """The same PPO step by hand: HF forward, policy_loss, global-norm clip, torch AdamW."""
    batch, old = old_logprobs()
    mask = batch.response_mask()
    logits = hf_model(batch.tokens).logits.float()
    logp_all = torch.log_softmax(logits, dim=-1)
    rows = []
    for i in range(len(PROMPTS)):
        p, n = len(PROMPTS[i]), len(RESPONSES[i])
        lp = logp_all[i, p - 1 : p - 1 + n].gather(-1, batch.tokens[i, p : p + n, None])[:, 0]
        rows.append(torch.nn.functional.pad(lp, (0, batch.response_width - n)))
    loss, _ = policy_loss(torch.stack(rows), old, ADVANTAGES, mask, LOSS, normalizer=float(mask.sum()))
    loss.backward()
    params = dict(hf_model.named_parameters())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params.values(), opt.clip_grad))
    # Megatron applies weight decay to matrices only (not to norm weights).
    decay = [p for n, p in params.items() if p.dim() > 1]
    no_decay = [p for n, p in params.items() if p.dim() <= 1]
    torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
    ).step()  # fmt: skip
    return {n: p.detach() for n, p in hf_model.state_dict().items()}, float(loss.detach()), grad_norm


def test_ppo_step_matches_a_hand_written_hf_adamw_step(tiny_qwen3_dir, megatron_world):
    from transformers import AutoModelForCausalLM

    trainer = _trainer(tiny_qwen3_dir)
    before = _exported(trainer.policy)
    stats = trainer.ppo_step(ppo_micro_batches(rows_per_micro=2), LOSS)
    after = _exported(trainer.policy)

    hf_model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32)
    expected, expected_loss, expected_grad_norm = _reference_ppo_step(hf_model, OPT)
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5, abs=ppo_loss_atol(tiny_qwen3_dir))
    # Adam's update is blind to a constant gradient scale; the pre-clip norm is not.
    assert stats["grad_norm"] == pytest.approx(expected_grad_norm, rel=1e-4)
    assert stats["grad_norm"] > OPT.clip_grad  # so the clip really was exercised
    for name, tensor in expected.items():
        moved = (after[name] - before[name]).abs().max()
        assert moved > 0, f"{name} was not updated"
        torch.testing.assert_close(after[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def test_ppo_step_is_invariant_to_the_micro_batch_split(tiny_qwen3_dir, megatron_world):
    results = []
    for rows_per_micro in (4, 1):
        trainer = _trainer(tiny_qwen3_dir)
        stats = trainer.ppo_step(ppo_micro_batches(rows_per_micro), LOSS)
        results.append((stats, _exported(trainer.policy)))
    (stats_one, weights_one), (stats_four, weights_four) = results
    assert stats_one["loss"] == pytest.approx(stats_four["loss"], rel=1e-5, abs=ppo_loss_atol(tiny_qwen3_dir))
    assert stats_one["grad_norm"] == pytest.approx(stats_four["grad_norm"], rel=1e-5)
    for name in weights_one:
        torch.testing.assert_close(weights_four[name], weights_one[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("rows", ["padded", "packed"])
def test_ppo_step_on_packed_micro_batches_equals_the_padded_fixed_rows_step(tiny_qwen3_dir, megatron_world, rows):
    # "padded": each micro-batch's rows padded to its own longest; "packed": its sequences back to
    # back in one row (THD, no padding at all).
    packed = packed_ppo_micro_batches(pack_rows=rows == "packed")
    shapes = [tuple(mb.sequences.tokens.shape) for mb, _ in packed]
    if rows == "padded":
        assert len(set(shapes)) == len(shapes) and {s[0] for s in shapes} == {1, 2}  # own rows, own length each
    else:
        assert all(mb.sequences.packed for mb, _ in packed) and {s[0] for s in shapes} == {2}  # 2 sequences a row
    # An empty filler micro-batch (a short rank's, so that every rank runs the same count) adds nothing.
    filler = PPOMicroBatch(SequenceBatch.from_lists([[0]], [[]], response_width=1), torch.zeros(1, 1), torch.zeros(1))
    results = []
    for variable, micro_batches in ((False, ppo_micro_batches(rows_per_micro=2)),
                                    (True, [mb for mb, _ in packed] + [filler])):
        trainer = _trainer(tiny_qwen3_dir, variable_shapes=variable)
        results.append((trainer.ppo_step(micro_batches, LOSS), _exported(trainer.policy)))
    (padded, w_padded), (stats, w_packed) = results
    assert stats["loss"] == pytest.approx(padded["loss"], rel=1e-5, abs=ppo_loss_atol(tiny_qwen3_dir))
    assert stats["grad_norm"] == pytest.approx(padded["grad_norm"], rel=1e-5) and stats["grad_norm"] > OPT.clip_grad
    for name, w in w_padded.items():
        torch.testing.assert_close(w_packed[name], w, atol=1e-6, rtol=1e-5, msg=name)


def test_sft_steps_lower_the_response_cross_entropy(tiny_qwen3_dir, megatron_world):
    trainer = _trainer(tiny_qwen3_dir, OptimizerConfig(lr=1e-2))
    batches = [SequenceBatch.from_lists(PROMPTS[i : i + 2], RESPONSES[i : i + 2]) for i in (0, 2)]
    losses = [trainer.sft_step(batches)["loss"] for _ in range(5)]
    # Random init: the first loss is near log(vocab); five steps at lr 1e-2 must make progress.
    assert losses[0] == pytest.approx(torch.log(torch.tensor(250.0)).item(), rel=0.1)
    assert losses[-1] < losses[0] - 0.5, losses


def test_sft_step_matches_a_hand_written_cross_entropy_adamw_step(tiny_qwen3_dir, megatron_world):
    """Off-policy distillation's update: mean token cross-entropy on (prompt, response) pairs."""
    from transformers import AutoModelForCausalLM

    opt = OptimizerConfig(lr=1e-3, eps=1e-4, clip_grad=0.5)
    trainer = _trainer(tiny_qwen3_dir, opt)
    batches = [SequenceBatch.from_lists(PROMPTS[i : i + 2], RESPONSES[i : i + 2],
                                        response_width=max(map(len, RESPONSES))) for i in (0, 2)]
    stats = trainer.sft_step(batches)
    after = _exported(trainer.policy)

    hf_model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32)
    batch = SequenceBatch.from_lists(PROMPTS, RESPONSES)
    logp = torch.log_softmax(hf_model(batch.tokens).logits.float(), dim=-1)
    nll = [-logp[i, len(p) - 1 + t, r[t]] for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)) for t in range(len(r))]
    loss = torch.stack(nll).mean()  # every response token of the mini-batch weighs the same
    loss.backward()
    params = dict(hf_model.named_parameters())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params.values(), opt.clip_grad))
    torch.optim.AdamW(
        [{"params": [p for p in params.values() if p.dim() > 1], "weight_decay": opt.weight_decay},
         {"params": [p for p in params.values() if p.dim() <= 1], "weight_decay": 0.0}],
        lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
    ).step()  # fmt: skip
    # A mean of positive terms (no cancellation): float32 keeps it within 32 eps = 3.8e-6 of itself.
    assert stats["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert stats["grad_norm"] == pytest.approx(grad_norm, rel=1e-4) and grad_norm > opt.clip_grad
    for name, tensor in hf_model.state_dict().items():
        torch.testing.assert_close(after[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("recompute,recomputed", [("selective", "self_attention.core_attention"), ("full", "mlp")])
def test_activation_recomputation_reruns_its_modules_and_changes_nothing_else(tiny_qwen3_dir, megatron_world,
                                                                              recompute, recomputed):
    from megatron.core.utils import unwrap_model

    results = {}
    for mode in ("none", recompute):
        policy = build_policy(ModelConfig(hf_path=tiny_qwen3_dir, recompute=mode), ParallelConfig(),
                              ddp_config=ddp_config(OPT))
        trainer = PolicyTrainer(policy, *build_optimizer(policy, OPT), chunk_size=2)
        module = unwrap_model(policy.chunks[0]).decoder.layers[0].get_submodule(recomputed)
        calls = []
        module.register_forward_hook(lambda *_: calls.append(1))
        stats = trainer.ppo_step(ppo_micro_batches(rows_per_micro=2), LOSS)
        results[mode] = (len(calls), stats, _exported(policy))
    (n_plain, s_plain, w_plain), (n_re, s_re, w_re) = results["none"], results[recompute]
    assert (n_plain, n_re) == (2, 4)  # 2 micro-batches; recomputation runs the module again in backward
    assert s_re["loss"] == s_plain["loss"] and s_re["grad_norm"] == pytest.approx(s_plain["grad_norm"], rel=1e-6)
    for name, w in w_plain.items():
        torch.testing.assert_close(w_re[name], w, atol=1e-7, rtol=1e-6, msg=name)


def test_micro_batches_of_different_sizes_are_rejected(tiny_qwen3_dir, megatron_world):
    trainer = _trainer(tiny_qwen3_dir)
    with pytest.raises(ValueError, match="one batch size"):
        one, three = (SequenceBatch.from_lists(PROMPTS[r], RESPONSES[r]) for r in (slice(0, 1), slice(1, 4)))
        trainer.sft_step([one, three])


def test_compute_logprobs_through_the_schedule_equals_a_direct_forward(tiny_qwen3_dir, megatron_world):
    from megatron_zppo.train.logprobs import LogprobRequest, forward_response_logprobs

    trainer = _trainer(tiny_qwen3_dir)
    micro = [mb.sequences for mb in ppo_micro_batches(rows_per_micro=2)]
    outputs = trainer.compute_logprobs(micro)
    assert len(outputs) == 2
    full, _ = old_logprobs()
    with torch.no_grad():
        direct, _ = forward_response_logprobs(trainer.policy.chunks[0], LogprobRequest(full, 250))
    torch.testing.assert_close(torch.cat([lp for lp, _ in outputs]), direct, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("aggregation, normalizer", [("token_mean", 15.0), ("seq_mean", 4.0)])
def test_ppo_step_normalises_by_the_whole_batch_and_reduces_stats(
    aggregation, normalizer, tiny_qwen3_dir, megatron_world
):
    seen = []

    def stand_in_loss(logprobs, old_logprobs, advantages, mask, cfg, *, normalizer=None, **_):
        seen.append((tuple(logprobs.shape), normalizer))
        value = torch.tensor(float(len(seen)))
        loss = -(logprobs * mask).sum() / normalizer
        return loss, {"ratio_max": value, "ratio_min": value, "clip_frac": value}

    cfg = LossConfig(aggregation=aggregation)
    stats = _trainer(tiny_qwen3_dir).ppo_step(ppo_micro_batches(rows_per_micro=1), cfg, loss_fn=stand_in_loss)
    assert sum(map(len, RESPONSES)) == 15
    assert seen == [((1, 6), normalizer)] * 4  # every micro-batch is normalised by the whole batch
    assert (stats["ratio_max"], stats["ratio_min"], stats["clip_frac"]) == (4.0, 1.0, 2.5)
