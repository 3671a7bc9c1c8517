"""The baselines' maths: distillation advantages against the exact divergence gradient, the prefix
length rule, answer redaction for hints, and the token-level policy loss they feed."""

import math

import numpy as np
import pytest
import torch

from megatron_zppo.core.baselines import distill_advantages, prefix_length, redact_answers
from megatron_zppo.core.loss import LossConfig, policy_loss


def _divergence(p_s: torch.Tensor, p_t: torch.Tensor, which: str, beta: float) -> torch.Tensor:
    if which == "reverse_kl":
        return (p_s * (p_s.log() - p_t.log())).sum()
    m = beta * p_t + (1 - beta) * p_s
    return beta * (p_t * (p_t.log() - m.log())).sum() + (1 - beta) * (p_s * (p_s.log() - m.log())).sum()


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


def test_prefix_length_rounds_half_up_and_leaves_the_student_something():
    assert prefix_length(10, 0.4) == 4
    assert prefix_length(5, 0.5) == 3  # 2.5 rounds up
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
