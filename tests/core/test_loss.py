import math

import pytest
import torch

from megatron_zppo.config_io import from_dict
from megatron_zppo.core.loss import LossConfig, importance_weights, kl_penalty, policy_loss

OLD = torch.full((1, 3), -1.0, dtype=torch.float64)
NEW = OLD + torch.log(torch.tensor([[1.5, 0.5, 1.0]], dtype=torch.float64))
MASK = torch.ones(1, 3)


def test_asymmetric_clip_for_positive_advantage_matches_hand_values():
    loss, stats = policy_loss(NEW, OLD, torch.tensor([1.0], dtype=torch.float64), MASK, LossConfig())
    # per-token max(-r, -clamp(r, .8, 1.28)) = [-1.28, -0.5, -1.0]
    assert loss.item() == pytest.approx(-2.78 / 3)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    assert stats["ratio_max"].item() == pytest.approx(1.5) and stats["ratio_min"].item() == pytest.approx(0.5)


def test_negative_advantage_clips_low_side_and_dual_clip_bounds_the_loss():
    adv = torch.tensor([-1.0], dtype=torch.float64)
    loss, stats = policy_loss(NEW, OLD, adv, MASK, LossConfig(dual_clip_c=None))
    assert loss.item() == pytest.approx((1.5 + 0.8 + 1.0) / 3)  # max(r, clamp(r)) = [1.5, .8, 1]
    loss, stats = policy_loss(NEW, OLD, adv, MASK, LossConfig(dual_clip_c=1.2))
    assert loss.item() == pytest.approx((1.2 + 0.8 + 1.0) / 3)  # 1.5 bounded at c*|A| = 1.2
    assert stats["dual_clip_frac"].item() == pytest.approx(1 / 3)


def _reference(new, old, adv, mask, eps_low, eps_high, c):
    total, n = 0.0, 0
    for b in range(new.shape[0]):
        for t in range(new.shape[1]):
            if not mask[b, t]:
                continue
            r, a = math.exp(float(new[b, t] - old[b, t])), float(adv[b])
            obj = min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a)
            if a < 0:
                obj = max(obj, c * a)
            total, n = total - obj, n + 1
    return total / n


def test_matches_a_straightforward_reference_on_random_batches():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        new = -torch.rand(4, 7, generator=g, dtype=torch.float64) * 3
        old = new + torch.randn(4, 7, generator=g, dtype=torch.float64) * 0.5
        adv = torch.randn(4, generator=g, dtype=torch.float64)
        mask = torch.rand(4, 7, generator=g) > 0.3
        mask[:, 0] = True
        loss, _ = policy_loss(new, old, adv, mask, LossConfig(dual_clip_c=3.0))
        assert loss.item() == pytest.approx(_reference(new, old, adv, mask, 0.2, 0.28, 3.0), rel=1e-9)


def test_gradient_is_zero_on_clipped_tokens_and_padding():
    new = NEW.clone().requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _ = policy_loss(new, OLD, torch.tensor([1.0], dtype=torch.float64), mask, LossConfig())
    loss.backward()
    # token 0 clipped (r=1.5 > 1.28 with A>0), token 2 padding; token 1: d(-r/2)/dlogp = -r/2 = -0.25
    assert new.grad[0, 0] == 0 and new.grad[0, 2] == 0
    assert new.grad[0, 1].item() == pytest.approx(-0.25)


def test_micro_batch_shares_with_a_normalizer_sum_to_the_full_mean():
    g = torch.Generator().manual_seed(1)
    new, old = -torch.rand(6, 5, generator=g), -torch.rand(6, 5, generator=g)
    adv, mask = torch.randn(6, generator=g), (torch.rand(6, 5, generator=g) > 0.4).float()
    for agg, norm in (("token_mean", mask.sum()), ("seq_mean", 6)):
        cfg = LossConfig(aggregation=agg)
        full, _ = policy_loss(new, old, adv, mask, cfg)
        parts = [policy_loss(new[s], old[s], adv[s], mask[s], cfg, normalizer=norm)[0]
                 for s in (slice(0, 2), slice(2, 6))]
        assert sum(parts).item() == pytest.approx(full.item(), abs=1e-6)


def test_seq_mean_weights_sequences_equally():
    new = torch.zeros(2, 4)
    old = torch.zeros(2, 4)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1]])
    tok, _ = policy_loss(new, old, adv, mask, LossConfig())
    seq, _ = policy_loss(new, old, adv, mask, LossConfig(aggregation="seq_mean"))
    assert tok.item() == pytest.approx((-1 + 4) / 5) and seq.item() == pytest.approx(0.0)


