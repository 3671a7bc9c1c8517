"""rollout.dynamic_sampling: the rollout phase (loop.RolloutPhase) with the real ZPPO stage (NCQ),
buffer, question stream, advantages and source, and a scripted student engine whose answers depend
on the question and the prompt kind, so that which groups are informative is known in advance."""

import random
import types

import pytest

from megatron_zppo.config import Config
from megatron_zppo.config_io import ConfigError, from_dict
from megatron_zppo.core.answers import last_boxed
from megatron_zppo.core.dynamic_sampling import (
    MAX_ROUND_FACTOR, DynamicSamplingConfig, informative, next_round_size,
)
from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import PromptKind, Question
from megatron_zppo.core.reformulate import ZppoConfig
from megatron_zppo.core.replay_buffer import ReplayBuffer
from megatron_zppo.data import QuestionStream
from megatron_zppo.grader_pool import GradeStats
from megatron_zppo.loop import RolloutPhase, rollout_metrics
from megatron_zppo.methods.policy_gradient import PolicyGradient
from megatron_zppo.methods.zppo import ZppoPrompts
from megatron_zppo.core.loss import LossConfig
from megatron_zppo.overlap import RolloutFeed
from megatron_zppo.rollout.engine import Generation, SamplingParams
from megatron_zppo.sources import Generated
from megatron_zppo.config import RolloutConfig

G = 4  # rollouts per prompt
# question kind -> right answers out of G: on the plain prompt, on its NCQ prompt
BEHAVIOUR = {"easy": (G, None), "mixed": (2, None), "rescued": (0, 2), "hopeless": (0, 0)}


class ScriptedStudent:
    """Right on the first `k` of a prompt's G rollouts, k given by BEHAVIOUR; records each call's seed."""

    def __init__(self):
        self.seeds = []

    def generate(self, reqs, params):
        self.seeds.append(params.seed)
        out = []
        for r in reqs:
            _, qid, *kind = r.request_id.split(":")
            right = BEHAVIOUR[qid.split("_")[0]][1 if kind else 0]
            out.append([Generation([7] * (3 + i), [-0.5] * (3 + i), f"\\boxed{{{'A' if i < right else f'w{i}'}}}",
                                   "stop", "step-1") for i in range(r.n)])
        return out


def grade(samples):
    for s in samples:
        s.reward = float(last_boxed(s.response_text) == "A")


def questions(kinds, n_each):
    return [Question(f"{k}_{i}", f"question {k} {i}", "A") for k in kinds for i in range(n_each)]


def phase(kinds=tuple(BEHAVIOUR), ds=None, rho_replay=0.0, buffer=None, n_new=8, drawn_from=None):
    student = ScriptedStudent()
    return RolloutPhase(
        student=student, encode=lambda text, n_images=0: [1] * 5, graders=types.SimpleNamespace(stats=GradeStats()),
        grade=grade, stream=QuestionStream(drawn_from or questions(kinds, 12), seed=3), buffer=buffer or ReplayBuffer(),
        templates=PromptTemplates.load(), hard_prompts=ZppoPrompts(ZppoConfig(bcq=False, compression=False), None, 4,
                                                                    PromptTemplates.load(), grade, 0),
        objective=PolicyGradient("excluding_zero", 2, LossConfig()),
        rollout=RolloutConfig(n_new=n_new, group_size=G, dynamic_sampling=ds or DynamicSamplingConfig()),
        sampling=SamplingParams(), tau=0.5, rho_aug=1.0, rho_replay=rho_replay, seed=11), student


def kind_of(g):
    return g.question.id.split("_")[0]


def test_the_step_trains_only_informative_groups_and_an_all_wrong_question_trains_through_its_ncq():
    p, student = phase(ds=DynamicSamplingConfig(enabled=True))
    r = p(1)
    target = 8  # rollout.n_new + replays (none)
    trained = r.trained
    assert all(informative(g) for g in trained)
    assert {g.id for g in r.groups if informative(g)} == {g.id for g in trained}  # surplus: train
    assert len(trained) >= target and r.rounds >= 2  # 8 draws hold ~4 informative groups: more rounds were drawn
    assert len(student.seeds) == 2 * r.rounds and len(set(student.seeds)) == len(student.seeds)
    rescued = [g for g in r.groups if kind_of(g) == "rescued"]
    assert rescued and all((g.kind is PromptKind.NCQ) == (g in trained) for g in rescued)
    assert not any(kind_of(g) in ("easy", "hopeless") for g in trained)
    assert all(s.advantage != 0 for g in trained for s in g.samples)
    m = rollout_metrics(r, p.buffer)
    assert m["informative_fraction_after"] == 1.0
    assert m["informative_fraction_before"] == pytest.approx(
        sum(len(g.samples) for g in trained) / sum(len(g.samples) for g in r.groups))
    assert 0 < m["informative_fraction_before"] < 1
    assert m["ds_rounds"] == r.rounds and m["ds_groups_filtered"] == len(r.groups) - len(trained)
    assert m["ds_extra_tokens"] == m["tokens_generated"] - r.first_round_tokens > 0
    assert r.n_new == sum(1 for g in r.plain if not g.question.id.startswith("seed"))
    # the policy gradient's mini-batches hold the trained groups' samples and nothing else
    batches = p.objective.minibatches(r, None, random.Random(0))
    assert sorted(id(s) for b in batches for s in b) == sorted(id(s) for g in trained for s in g.samples)


