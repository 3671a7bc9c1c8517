"""Generations continued across a weight sync (rollout/partial.py) and the staleness bookkeeping of
run.overlap=async (overlap.py), against a scripted engine."""

import pytest

from megatron_zppo.core.batch import training_samples
from megatron_zppo.core.records import Group, PromptKind, Question, Sample
from megatron_zppo.overlap import accepted_versions, staleness_metrics
from megatron_zppo.rollout.engine import GenerateRequest, Generation, SamplingParams
from megatron_zppo.rollout.partial import PausableStudent, Partial


class ScriptedEngine:
    """Each call serves the next weight version; a generation's token i is 100 * sample + its position
    in the whole response, with log-prob -position / 10. `cut[k]`: call k ends every generation after
    that many tokens, "abort" (as a pause would)."""

    def __init__(self, cut):
        self.cut, self.calls = cut, []

    def generate(self, requests, params):
        version, cut = f"v{len(self.calls)}", self.cut[len(self.calls)]
        self.calls.append(requests)
        out = []
        for r in requests:
            budget = r.max_new_tokens or params.max_new_tokens
            done = len(r.prompt_ids) - 2  # the prompt is 2 tokens, then what a continuation carries
            gens = []
            for s in range(r.n):
                n = min(budget, cut) if cut is not None else budget
                sample = s if r.n > 1 else (r.prompt_ids[-1] // 100 if done else 0)
                ids = [100 * sample + done + i for i in range(n)]
                gens.append(Generation(ids, [-(done + i) / 10 for i in range(n)], "server text",
                                       "abort" if cut is not None and cut < budget else "length", version))
            out.append(gens)
        return out


def test_an_aborted_generation_is_continued_with_the_new_weights_and_keeps_every_token():
    engine = ScriptedEngine(cut=[3, None])
    student = PausableStudent(engine, decode=lambda ids: "decoded", timeout_s=5)
    [group] = student.generate([GenerateRequest([1, 2], 2, request_id="g")], SamplingParams(max_new_tokens=10))
    # The continuation: each sample on its own, its prompt + the 3 tokens it had, 7 tokens left.
    assert [(list(r.prompt_ids), r.n, r.max_new_tokens) for r in engine.calls[1]] == \
        [([1, 2, 0, 1, 2], 1, 7), ([1, 2, 100, 101, 102], 1, 7)]
    assert engine.calls[1][0].request_id != "g" and engine.calls[1][0].request_id.startswith("g@")
    for s, g in enumerate(group):
        assert g.response_ids == [100 * s + i for i in range(10)] and g.logprobs == [-i / 10 for i in range(10)]
        assert g.version_spans == (("v0", 3), ("v1", 7)) and g.weight_version == "v0"
        assert g.text == "decoded" and g.finish_reason == "length"  # two requests made it: decoded again
    assert student.parked == {}


def test_a_request_none_of_whose_samples_started_is_sent_again_as_it_was():
    engine = ScriptedEngine(cut=[0, None])
    student = PausableStudent(engine, decode=lambda ids: "decoded", timeout_s=5)
    [group] = student.generate([GenerateRequest([1, 2], 2, request_id="g")], SamplingParams(max_new_tokens=4))
    [again] = engine.calls[1]
    assert (list(again.prompt_ids), again.n, again.max_new_tokens) == ([1, 2], 2, None)
    assert [g.version_spans for g in group] == [(), ()] and [g.weight_version for g in group] == ["v1", "v1"]
    assert [g.text for g in group] == ["server text"] * 2  # one request made each: the server's text


def test_a_resumed_run_continues_the_partials_it_was_given():
    """A checkpoint holds the paused generations (`parked`); the resumed run's same request goes on from them."""
    engine = ScriptedEngine(cut=[None])
    student = PausableStudent(engine, decode=lambda ids: "decoded", timeout_s=5)
    p = Partial()
    p.extend(Generation([0, 1], [0.0, -0.1], "t", "abort", "v7"))
    student.parked[("g", 0)] = p
    [[g]] = student.generate([GenerateRequest([1, 2], 1, request_id="g")], SamplingParams(max_new_tokens=5))
    assert g.response_ids == [0, 1, 2, 3, 4] and g.version_spans == (("v7", 2), ("v0", 3))


def test_async_accepts_k_versions_back_on_the_oldest_token_and_logs_the_histogram():
    assert accepted_versions("async", 5, 2) == ("step-5", "step-4", "step-3")
    assert accepted_versions("one_step", 5) == ("step-5", "step-4") and accepted_versions("none", 5) == "step-5"
    q = Question("q", "text", "1")

    def sample(oldest, spans=()):
        return Sample("q", "g", PromptKind.PLAIN, [1], [2, 3, 4], "", [0.0] * 3, weight_version=oldest,
                      version_spans=spans)

    g = Group("g", q, PromptKind.PLAIN, "text", [sample("step-3", (("step-3", 1), ("step-4", 2))), sample("step-5")])
    assert len(training_samples([g], accepted_versions("async", 5, 2))) == 2
    with pytest.raises(ValueError, match="weights 'step-3', trainer is at 'step-5'"):
        training_samples([g], accepted_versions("async", 5, 1))

    class Rollouts:
        groups = [g]

    assert staleness_metrics(Rollouts, 5) == {"samples_behind_2": 1, "samples_behind_0": 1,
                                              "versions_spanned_max": 2.0, "tokens_continued": 1.0}
