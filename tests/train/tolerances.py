"""How close our float32 Megatron forward must be to HF's, and why.

The HF reference runs in float64, so only our side carries float32 rounding (except in HF's
Gated DeltaNet delta rule, which computes in float32 even then: the video tests, whose rows it
would move by 5e-5, give it the rule's float64 definition, see test_delta_rule.py): a float32 forward
of these tiny models is within 1.6e-5 of float64 on response log-probs (|log p| up to ~10),
measured for HF's and for our implementation at 1 and 2 threads (the summation order of the
CPU kernels changes with the thread count and load). Comparing float32 with float32 doubles
that noise, which is how a 1e-5 tolerance failed on a busy machine. 3e-5 leaves headroom and
is still an order below the smallest real defect these tests exist to catch (the bridge's tanh
GELU in the vision merger moves image rows by 2.4e-4).
"""

FP32_VS_FP64 = dict(atol=3e-5, rtol=1e-6)

# A loss that is a weighted sum of per-token log-prob terms of both signs (a PPO loss over mixed-sign
# advantages, a forward KL) can be much smaller than its terms, so a relative bound of itself does not
# follow from the arithmetic: a KL of 0.0066 summed from terms of size ~5 differed by 1.5e-5 relative
# between two float32 computations on another 2-core machine. Each float32 log-prob is off by at most
# 16 float32 steps of its own size (1.6e-5 at |log p| ~ 10, measured above), 32 when both sides are
# float32, so the loss is off by at most that times the weighted sum of |log p| it adds up.
FP32_EPS = 2.0**-23


def summed_logprob_terms_atol(magnitude: float) -> float:
    """The absolute float32 error bound of such a loss, given sum |weight * log p| over its terms."""
    return 32 * FP32_EPS * magnitude


def ppo_loss_atol(logprobs, old_logprobs, advantages, mask) -> float:
    """That bound for a PPO loss (a token mean): its terms are A * ratio, with ratio = exp(log p - old)."""
    import torch

    terms = advantages[:, None].abs() * torch.exp(logprobs - old_logprobs) * logprobs.abs() * mask
    return summed_logprob_terms_atol(float(terms.sum() / mask.sum()))