def test_kl_estimators_and_kl_term_is_off_by_default():
    lp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(math.exp(-1) + 1 - 1)
    base, stats = policy_loss(NEW, OLD, torch.tensor([1.0], dtype=torch.float64), MASK, LossConfig())
    assert "kl" not in stats
    ref = OLD - 1
    with_kl, stats = policy_loss(NEW, OLD, torch.tensor([1.0], dtype=torch.float64), MASK,
                                 LossConfig(kl_coef=0.1, kl_estimator="k1"), ref_logprobs=ref)
    assert with_kl.item() == pytest.approx(base.item() + 0.1 * (NEW - ref).mean().item())


def test_truncated_importance_weight_scales_and_caps():
    rollout = OLD - torch.tensor([[0.0, math.log(2.0), math.log(10.0)]], dtype=torch.float64)
    base, _ = policy_loss(NEW, OLD, torch.tensor([1.0], dtype=torch.float64), MASK, LossConfig())
    tis, stats = policy_loss(NEW, OLD, torch.tensor([1.0], dtype=torch.float64), MASK,
                             LossConfig(tis_cap=3.0), rollout_logprobs=rollout)
    assert tis.item() == pytest.approx((-1.28 * 1 - 0.5 * 2 - 1.0 * 3) / 3)  # weights 1, 2, min(10, 3)
    with pytest.raises(ValueError, match="rollout_logprobs"):
        policy_loss(NEW, OLD, torch.tensor([1.0]), MASK, LossConfig(tis_cap=2.0))


def test_sequence_and_geometric_weights_and_masking_instead_of_truncation():
    rollout = OLD - torch.tensor([[0.0, math.log(2.0), math.log(10.0)]], dtype=torch.float64)  # token ratios 1, 2, 10
    adv, unweighted = torch.tensor([1.0], dtype=torch.float64), (-1.28 - 0.5 - 1.0) / 3

    def loss(**cfg):
        value, stats = policy_loss(NEW, OLD, adv, MASK, LossConfig(**cfg), rollout_logprobs=rollout)
        return value.item(), stats["tis_beyond_cap_frac"].item()

    assert loss(tis_cap=3.0, tis_mode="mask") == pytest.approx(((-1.28 * 1 - 0.5 * 2) / 3, 1 / 3))  # 10 left out
    assert loss(tis_cap=30.0, tis_level="sequence") == pytest.approx((20 * unweighted, 0.0))  # 1 x 2 x 10 each
    assert loss(tis_cap=3.0, tis_level="sequence") == pytest.approx((3 * unweighted, 1.0))
    assert loss(tis_cap=3.0, tis_level="sequence", tis_mode="mask") == pytest.approx((0.0, 1.0))
    assert loss(tis_cap=3.0, tis_level="geometric") == pytest.approx((20 ** (1 / 3) * unweighted, 0.0))
    # padding does not enter a sequence's weight; a long sequence's product is capped, not overflowed
    padded_mask = torch.tensor([[1.0, 1.0, 0.0]])
    cfg = LossConfig(tis_cap=30.0, tis_level="sequence")
    w, _ = importance_weights(OLD, rollout, padded_mask, cfg)
    assert w[0, :2].tolist() == pytest.approx([2.0, 2.0])
    long = torch.zeros(1, 4000)
    w, beyond = importance_weights(long, long - 1.0, torch.ones(1, 4000), cfg)  # e^4000
    assert torch.isfinite(w).all() and w.max().item() == pytest.approx(30.0) and beyond.all()
    with pytest.raises(ValueError, match="tis_level 'batch'"):
        LossConfig(tis_level="batch")


def test_non_finite_inputs_name_the_tensor():
    bad = NEW.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"logprobs has non-finite value nan at index \[0, 1\]"):
        policy_loss(bad, OLD, torch.tensor([1.0]), MASK, LossConfig())
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(NEW, OLD, torch.tensor([float("inf")]), MASK, LossConfig())


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="aggregation 'sum'"):
        LossConfig(aggregation="sum")
    with pytest.raises(ValueError, match="loss.dual_clip_c: 0.5 is out of range"):
        from_dict(LossConfig, {"dual_clip_c": 0.5}, "loss")  # ranges are checked where configs are read
