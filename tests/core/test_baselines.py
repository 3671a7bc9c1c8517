"""The baselines' maths: distillation advantages against the exact divergence gradient, the prefix
length rule, answer redaction for hints, and the token-level policy loss they feed."""

import math

import numpy as np
import pytest
import torch

from megatron_zppo.core.baselines import distill_advantages, prefix_length, redact_answers, token_jsd
from megatron_zppo.core.loss import LossConfig, policy_loss


def _divergence(p_s: torch.Tensor, p_t: torch.Tensor, which: str, beta: float) -> torch.Tensor:
    if which == "reverse_kl":
        return (p_s * (p_s.log() - p_t.log())).sum()
    m = beta * p_t + (1 - beta) * p_s
    return beta * (p_t * (p_t.log() - m.log())).sum() + (1 - beta) * (p_s * (p_s.log() - m.log())).sum()


def test_token_jsd_by_hand_and_over_vocabulary_shards():
    p_s, p_t = torch.tensor([[0.5, 0.5]], dtype=torch.float64), torch.tensor([[0.9, 0.1]], dtype=torch.float64)
    # beta 0.5: M = [0.7, 0.3]
    kl_t = 0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
    kl_s = 0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)
    assert float(token_jsd(p_s.log(), p_t.log(), 0.5)) == pytest.approx(0.5 * kl_t + 0.5 * kl_s, rel=1e-12)
    # beta 0.2: M = 0.2 p_T + 0.8 p_S = [0.58, 0.42]
    kl_t = 0.9 * math.log(0.9 / 0.58) + 0.1 * math.log(0.1 / 0.42)
    kl_s = 0.5 * math.log(0.5 / 0.58) + 0.5 * math.log(0.5 / 0.42)
    assert float(token_jsd(p_s.log(), p_t.log(), 0.2)) == pytest.approx(0.2 * kl_t + 0.8 * kl_s, rel=1e-12)
    assert float(token_jsd(p_t.log(), p_t.log(), 0.5)) == pytest.approx(0.0, abs=1e-15)
    # the vocabulary in two shards, each normalised over the whole: the parts add up
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 8, generator=g).log_softmax(-1), torch.randn(3, 8, generator=g).log_softmax(-1)
    torch.testing.assert_close(token_jsd(s[:, :5], t[:, :5]) + token_jsd(s[:, 5:], t[:, 5:]), token_jsd(s, t))
    with pytest.raises(ValueError, match="beta must be in"):
        token_jsd(s, t, 1.0)


