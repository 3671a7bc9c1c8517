"""Every baseline preset runs end to end through the one loop, and does what its name says."""

import math

import pytest
import torch

from megatron_zppo.core.baselines import distill_advantages, prefix_length
from megatron_zppo.metrics import read_metrics
from megatron_zppo.core.records import STUDENT, TEACHER, PromptKind
from megatron_zppo.methods.distill import TARGETS
from tests.loop.test_pretrain_e2e import _overrides, _run


def _baseline_run(toy, tmp_path, algorithm, extra=()):
    run = tmp_path / algorithm
    _run(["--config", "examples/cpu_toy/zppo.yaml"] + _overrides(toy, run, 2, [
        f"run.algorithm={algorithm}", "run.dump_rollouts=true", "reward.grader=tests.loop.slow_graders:parity",
        "rollout.n_new=6", "rollout.teacher_group_size=4", *extra]))
    rollouts = [torch.load(run / "rollouts" / f"step_{i:06d}.pt", weights_only=False) for i in range(2)]
    return read_metrics(run / "metrics.jsonl"), rollouts


@pytest.mark.timeout(900)
def test_hint_prompts_carry_an_answer_free_hint_in_tags(toy_world, tmp_path):
    metrics, rollouts = _baseline_run(toy_world, tmp_path, "grpo_buffer_hint")
    hinted = [g for r in rollouts for g in r.reformulated]
    assert hinted and all(g.kind is PromptKind.HINT for g in hinted)
    assert sum(m["n_hint"] for m in metrics) == len(hinted) and all(m["n_bcq"] == m["n_ncq"] == 0 for m in metrics)
    assert all(m["teacher_acc_hard"] is not None for m in metrics if m["n_hard"])  # the teacher rolled out first
    for g in hinted:
        hint = g.prompt_text.split("<hint>\n")[1].split("\n</hint>")[0].strip()
        assert hint and "\\boxed{" not in hint and g.prompt_text.startswith(g.question.text)
    assert all(m["loss"] is not None for m in metrics)


@pytest.mark.timeout(900)
def test_prefix_prompts_end_with_teacher_tokens_that_are_never_trained_on(toy_world, tmp_path):
    _, rollouts = _baseline_run(toy_world, tmp_path, "grpo_buffer_prefix")
    prefixed = [g for r in rollouts for g in r.reformulated]
    assert prefixed and all(g.kind is PromptKind.PREFIX for g in prefixed)
    plain_prompt = {g.question.id: list(g.samples[0].prompt_ids) for r in rollouts for g in r.plain}
    for g in prefixed:
        s = g.samples[0]
        base = plain_prompt[g.question.id]
        forced = list(s.prompt_ids)[len(base):]
        assert list(s.prompt_ids)[:len(base)] == base and forced  # plain prompt, then the teacher's tokens
        assert s.answer_prefix and all(x.sampled_by == STUDENT for x in g.samples)
        assert len(s.logprobs) == len(s.response_ids)  # only the continuation is the sample's response


@pytest.mark.timeout(900)
@pytest.mark.parametrize("algorithm", ["off_distill", "teacher_sft"])
def test_off_policy_distillation_learns_on_correct_teacher_responses(toy_world, tmp_path, algorithm):
    metrics, rollouts = _baseline_run(toy_world, tmp_path, algorithm)
    targets = [r.method_data[TARGETS] for r in rollouts]
    assert any(targets) and all(m["n_sft_targets"] == len(t) for m, t in zip(metrics, targets))
    assert all(s.reward >= 1.0 and s.sampled_by == TEACHER for t in targets for s in t)  # correct, the teacher's
    assert all(not r.reformulated for r in rollouts) and metrics[0]["buffer_size"] == 0  # no buffer in this preset
    trained = [m for m, t in zip(metrics, targets) if t]
    assert all(m["loss"] > 0 and m["clip_frac"] is None for m in trained)  # no PPO statistics
    # the paper's: the JSD to the teacher's distributions (at most ln 2); the departure: cross-entropy
    assert all((0 < m["kl"] < math.log(2)) if algorithm == "off_distill" else m.get("kl") is None for m in trained)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("divergence", ["jsd"])
def test_sampled_token_distillation_advantages_come_from_teacher_logprobs(toy_world, tmp_path, divergence):
    from transformers import AutoModelForCausalLM

    metrics, rollouts = _baseline_run(toy_world, tmp_path, "sampled_token_distill_buffer",
                                      [f"method.sampled_token_distill.divergence={divergence}",
                                       "method.sampled_token_distill.jsd_beta=0.3"])
    teacher = AutoModelForCausalLM.from_pretrained(toy_world["teacher"]).eval()
    s = rollouts[0].plain[0].samples[0]
    ids = torch.tensor([list(s.prompt_ids) + list(s.response_ids)])
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits[0, len(s.prompt_ids) - 1:-1]
    t_lp = logits.log_softmax(-1).gather(-1, torch.tensor(list(s.response_ids))[:, None])[:, 0]
    want = distill_advantages(s.logprobs, t_lp.numpy(), divergence, 0.3)
    assert s.token_advantages == pytest.approx(want.tolist(), abs=1e-4)
    assert all(not r.reformulated for r in rollouts) and metrics[-1]["buffer_admitted"] >= 1  # the buffer is on
    assert all(math.isfinite(m["loss"]) and m["logprob_diff_mean"] < 1e-3 for m in metrics)


def test_prefix_rule_used_by_the_loop_matches_the_spec_default():
    assert prefix_length(20, 0.4) == 8


@pytest.mark.timeout(900)
@pytest.mark.parametrize("algorithm,extra", [("logit_distill", ["method.logit_distill.top_k=16"]),
                                             ("on_distill_buffer", [])])
def test_distillation_on_own_samples_runs_with_the_teacher_inside_the_trainer(toy_world, tmp_path, algorithm, extra):
    metrics, rollouts = _baseline_run(toy_world, tmp_path, algorithm, extra)
    assert all(not r.reformulated for r in rollouts)
    for m in metrics:  # forward KL (logit_distill) or the JSD (on_distill, at most ln 2) to the teacher, not PPO
        assert m["kl"] > 0 and m["loss"] > 0 and m["clip_frac"] is None and math.isfinite(m["grad_norm"])
        assert algorithm == "logit_distill" or m["kl"] < math.log(2)
    if algorithm == "logit_distill":
        assert metrics[0]["buffer_size"] == 0  # no buffer in this preset
    else:
        assert metrics[-1]["buffer_admitted"] >= 1


def test_methods_that_move_teacher_tokens_refuse_a_teacher_with_another_tokenizer(toy_world, tmp_path):
    from megatron_zppo.build import check_shared_tokenizer
    from megatron_zppo.config import load_config

    from transformers import AutoTokenizer

    other = tmp_path / "other"
    changed = AutoTokenizer.from_pretrained(toy_world["student"])
    changed.add_tokens(["<extra_teacher_token>"])
    changed.save_pretrained(other)
    base = [f"student.hf_path={toy_world['student']}", f"teacher.hf_path={other}"]
    check_shared_tokenizer(load_config(None, base + ["run.algorithm=zppo"]))  # text only crosses over: fine
    for algorithm in ("grpo_buffer_prefix", "on_distill", "off_distill", "teacher_sft", "sampled_token_distill",
                      "logit_distill"):
        with pytest.raises(ValueError, match="tokenizers of .* differ"):
            check_shared_tokenizer(load_config(None, base + [f"run.algorithm={algorithm}"]))
