import json
import pickle
import random

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


def _k_of_8(q, k):
    return group(q, [1] * k + [0] * (8 - k))


def test_fate_tables_follow_each_admission_to_graduation_eviction_or_the_end():
    buf = ReplayBuffer(capacity=2, tau=0.5)
    a, b, c, d, e, f = (question(x) for x in "abcdef")
    buf.update([_k_of_8(a, 0), _k_of_8(b, 2), _k_of_8(c, 1)])  # a evicted at once, never re-sampled
    buf.update([_k_of_8(b, 3), _k_of_8(c, 4), _k_of_8(d, 0)])  # b improves; c graduates after 1 re-sample
    buf.update([_k_of_8(b, 1), _k_of_8(d, 0), _k_of_8(e, 0)])  # b (best 3/8 > 2/8) evicted after 2
    buf.update([_k_of_8(d, 0), _k_of_8(e, 6), _k_of_8(f, 8)])  # e graduates; f is easy, never admitted
    assert buf.question_ids() == ["d"]
    fate = buf.fate_tables()
    assert fate["by_entry_accuracy"] == {
        "0.0": {"graduated": 1, "evicted": 1, "in_buffer": 1},  # e, a, d
        "0.125": {"graduated": 1, "evicted": 0, "in_buffer": 0},  # c
        "0.25": {"graduated": 0, "evicted": 1, "in_buffer": 0},  # b
    }
    zero = {"graduated": 0, "improved": 0, "never_improved": 0, "in_buffer": 0}
    assert fate["by_resamples"] == {
        "0": {**zero, "never_improved": 1}, "1": {**zero, "graduated": 2}, "2": {**zero, "improved": 1, "in_buffer": 1},
        "3": zero, "4": zero, "5": zero, "6+": zero}
    assert (buf.admitted, buf.graduated, buf.evicted, buf.admitted_at_zero, buf.graduated_from_zero) == (5, 2, 2, 3, 1)
    assert json.loads(json.dumps(fate)) == fate


def test_six_or_more_resamples_share_a_bucket_and_an_unchanged_accuracy_never_improved():
    buf = ReplayBuffer(capacity=1)
    q = question("q")
    for _ in range(8):  # admitted, then re-sampled 7 times at the same 1/8
        buf.update([_k_of_8(q, 1)])
    buf.update([_k_of_8(question("r"), 0)])  # evicts q
    assert buf.fate_tables()["by_resamples"]["6+"] == {"graduated": 0, "improved": 0, "never_improved": 1,
                                                       "in_buffer": 0}
    assert buf.fate_tables()["by_resamples"]["0"]["in_buffer"] == 1  # r


def test_graduate_at_is_its_own_threshold_and_admission_stays_at_tau():
    buf = ReplayBuffer(capacity=10, tau=0.5, graduate_at=0.75)
    a, b = question("a"), question("b")
    buf.update([_k_of_8(a, 0), _k_of_8(b, 4)])  # b at 0.5 is not hard: not admitted
    buf.update([_k_of_8(a, 5)])  # 0.625: improved, still held
    assert buf.question_ids() == ["a"] and buf.graduated == 0
    buf.update([_k_of_8(a, 6)])  # 0.75 graduates
    assert len(buf) == 0 and buf.fate_tables()["by_resamples"]["2"]["graduated"] == 1
    assert ReplayBuffer(tau=0.5).graduate_at is None  # None: graduate at tau


def test_fate_counters_and_graduate_at_round_trip_through_the_state():
    buf = ReplayBuffer(capacity=2, tau=0.5, seed=1, graduate_at=0.625)
    qs = [question(f"q{i}") for i in range(4)]
    buf.update([_k_of_8(q, i) for i, q in enumerate(qs)])
    buf.update([_k_of_8(qs[2], 3)])
    twin = ReplayBuffer(capacity=2, tau=0.5, seed=5, graduate_at=0.625)  # the run's config, as on a resume
    twin.load_state_dict(pickle.loads(pickle.dumps(buf.state_dict())))
    assert twin.fate_tables() == buf.fate_tables()
    for b in (buf, twin):  # the re-sample counts and best accuracies came along too
        b.update([_k_of_8(qs[2], 5), _k_of_8(qs[3], 2)])
    assert twin.fate_tables() == buf.fate_tables() and twin.state_dict() == buf.state_dict()
    assert buf.fate_tables()["by_resamples"]["2"]["graduated"] == 1


def test_the_thresholds_of_a_resumed_buffer_are_the_runs_not_the_checkpoints():
    old = ReplayBuffer(capacity=10, tau=0.5)
    q = question("q")
    old.update([_k_of_8(q, 0)])
    resumed = ReplayBuffer(capacity=10, tau=0.5, graduate_at=0.25)  # method.graduate_at set on the resume
    resumed.load_state_dict(old.state_dict())
    resumed.update([_k_of_8(q, 2)])  # 2/8 = 0.25: graduates under the run's threshold, not the checkpoint's
    assert resumed.graduated == 1 and q.id not in resumed


def test_a_version_1_state_loads_with_empty_fate_counters_and_graduation_at_tau():
    q = question("old")
    v1 = {"version": 1, "capacity": 5, "tau": 0.5, "rng": random.Random(4).getstate(), "entries": [(q.to_dict(), 0.0)],
          "counters": {"admitted": 7, "graduated": 3, "evicted": 1, "admitted_at_zero": 2, "graduated_from_zero": 1}}
    buf = ReplayBuffer()
    buf.load_state_dict(json.loads(json.dumps(v1)))  # as a JSON round trip leaves it: lists, not tuples
    assert buf.graduate_at is None and buf.counters()["buffer_admitted"] == 7 and buf.question_ids() == ["old"]
    assert buf.fate_tables()["by_entry_accuracy"] == {"0.0": {"graduated": 0, "evicted": 0, "in_buffer": 1}}
    buf.update([_k_of_8(q, 4)])  # its re-samples before the resume are unknown: counted from 0
    assert buf.graduated == 4 and buf.fate_tables()["by_resamples"]["1"]["graduated"] == 1
