import random

import pytest

from megatron_zppo.core.batch import split_minibatches, training_samples
from megatron_zppo.core.records import Group, PromptKind, Question, Sample
from tests.core.factories import group, question, sample


def test_group_rejects_empty_and_foreign_samples_naming_them():
    q, other = question("q"), question("other")
    with pytest.raises(ValueError, match="Group 'g' .*no samples"):
        Group("g", q, PromptKind.PLAIN, "", [])
    with pytest.raises(ValueError, match="'other' does not match the group's question 'q'"):
        Group("g", q, PromptKind.PLAIN, "", [sample(other, "g", 1)])
    with pytest.raises(ValueError, match="group_id 'h'"):
        Group("g", q, PromptKind.PLAIN, "", [sample(q, "h", 1)])


def test_sample_rejects_non_finite_logprobs_and_length_mismatch():
    with pytest.raises(ValueError, match="non-finite value nan"):
        Sample("q", "g", PromptKind.PLAIN, [1], [2], "", [float("nan")])
    with pytest.raises(ValueError, match="2 logprobs for 1 response tokens"):
        Sample("q", "g", PromptKind.PLAIN, [1], [2], "", [-1.0, -1.0])


def test_unscored_group_has_no_accuracy():
    q = question()
    g = group(q, [1, 0])
    g.samples[1].reward = None
    with pytest.raises(ValueError, match=r"samples \[1\] have not been scored"):
        g.accuracy


def test_question_round_trips_and_validates():
    q = Question("id1", "text", "42", images=["a.png", b"raw"], source="s", metadata={"k": 1})
    assert Question.from_dict(q.to_dict()) == q and q.images == ("a.png", b"raw")
    with pytest.raises(ValueError, match="answer must be a string, got 42"):
        Question("id2", "t", 42)


def test_stale_weight_version_stops_training():
    q = question()
    g = group(q, [1, 0])
    for s in g.samples:
        s.weight_version = "step-3"
    assert len(training_samples([g], "step-3")) == 2
    with pytest.raises(ValueError, match="weights 'step-3', trainer is at 'step-4'"):
        training_samples([g], "step-4")


def test_split_minibatches_covers_every_sample_once_in_near_equal_parts():
    q = question()
    samples = group(q, [1] * 10).samples
    parts = split_minibatches(samples, 4, random.Random(0))
    assert sorted(len(p) for p in parts) == [2, 2, 3, 3]
    assert sorted(id(s) for p in parts for s in p) == sorted(id(s) for s in samples)
    with pytest.raises(ValueError, match="cannot split 10 samples into 11"):
        split_minibatches(samples, 11, random.Random(0))
