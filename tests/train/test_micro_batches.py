"""Samples into this rank's micro-batches under either rule (no Megatron needed)."""

import pytest

from megatron_zppo.core.records import PromptKind, Sample
from megatron_zppo.train.micro_batches import BatchRule, rank_micro_batches


def _sample(name: str, prompt: int, response: int) -> Sample:
    return Sample(name, name, PromptKind.PLAIN, [1] * prompt, [2] * response, "", [0.0] * response)


SAMPLES = [_sample("a", 3, 30), _sample("b", 2, 4), _sample("c", 5, 25), _sample("d", 1, 2)]  # 33, 6, 30, 3 tokens


def test_packed_micro_batches_hold_the_planned_samples_padded_to_their_own_longest():
    rule = BatchRule(rows_per_micro=2, budget=40, max_seq_len=64)
    seen = []
    for rank in (0, 1):
        batches, cost = rank_micro_batches(SAMPLES, rule, rank, 2)
        for batch, rows in batches:
            real = [s for s in rows if s is not None]
            seen += [s.group_id for s in real]
            longest = max(len(s.prompt_ids) + len(s.response_ids) for s in real)
            assert batch.tokens.shape == (len(real), longest)  # no row padded past its micro-batch
            assert batch.tokens.numel() <= 40
    assert sorted(seen) == ["a", "b", "c", "d"]
    # Balanced by tokens: ranks of 33 + 3 and 30 + 6 (not by count or by stride: 33 + 30 and 6 + 3).
    assert cost.real_tokens == 72 and cost.dp_imbalance == 1.0


def test_fixed_rows_micro_batches_are_dealt_by_stride_and_filled_with_empty_rows():
    rule = BatchRule(rows_per_micro=2, budget=None, max_seq_len=64)
    batches, cost = rank_micro_batches(SAMPLES[:3], rule, 1, 2)
    (batch, rows), = batches
    assert [s.group_id if s else None for s in rows] == ["b", None]
    assert int(batch.response_lens.sum()) == 4 and batch.tokens.shape[0] == 2
    assert cost.computed_tokens == 2 * 33 + 2 * 6  # each rank pads its rows to its own longest


def test_a_packed_sample_longer_than_the_model_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"sample 'a': 33 tokens .* maximum sequence length 32"):
        rank_micro_batches(SAMPLES, BatchRule(2, 64, max_seq_len=32), 0, 1)