@pytest.mark.parametrize("which,beta", [("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.2), ("jsd", 0.9)])
def test_expected_score_function_gradient_equals_the_divergence_gradient(which, beta):
    """E_{y~p_S}[A(y) grad log p_S(y)] must be -grad D(p_S, p_T), over the full vocabulary."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    p_t = torch.softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)
    p_s = torch.softmax(logits, 0)
    (exact,) = torch.autograd.grad(_divergence(p_s, p_t, which, beta), logits)

    adv = torch.from_numpy(distill_advantages(p_s.detach().log().numpy(), p_t.log().numpy(), which, beta))
    surrogate = (p_s.detach() * adv * torch.log_softmax(logits, 0)).sum()  # sum_y p(y) A(y) log p(y)
    (estimate,) = torch.autograd.grad(surrogate, logits)
    torch.testing.assert_close(estimate, -exact, rtol=1e-10, atol=1e-12)


def test_distill_advantages_hand_values():
    s, t = [math.log(0.5), math.log(0.1)], [math.log(0.25), math.log(0.4)]
    np.testing.assert_allclose(distill_advantages(s, t, "reverse_kl"), [math.log(0.5), math.log(4.0)])
    # JSD, beta 1/2: -(1/2) log(p_s / m), m = (p_s + p_t) / 2
    np.testing.assert_allclose(distill_advantages(s, t, "jsd"),
                               [-0.5 * math.log(0.5 / 0.375), -0.5 * math.log(0.1 / 0.25)])
    assert distill_advantages(t, t, "jsd").tolist() == pytest.approx([0.0, 0.0], abs=1e-15)  # same policy: no push
    with pytest.raises(ValueError, match="2 student log-probs but 1 teacher"):
        distill_advantages(s, t[:1])
    with pytest.raises(ValueError, match="divergence 'fkl' unknown"):
        distill_advantages(s, t, "fkl")


def test_token_advantages_enter_the_clipped_loss_token_by_token():
    lp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    adv = torch.tensor([[0.5, -1.0, 2.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, _ = policy_loss(lp, lp.detach(), adv, mask, LossConfig())
    loss.backward()
    # At ratio 1 the surrogate's gradient is -A_t / (number of real tokens) on each real token.
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.25, 0.5, 0.0]]))
    assert loss.item() == pytest.approx(-(0.5 - 1.0) / 2)


def test_prefix_length_rounds_down_as_the_paper_and_leaves_the_student_something():
    assert prefix_length(10, 0.4) == 4
    assert prefix_length(5, 0.5) == 2  # floor(2.5)
    assert prefix_length(12, 0.4) == 4  # floor(4.8)
    assert prefix_length(2, 0.1) == 1  # at least one token
    assert prefix_length(3, 0.99) == 2  # never the whole response
    assert prefix_length(1, 0.4) == 0  # a one-token response has nothing to split
    with pytest.raises(ValueError, match="method.prefix.fraction must be in"):
        prefix_length(10, 1.0)


def test_hints_lose_every_boxed_answer_including_nested_braces():
    assert redact_answers(r"Add the tens first. So \boxed{42}.") == "Add the tens first. So ."
    assert redact_answers(r"\boxed{\frac{1}{2}} and \boxed{3} left") == "and  left"
    assert redact_answers("no answer here") == "no answer here"
    assert redact_answers(r"cut \boxed{unclosed") == "cut"
    for spelled in (r"\boxed 42", r"\boxed {42}", "\\boxed\n{42}", r"\fbox{42}"):  # Math-Verify reads all four
        assert "42" not in redact_answers(f"So {spelled}. Done"), spelled


class ScriptedTeacher:
    """The teacher's graded rollouts per question id, and the hint requests it was sent."""

    def __init__(self, rollouts):
        self.by_id, self.asked, self.hint_requests = rollouts, [], []

    def rollouts(self, questions, n, seed):
        self.asked += [q.id for q in questions]
        return {q.id: self.by_id.get(q.id, []) for q in questions}

    def hints(self, questions, seed=None, responses=None):
        self.hint_requests.append(([q.id for q in questions], responses))
        return [f"look at step one of {q.id}" for q in questions]  # Teacher.hints has cut the boxes out


def test_the_papers_hint_comes_from_a_correct_teacher_response_with_none_when_the_teacher_fails():
    from megatron_zppo.core.prompts import PromptTemplates
    from megatron_zppo.methods.hint import HintPrompts, QuestionHintPrompts
    from tests.core.factories import group, question, teacher

    qs = [question(f"q{i}") for i in range(4)]
    hard = [group(q, [0.0] * 4) for q in qs]  # hardest first, as the loop passes them
    scripted = {"q0": teacher(qs[0], [0.0, 1.0, 0.0, 1.0], ["wrong a", "right b \\boxed{5}", "wrong c", "right d"]),
                "q1": teacher(qs[1], [0.0, 0.0, 0.0, 0.0]),  # the teacher fails: no hint
                "q2": teacher(qs[2], [1.0, 0.0, 0.0, 0.0], ["right e", "x", "y", "z"]),
                "q3": teacher(qs[3], [1.0, 1.0, 1.0, 1.0])}
    grades = []
    t = ScriptedTeacher(scripted)
    templates = PromptTemplates.load()
    out = HintPrompts(t, templates, 4, grades.extend, seed=0)(hard, 2, step=0, times={})  # cap 2 of 3 solvable
    (asked, responses), = t.hint_requests
    assert asked == ["q0", "q2"] and responses[0] in ("right b \\boxed{5}", "right d") and responses[1] == "right e"
    assert len(grades) == 16 and out.teacher_acc == 7 / 16  # every teacher rollout graded before choosing
    assert [s.group_id for s in out.specs] == ["q0:plain:hint", "q2:plain:hint"]
    for spec, q in zip(out.specs, (qs[0], qs[2])):
        body = spec.text.removesuffix(templates.closer).strip()
        assert body.startswith(q.text) and body.endswith(f"<hint>\nlook at step one of {q.id}\n</hint>")
    request = templates.hint_request_prompt(qs[0].text, "right d")
    assert request.startswith(qs[0].text) and "<response>\nright d\n</response>" in request
    # the departure: from the question alone, the hardest `cap` questions, no teacher rollouts
    t = ScriptedTeacher({})
    out = QuestionHintPrompts(t, templates, 0, grades.extend, seed=0)(hard, 3, step=0, times={})
    assert t.hint_requests == [(["q0", "q1", "q2"], None)] and len(out.specs) == 3


def test_the_two_readings_of_the_pre_cap_differ_when_a_questions_only_branch_needs_the_teacher():
    from megatron_zppo.core.prompts import PromptTemplates
    from megatron_zppo.core.reformulate import ZppoConfig
    from megatron_zppo.methods.base import pre_capped
    from megatron_zppo.methods.zppo import ZppoPrompts
    from tests.core.factories import group, question, teacher

    qs = [question(f"q{i}") for i in range(3)]
    hard = [group(qs[0], [0.0] * 4), group(qs[1], [0.0, 0.0, 0.0, 1.0]), group(qs[2], [1.0, 1.0, 0.0, 0.0])]
    scripted = {"q0": teacher(qs[0], [0.0] * 4), "q1": teacher(qs[1], [1.0, 0.0, 0.0, 0.0]),
                "q2": teacher(qs[2], [1.0] * 4)}
    bcq_only = ZppoConfig(bcq=True, ncq=False, compression=False)  # the preset grpo_buffer_bcq
    built = {}
    for rule in ("hardest", "admissible"):
        t = ScriptedTeacher(scripted)
        out = ZppoPrompts(bcq_only, t, 4, PromptTemplates.load(), lambda s: None, 0)(pre_capped(hard, 1, rule), 1, 0, {})
        built[rule] = ([s.group_id for s in out.specs], t.asked)
    # the algorithm listing: the hardest question takes the one place, and its teacher failed: no prompt
    assert built["hardest"] == ([], ["q0"])
    # the appendix: the teacher runs on every hard question; the hardest it solved takes the place
    assert built["admissible"] == (["q1:plain:bcq"], ["q0", "q1", "q2"])
    # with NCQ on, every hard question admits a branch, and both readings choose the same
    both = ZppoConfig(bcq=True, ncq=True, compression=False)
    for rule in ("hardest", "admissible"):
        out = ZppoPrompts(both, ScriptedTeacher(scripted), 4, PromptTemplates.load(), lambda s: None, 0)(
            pre_capped(hard, 1, rule), 1, 0, {})
        assert [s.group_id for s in out.specs] == ["q0:plain:ncq"], rule
