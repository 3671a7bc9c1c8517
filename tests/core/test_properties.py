"""Property-based tests of the invariants ZPPO relies on (hypothesis)."""

import pickle
import random

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_zppo.core.batch import training_samples
from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import Group, PromptKind, Sample
from megatron_zppo.core.reformulate import ZppoConfig, plan_reformulations, render, select_hard
from megatron_zppo.core.replay_buffer import ReplayBuffer
from tests.core.factories import group, question, teacher

TEMPLATES = PromptTemplates.load()
binary = st.integers(0, 1)
batches = st.lists(
    st.tuples(st.lists(binary, min_size=1, max_size=8), st.lists(binary, max_size=4)), min_size=1, max_size=12
)


def _stage(batch, cap, cfg, seed):
    groups, tch = [], {}
    for i, (student, teacher_rewards) in enumerate(batch):
        q = question(f"q{i}")
        texts = [f"STUDENT-{i}-{j} \\boxed{{{'5' if r else j}}}" for j, r in enumerate(student)]
        groups.append(group(q, student, texts=texts))
        tch[q.id] = teacher(q, teacher_rewards, [f"TEACHER-{i}-{j} \\boxed{{5}}" for j in range(len(teacher_rewards))])
    hard = select_hard(groups, 0.5, cap)  # method.tau's default, the paper's
    plans = plan_reformulations(hard, tch, cap, cfg, random.Random(seed))
    return groups, tch, plans, render(plans, TEMPLATES)


@settings(max_examples=200, deadline=None)
@given(batches, st.integers(0, 10), st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_caps_candidates_and_teacher_text_placement(batch, cap, bcq, ncq, seed):
    groups, tch, plans, prompts = _stage(batch, cap, ZppoConfig(bcq=bcq, ncq=ncq), seed)
    assert len(plans) <= cap
    assert len({p.question.id for p in plans}) <= cap
    by_id = {g.question.id: g for g in groups}
    for p, text in zip(plans, prompts):
        g = by_id[p.question.id]
        assert g.accuracy < 0.5 and text.startswith(p.question.text)
        if p.kind is PromptKind.BCQ:
            # exactly one correct teacher candidate and one wrong student candidate, no label
            assert text.count("TEACHER-") == 1 and text.count("STUDENT-") == 1
            assert p.candidates[p.teacher_position].startswith("TEACHER-")
            assert any(s.response_text == p.candidates[1 - p.teacher_position] for s in g.wrong())
            assert any(s.reward == 1 for s in tch[g.question.id])
        else:
            assert "TEACHER-" not in text  # NCQ carries no teacher text at all
            assert text.count("STUDENT-") == len(g.wrong())
    # the walk is by increasing accuracy and BCQ precedes NCQ within a question
    accs = [by_id[p.question.id].accuracy for p in plans]
    assert accs == sorted(accs)
    for qid in {p.question.id for p in plans}:
        kinds = [p.kind.value for p in plans if p.question.id == qid]
        assert kinds in (["bcq"], ["ncq"], ["bcq", "ncq"])


@settings(max_examples=100, deadline=None)
@given(batches, st.integers(1, 10), st.integers(0, 2**16))
def test_only_student_samples_of_reformulated_prompts_reach_the_loss(batch, cap, seed):
    groups, tch, plans, prompts = _stage(batch, cap, ZppoConfig(), seed)
    new_groups = list(groups)
    for p, text in zip(plans, prompts):
        s = Sample(p.question.id, p.group_id, p.kind, [7] * 3, [1, 2], "student says \\boxed{1}", [-1.0, -1.0],
                   reward=0.0)
        new_groups.append(Group(p.group_id, p.question, p.kind, text, [s]))
    trained = training_samples(new_groups)
    assert all(s.sampled_by == "student" for s in trained)
    assert not any("TEACHER-" in s.response_text for s in trained)
    for g, ts in zip(groups, tch.values()):
        if ts:
            with pytest.raises(ValueError, match="'teacher' sample"):
                training_samples([Group(ts[0].group_id, g.question, PromptKind.PLAIN, "", list(ts))])


def test_bcq_correct_candidate_position_is_uniform_over_seeds():
    q = question("q")
    g = group(q, [0, 0, 0, 0])
    tch = {"q": teacher(q, [1, 1])}
    first = sum(plan_reformulations([g], tch, 1, ZppoConfig(), random.Random(s))[0].teacher_position == 0
                for s in range(4000))
    assert 1870 < first < 2130  # ~5 sigma around 2000


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 1)), max_size=20), max_size=15),
       st.integers(1, 12), st.integers(0, 3))
def test_buffer_never_exceeds_capacity_graduates_leave_and_state_round_trips(steps, capacity, seed):
    buf = ReplayBuffer(capacity=capacity, seed=seed)
    for step in steps:
        seen = {}
        for qid, acc in step:
            seen[f"q{qid}"] = acc  # one group per question per step
        groups = [group(question(qid), [1] * round(acc * 4) + [0] * (4 - round(acc * 4)), gid=f"{qid}:p")
                  for qid, acc in seen.items()]
        before = set(buf.question_ids())
        buf.update(groups)
        assert len(buf) <= capacity
        for g in groups:
            if g.accuracy >= 0.5:
                assert g.question.id not in buf
            elif g.question.id not in before:
                # admitted now; may only be missing if evicted by capacity in this same update
                assert g.question.id in buf or buf.evicted > 0
        buf.sample(3)
    twin = ReplayBuffer(capacity=capacity)  # a resumed run builds its buffer from the same config
    twin.load_state_dict(pickle.loads(pickle.dumps(buf.state_dict())))
    assert twin.state_dict() == buf.state_dict()
    assert [q.id for q in twin.sample(5)] == [q.id for q in buf.sample(5)]
