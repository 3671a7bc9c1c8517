import pickle

import pytest

from megatron_zppo.core.records import PromptKind, Question
from megatron_zppo.core.replay_buffer import ReplayBuffer
from tests.core.factories import group, question


def test_admits_hard_graduates_at_tau_and_ignores_easy_newcomers():
    buf = ReplayBuffer(capacity=10, tau=0.5)
    a, b, c = question("a"), question("b"), question("c")
    buf.update([group(a, [0, 0]), group(b, [1, 0, 0, 0]), group(c, [1, 1])])
    assert buf.question_ids() == ["a", "b"] and buf.admitted == 2 and buf.admitted_at_zero == 1
    buf.update([group(a, [1, 0]), group(b, [0, 0, 0, 0])])  # a reaches 0.5 exactly: graduates
    assert buf.question_ids() == ["b"] and buf.graduated == 1 and buf.graduated_from_zero == 1
    assert buf.admitted == 2  # b was already in: not admitted twice


def test_graduated_from_zero_counts_admission_accuracy_not_current():
    buf = ReplayBuffer(capacity=10)
    q = question("q")
    buf.update([group(q, [1, 0, 0, 0])])
    buf.update([group(q, [1, 1])])
    assert buf.graduated == 1 and buf.graduated_from_zero == 0


def test_fifo_eviction_drops_oldest_first():
    buf = ReplayBuffer(capacity=3)
    for i in range(5):
        buf.update([group(question(f"q{i}"), [0])])
    assert buf.question_ids() == ["q2", "q3", "q4"] and buf.evicted == 2 and len(buf) == 3


def test_only_plain_groups_update_the_buffer():
    buf = ReplayBuffer()
    q = question("q")
    with pytest.raises(ValueError, match="plain groups only"):
        buf.update([group(q, [0], gid="q:bcq", kind=PromptKind.BCQ)])


def test_a_refused_update_changes_nothing():
    buf = ReplayBuffer()
    with pytest.raises(ValueError, match="plain groups only"):
        buf.update([group(question("a"), [0]), group(question("b"), [0], gid="b:ncq", kind=PromptKind.NCQ)])
    assert len(buf) == 0 and buf.admitted == 0  # "a" came first but was not admitted either


def test_replay_draws_exclude_this_steps_new_questions_and_still_fill_the_quota():
    buf = ReplayBuffer(capacity=100, seed=3)
    buf.update([group(question(f"q{i}"), [0]) for i in range(6)])
    for _ in range(20):
        drawn = [q.id for q in buf.sample(3, exclude={"q0", "q1", "q2"})]
        assert len(drawn) == 3 and sorted(drawn) == ["q3", "q4", "q5"]
    assert len(buf.sample(5, exclude={"q0"})) == 5


def test_sample_is_distinct_uniform_and_never_more_than_held():
    buf = ReplayBuffer(capacity=100, seed=1)
    buf.update([group(question(f"q{i}"), [0]) for i in range(4)])
    assert len(buf.sample(10)) == 4 and buf.sample(0) == []
    counts = {f"q{i}": 0 for i in range(4)}
    for _ in range(4000):
        picked = buf.sample(2)
        assert len({q.id for q in picked}) == 2
        for q in picked:
            counts[q.id] += 1
    assert all(1800 < c < 2200 for c in counts.values()), counts  # 2000 expected each


def test_state_round_trip_resumes_identical_draws_and_counters():
    buf = ReplayBuffer(capacity=5, seed=3)
    imgs = (b"\x89PNG...", "img/a.png")
    buf.update([group(Question(f"q{i}", f"t{i}", "1", images=imgs), [0]) for i in range(7)])
    buf.sample(2)
    state = pickle.loads(pickle.dumps(buf.state_dict()))
    twin = ReplayBuffer(capacity=1, seed=99)
    twin.load_state_dict(state)
    assert twin.question_ids() == buf.question_ids() and twin.counters() == buf.counters()
    assert [q.id for q in twin.sample(3)] == [q.id for q in buf.sample(3)]
    assert twin.sample(1)[0].images == imgs


def test_incompatible_state_version_is_rejected_with_the_version():
    buf = ReplayBuffer()
    state = buf.state_dict()
    state["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        ReplayBuffer().load_state_dict(state)
