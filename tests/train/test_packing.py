"""The micro-batch packer (pure, no Megatron): properties under hypothesis, and the rules' costs."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_zppo.train.packing import micro_batch_cost, pack, plan_cost, stride_plan

lengths_st = st.lists(st.integers(1, 600), min_size=0, max_size=60)


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, budget=st.integers(1, 1000), dp=st.integers(1, 6), padded=st.booleans())
def test_every_sample_once_within_budget_same_count_and_balanced(lengths, budget, dp, padded):
    plan = pack(lengths, budget, dp, max_seq_len=600, padded=padded)
    placed = [i for micros in plan.ranks for m in micros for i in m]
    assert sorted(placed) == list(range(len(lengths)))  # each sample exactly once
    assert len(plan.ranks) == dp
    assert len({len(micros) for micros in plan.ranks}) == 1  # one micro-batch count on every rank
    for micros in plan.ranks:
        for m in micros:
            # Over the budget only when a single sample already is.
            assert len(m) <= 1 or micro_batch_cost(lengths, m, padded) <= budget, (m, [lengths[i] for i in m])
    loads = [sum(lengths[i] for m in micros for i in m) for micros in plan.ranks]
    if lengths:  # list scheduling's bound: the busiest rank is at most one longest sample above the mean
        assert max(loads) <= sum(loads) / dp + max(lengths)


@settings(max_examples=100, deadline=None)
@given(lengths=lengths_st, budget=st.integers(1, 1000), dp=st.integers(1, 6))
def test_costs_count_real_tokens_padding_and_one_token_per_empty_filler(lengths, budget, dp):
    packed = pack(lengths, budget, dp, 600, padded=False)
    empties = sum(1 for micros in packed.ranks for m in micros if not m)
    unpadded = plan_cost(lengths, packed, "none")
    assert unpadded.real_tokens == sum(lengths)
    assert unpadded.computed_tokens == sum(lengths) + empties
    padded = plan_cost(lengths, pack(lengths, budget, dp, 600), "micro")
    assert padded.computed_tokens >= padded.real_tokens == sum(lengths)
    assert padded.dp_imbalance >= 1.0


def test_an_over_budget_sample_gets_a_micro_batch_of_its_own():
    plan = pack([50, 300, 40, 30], budget=100, dp_size=1, max_seq_len=1000)
    assert (1,) in plan.ranks[0]
    assert all(len(m) == 1 or micro_batch_cost([50, 300, 40, 30], m, True) <= 100 for m in plan.ranks[0])


def test_a_sample_longer_than_the_model_is_an_error_naming_it_and_both_lengths():
    with pytest.raises(ValueError, match=r"sample 'q7/3': 4097 tokens .* maximum sequence length 4096"):
        pack([10, 4097], 8192, 2, 4096, names=["sample 'q0/0'", "sample 'q7/3'"])


def test_short_ranks_get_empty_micro_batches_and_the_plan_is_deterministic():
    # Rank 0 takes a 300 and then the 10 (the tie goes to the lower rank); neither fits the 100 budget
    # with the other, so rank 0 runs two micro-batches and rank 1 its 300 plus an empty one.
    lengths = [300, 300, 10]
    plan = pack(lengths, budget=100, dp_size=2, max_seq_len=1000)
    assert plan == pack(lengths, budget=100, dp_size=2, max_seq_len=1000)
    assert plan.ranks == (((0,), (2,)), ((1,), ()))


def test_costs_of_the_fixed_rows_rule_pad_every_row_to_the_ranks_longest():
    # Rank 0 gets samples 0 and 2 (lengths 10, 90), rank 1 gets 1 and 3 (20, 30); one row per micro-batch.
    cost = plan_cost([10, 20, 90, 30], stride_plan(4, 2, 1), "rank")
    assert cost.computed_tokens == 2 * 90 + 2 * 30
    assert cost.padding_efficiency == pytest.approx(150 / 240)
    assert cost.dp_imbalance == pytest.approx(180 / 120)


def test_the_budget_setting_refuses_a_non_positive_value():
    from megatron_zppo.config import TrainConfig
    from megatron_zppo.config_io import from_dict

    assert TrainConfig().max_tokens_per_micro_batch is None  # off unless set
    with pytest.raises(ValueError, match="train.max_tokens_per_micro_batch: 0 is out of range"):
        from_dict(TrainConfig, {"max_tokens_per_micro_batch": 0}, "train")  # ranges are checked at load
