import math

import pytest
import torch

from megatron_zppo.core.advantages import NORMALIZATIONS, assign_advantages, grpo_advantages, reinforce_pp_advantages
from tests.core.factories import group, question

R = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0], dtype=torch.float64)
IDX = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)


def test_reinforce_pp_normalises_over_nontrivial_groups_only():
    adv = reinforce_pp_advantages(R, IDX)
    # centred: g0 [.75,-.25,-.25,-.25], g1 trivial, g2 [.5,.5,-.5,-.5];
    # std over the 8 non-trivial samples = sqrt((.5625 + 3*.0625 + 4*.25) / 8) = sqrt(.21875)
    std = math.sqrt(0.21875)
    expected = [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0, 0.5, 0.5, -0.5, -0.5]
    assert torch.allclose(adv, torch.tensor(expected, dtype=torch.float64) / std, atol=1e-5)
    assert (adv[4:8] == 0).all()


def test_reinforce_pp_ignores_how_many_trivial_groups_share_the_batch():
    more_trivial = torch.cat([R, torch.ones(8, dtype=torch.float64)])
    idx = torch.cat([IDX, torch.tensor([3] * 4 + [4] * 4)])
    assert torch.allclose(reinforce_pp_advantages(more_trivial, idx)[:12], reinforce_pp_advantages(R, IDX))


def test_reinforce_pp_all_trivial_batch_is_all_zero():
    assert (reinforce_pp_advantages(torch.ones(6, dtype=torch.float64), torch.tensor([0, 0, 0, 1, 1, 1])) == 0).all()


def test_grpo_uses_each_groups_own_unbiased_std_or_none():
    adv = grpo_advantages(R, IDX)
    assert torch.allclose(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5], dtype=torch.float64), atol=1e-5)
    assert (adv[4:8] == 0).all()
    assert torch.allclose(adv[8:], torch.tensor([1, 1, -1, -1], dtype=torch.float64) * 0.5 / math.sqrt(1 / 3),
                          atol=1e-5)
    raw = grpo_advantages(R, IDX, normalize_std=False)
    assert torch.allclose(raw[:4], torch.tensor([0.75, -0.25, -0.25, -0.25], dtype=torch.float64))


def test_groups_of_different_sizes_are_centred_separately():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    adv = grpo_advantages(r, torch.tensor([0, 0, 1, 1, 1]), normalize_std=False)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, 1 / 3, 1 / 3, -2 / 3], dtype=torch.float64))


def test_assign_advantages_writes_samples_and_checks_binary_rewards():
    q = question()
    groups = [group(q, [1, 0], gid="a"), group(q, [0, 0], gid="b")]
    assign_advantages(groups, "excluding_zero")
    assert groups[0].samples[0].advantage > 0 > groups[0].samples[1].advantage
    assert groups[1].samples[0].advantage == 0
    groups[0].samples[0].reward = 1.5
    with pytest.raises(ValueError, match="1.5"):
        assign_advantages(groups)
    with pytest.raises(ValueError, match="advantage.normalize 'ppo'"):
        assign_advantages(groups, "ppo")


def test_the_papers_normalisation_ablation_against_its_formulas():
    centred = torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0, 0.5, 0.5, -0.5, -0.5], dtype=torch.float64)
    rms_nontrivial = math.sqrt(0.21875)  # over the 8 samples of groups 0 and 2
    rms_all = math.sqrt(0.21875 * 8 / 12)  # the 4 zeros of group 1 counted: f = 8/12
    adv = {name: f(R, IDX) for name, f in NORMALIZATIONS.items()}
    assert torch.allclose(adv["none"], centred)
    assert torch.allclose(adv["excluding_zero"], centred / rms_nontrivial, atol=1e-5)
    assert torch.allclose(adv["including_zero"], centred / rms_all, atol=1e-5)
    # the paper's identity: with zero groups = without them / sqrt(f)
    assert torch.allclose(adv["including_zero"], adv["excluding_zero"] / math.sqrt(8 / 12), atol=1e-5)
    assert torch.allclose(adv["group"], grpo_advantages(R, IDX))
