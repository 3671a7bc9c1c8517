import pytest
import torch

from megatron_zppo.core.prompts import encode_prompt
from megatron_zppo.core.records import Question
from megatron_zppo.rollout.engine import GenerateRequest, RolloutEngine, SamplingParams
from megatron_zppo.rollout.hf_engine import HFEngine
from megatron_zppo.teacher import Teacher, parse_verdict


@pytest.fixture(scope="module")
def engine(toy_world):
    return HFEngine(toy_world["student"], seed=0)


def _req(toy_world, text, n):
    return GenerateRequest(encode_prompt(toy_world["tokenizer"], text), n)


def test_generate_returns_n_per_request_with_logprobs_that_score_reproduces(engine, toy_world):
    assert isinstance(engine, RolloutEngine)
    params = SamplingParams(max_new_tokens=12, seed=5)
    out = engine.generate([_req(toy_world, "1 + 2 =", 3), _req(toy_world, "spell cat", 2)], params)
    assert [len(g) for g in out] == [3, 2]
    for g in out[0]:
        assert len(g.logprobs) == len(g.response_ids) <= 12 and g.finish_reason in ("stop", "length")
        assert g.weight_version == "init" and all(lp <= 0 for lp in g.logprobs)
    prompt = _req(toy_world, "1 + 2 =", 1).prompt_ids
    scored = engine.score([prompt], [out[0][0].response_ids])[0]
    assert max(abs(a - b) for a, b in zip(scored, out[0][0].logprobs)) < 1e-4


def test_same_seed_same_samples_and_greedy_is_deterministic(engine, toy_world):
    req = [_req(toy_world, "3 - 1 =", 4)]
    a = engine.generate(req, SamplingParams(max_new_tokens=10, seed=9))
    b = engine.generate(req, SamplingParams(max_new_tokens=10, seed=9))
    assert [g.response_ids for g in a[0]] == [g.response_ids for g in b[0]]
    greedy = engine.generate(req, SamplingParams(temperature=0, max_new_tokens=10))[0]
    assert len({tuple(g.response_ids) for g in greedy}) == 1


def test_length_finish_and_max_new_tokens_respected(engine, toy_world):
    out = engine.generate([_req(toy_world, "x", 2)], SamplingParams(max_new_tokens=1, seed=1))[0]
    assert all(len(g.response_ids) == 1 for g in out)


def test_update_weights_is_all_or_nothing_and_sets_the_version(toy_world):
    e = HFEngine(toy_world["student"])
    params = dict(e.model.named_parameters())
    new = {n: torch.full_like(p, 0.01) for n, p in params.items()}
    name = next(iter(new))
    with pytest.raises(ValueError, match="lacks"):
        e.update_weights([(name, new[name])], "v1")
    assert e.weight_version == "init" and not torch.equal(params[name], new[name])
    with pytest.raises(KeyError, match="not a parameter"):
        e.update_weights([("bogus.weight", torch.zeros(1))], "v1")
    e.update_weights(new.items(), "v1")
    assert e.weight_version == "v1" and all(torch.equal(params[n], t) for n, t in new.items())
    g = e.generate([_req(toy_world, "1+1", 1)], SamplingParams(max_new_tokens=3, seed=0))[0][0]
    assert g.weight_version == "v1"


def test_images_on_a_text_only_engine_are_a_clear_error(engine):
    with pytest.raises(ValueError, match="text-only"):
        engine.generate([GenerateRequest([1, 2], 1, images=("a.png",), request_id="r1")], SamplingParams())


class ScriptedEngine:
    """An engine whose replies are fixed text (the teacher's behaviour is not what is tested)."""

    weight_version = "t"

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def generate(self, requests, params):
        from megatron_zppo.rollout.engine import Generation

        self.calls.append((requests, params))
        return [[Generation([1], [-0.1], self.replies.pop(0), "stop", "t") for _ in range(r.n)] for r in requests]


def test_teacher_rollouts_are_marked_teacher_and_compression_keeps_the_answer(toy_world):
    enc = lambda text, n_images=0: encode_prompt(toy_world["tokenizer"], text, n_images)  # noqa: E731
    eng = ScriptedEngine(["<think>a</think>\\boxed{5}", "<summary>short \\boxed{5}</summary>",
                          "<summary>short \\boxed{6}</summary>", "garbage"])
    t = Teacher(eng, enc, toy_world["templates"], SamplingParams())
    q = Question("q", "2+3=", "5")
    (s,) = t.rollouts([q], 1)["q"]
    assert s.sampled_by == "teacher" and s.response_text.endswith("\\boxed{5}")
    out = t.compress(["long \\boxed{5}", "long \\boxed{5}", "raw \\boxed{7}"])
    assert out == ["short \\boxed{5}", "long \\boxed{5}", "raw \\boxed{7}"]
    assert t.stats.compressed == 1 and t.stats.compression_fallbacks == 2
    assert eng.calls[-1][1].temperature == 0 and eng.calls[-1][1].max_new_tokens == 512


def test_judge_reads_strict_json_and_malformed_scores_zero(toy_world):
    enc = lambda text, n_images=0: encode_prompt(toy_world["tokenizer"], text, n_images)  # noqa: E731
    eng = ScriptedEngine(['{"verdict": "correct"}', 'yes it is correct', '```json\n{"verdict": "wrong"}\n```'])
    t = Teacher(eng, enc, toy_world["templates"], SamplingParams())
    qs = [Question(f"q{i}", "Name the colour", "red") for i in range(4)]
    assert t.judge(qs, ["red", "crimson", "blue", None]) == [1.0, 0.0, 0.0, 0.0]
    assert t.stats.judge_calls == 3 and t.stats.judge_malformed == 1
    assert parse_verdict('{"verdict": "correct", "why": "x"}') is None


def test_llm_judge_questions_are_routed_to_the_teacher(toy_world):
    from megatron_zppo.core.records import PromptKind, Sample
    from megatron_zppo.grader_pool import GraderPool
    from megatron_zppo.rollout.collect import score_samples

    q = Question("q", "Name the colour", "red", metadata={"grader": "judge"})
    s = Sample("q", "g", PromptKind.PLAIN, [1], [2], "\\boxed{red}", [-1.0])
    calls = []
    score_samples([s], {"q": q}, GraderPool("auto"), judge=lambda qs, given: calls.append(given) or [1.0])
    assert s.reward == 1.0 and calls == [["red"]]
    with pytest.raises(ValueError, match="no teacher engine"):
        score_samples([s], {"q": q}, GraderPool("auto"), judge=None)