def test_off_the_step_is_one_draw_trained_whole_and_the_first_round_is_unchanged_by_the_filter():
    off, off_student = phase()
    on, on_student = phase(ds=DynamicSamplingConfig(enabled=True))
    r_off, r_on = off(1), on(1)
    assert r_off.rounds == 1 and r_off.trained == r_off.groups and r_off.filtered == frozenset()
    assert "ds_rounds" not in rollout_metrics(r_off, off.buffer)
    assert [g.id for g in r_off.plain] == [g.id for g in r_on.plain[:len(r_off.plain)]]
    assert off_student.seeds == on_student.seeds[:2]
    for part in ("plain", "reformulated"):
        off_groups, on_groups = getattr(r_off, part), getattr(r_on, part)
        assert [[s.response_text for s in g.samples] for g in off_groups] == \
            [[s.response_text for s in g.samples] for g in on_groups[:len(off_groups)]]


def test_the_buffer_sees_every_plain_group_the_filter_drops():
    buffer = ReplayBuffer(seed=0)
    seeded = Question("easy_seeded", "question easy seeded", "A")  # in the buffer; the student now solves it
    buffer.update([types.SimpleNamespace(question=seeded, accuracy=0.0, kind=PromptKind.PLAIN)])
    p, _ = phase(ds=DynamicSamplingConfig(enabled=True), rho_replay=0.25, buffer=buffer)
    source = Generated(p, RolloutFeed(p, "none", 60), True, None)
    r = source.take(1)
    replayed = [g for g in r.plain if g.question.id == "easy_seeded"]
    assert replayed and replayed[0].id in r.filtered  # all right: filtered out of training ...
    assert "easy_seeded" not in buffer  # ... and still graduated
    uniform_wrong = [g.question.id for g in r.plain if kind_of(g) in ("rescued", "hopeless")]
    assert uniform_wrong and all(g in r.filtered for g in (f"1:{q}" for q in uniform_wrong))
    assert all(q in buffer for q in uniform_wrong)  # filtered, and admitted


def test_the_round_cap_ends_the_step_with_what_it_has_and_says_so():
    p, student = phase(kinds=("easy", "hopeless"), ds=DynamicSamplingConfig(enabled=True, max_rounds=3))
    r = p(1)
    assert r.rounds == 3 and len(student.seeds) == 6
    assert r.trained == r.groups  # nothing informative: the step trains unfiltered rather than stop the run
    assert any("no informative group in 3 rounds" in n for n in r.notes)
    few = questions(["easy"], 44) + questions(["mixed"], 4)  # at most 4 informative groups to be had
    p, _ = phase(ds=DynamicSamplingConfig(enabled=True, max_rounds=2), drawn_from=few)
    r = p(1)
    assert r.rounds == 2 and 0 < len(r.trained) <= 4 and all(informative(g) for g in r.trained)
    assert any(f"{len(r.trained)} of 8 informative groups after 2 rounds" in n for n in r.notes)


def test_surplus_drop_trains_exactly_the_target():
    p, _ = phase(ds=DynamicSamplingConfig(enabled=True, surplus="drop", target_groups=5))
    r = p(1)
    assert len(r.trained) == 5 and all(informative(g) for g in r.trained)
    m = rollout_metrics(r, p.buffer)
    assert m["ds_groups_surplus_dropped"] == sum(map(informative, r.groups)) - 5


def test_round_sizes():
    assert next_round_size(need=6, kept=0, drawn=8, n_new=8, margin=1.25) == 8  # nothing seen: a full draw
    assert next_round_size(need=4, kept=4, drawn=8, n_new=8, margin=1.25) == 10  # ceil(1.25 * 4 * 8 / 4)
    assert next_round_size(need=100, kept=1, drawn=8, n_new=8, margin=1.0) == MAX_ROUND_FACTOR * 8
    assert next_round_size(need=1, kept=40, drawn=8, n_new=8, margin=1.0) == 1


def test_dynamic_sampling_is_refused_for_a_method_with_no_group_advantages():
    with pytest.raises(ConfigError, match=r"rollout.dynamic_sampling .*method.name='off_distill'"):
        from_dict(Config, {"student": {"hf_path": "x"}, "teacher": {"hf_path": "x"}, "method": {"name": "off_distill"},
                           "rollout": {"dynamic_sampling": {"enabled": True}}})
    with pytest.raises(ConfigError, match="surplus 'keep'"):
        from_dict(Config, {"student": {"hf_path": "x"}, "rollout": {"dynamic_sampling": {"surplus": "keep"}}})
