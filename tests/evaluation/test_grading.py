"""Evaluation's grading: the rules, the judge's reply forms, and the chain (rule first, judge for
what the rule leaves) with a scripted judge engine; multi-turn prompts through the chat template."""

import json

import pytest

from megatron_zppo.core.records import Question
from megatron_zppo.evaluation import rules
from megatron_zppo.evaluation.judge import EvalJudge, JudgeError, JudgeTemplate, parse_output
from megatron_zppo.evaluation.protocols import BenchmarkGrader, Protocol, evaluation_pool
from megatron_zppo.grader_pool import GraderPool
from megatron_zppo.rewards import GraderError
from megatron_zppo.rollout.engine import EngineStats, Generation


@pytest.fixture(scope="module")
def pool():
    """One evaluation pool for the chain tests, as a suite shares one across its benchmarks."""
    with evaluation_pool(workers=1) as p:
        yield p


def _q(answer="B", options=("red", "blue", "green", "black"), **meta):
    return Question("q1", "Which colour?", answer, metadata={"options": list(options), **meta} if options else meta)


def test_the_choice_rule_decides_letters_and_option_texts_and_leaves_the_rest_undecided():
    q = _q()
    assert rules.choice(r"\boxed{B}", q) == 1.0 and rules.choice(r"\boxed{(b)}", q) == 1.0
    assert rules.choice(r"\boxed{B. blue}", q) == 1.0 and rules.choice(r"\boxed{A}", q) == 0.0
    assert rules.choice(r"\boxed{ Blue }", q) == 1.0 and rules.choice(r"\boxed{green}", q) == 0.0
    assert rules.choice("it is blue", q) is None  # no final answer: the judge reads the reasoning
    assert rules.choice(r"\boxed{E}", q) is None  # a letter beyond the four options names none
    assert rules.choice(r"\boxed{navy}", q) is None


def test_exact_math_and_number_rules_decide_as_their_protocols_say():
    q = Question("q", "?", "New York", metadata={"answers": ["New York", "NYC"]})
    assert rules.exact(r"\boxed{new  york}", q) == 1.0 and rules.exact(r"\boxed{nyc}", q) == 1.0
    assert rules.exact(r"\boxed{Boston}", q) is None  # a mismatch may still mean the same: the judge decides
    half = Question("m", "?", r"\frac{1}{2}")
    assert rules.math(r"\boxed{0.5}", half) == 1.0 and rules.math(r"\boxed{0.6}", half) is None
    num = Question("n", "?", "3.14", metadata={"precision": 2})
    assert rules.number(r"\boxed{3.1416}", num) == 1.0 and rules.number(r"\boxed{3.2}", num) == 0.0
    assert rules.number(r"\boxed{about three}", num) is None
    assert rules.number(r"\boxed{\frac{2\pi}{3}}", Question("f", "?", "2.094")) is None  # an expression: the judge
    assert rules.number(r"\boxed{12 cm}", Question("u", "?", "12", metadata={"unit": "cm"})) == 1.0
    assert rules.number(r"\boxed{1,200}", Question("c", "?", "1200")) == 1.0
    assert rules.number("<think>x</think> 7", Question("d", "?", "7")) == 1.0  # the text after the reasoning


def test_judge_reply_forms_parse_strictly():
    assert parse_output('{"verdict": "correct"}', "verdict") == 1.0
    assert parse_output('```json\n{"verdict": "wrong"}\n```', "verdict") == 0.0
    assert parse_output('{"verdict": "correct", "why": "x"}', "verdict") is None
    assert parse_output("The answer is correct.", "verdict") is None
    assert parse_output('{"score": 0.4}', "score") == 0.4 and parse_output('{"score": 1.4}', "score") is None
    assert parse_output('{"score": true}', "score") is None and parse_output("0.7", "score") is None
    assert parse_output(" 0.3 ", "number") == 0.3 and parse_output("0.3 because", "number") is None
    assert parse_output("reasoning...\ncorrect: yes", "yes_no") == 1.0
    assert parse_output('{"reasoning": "no match", "correct": "no"}', "yes_no") == 0.0
    assert parse_output("correct: yes\ncorrect: no", "yes_no") is None
    assert parse_output("The reply misses the constraint, so NO", "yes_no") == 0.0
    assert parse_output("it meets it: YES", "yes_no") == 1.0 and parse_output("maybe", "yes_no") is None


def test_judge_templates_fill_in_one_pass_and_bad_ones_are_refused(tmp_path):
    t = JudgeTemplate.load("answer")
    shown = t.fill(_q(), "<think>long reasoning about {question} ... so blue</think> blue it is")
    assert "A. red\nB. blue" in shown and "Reference answer: B" in shown
    assert "no final answer was extracted" in shown and "so blue" in shown and "{question}" in shown
    assert "Model's response:\nC" in t.fill(_q(), r"\boxed{C}")  # an extracted answer is shown alone
    bad = tmp_path / "bad.txt"
    bad.write_text("Question: {question} Reference: {reference}")
    with pytest.raises(JudgeError, match="never shows the student's response"):
        JudgeTemplate.load(str(bad), "verdict")
    with pytest.raises(JudgeError, match="output 'prose' unknown"):
        JudgeTemplate.load(str(bad), "prose")
    with pytest.raises(JudgeError, match="missing"):
        JudgeTemplate.load(str(tmp_path / "absent.txt"), "number")


class ScriptedJudge:
    """Answers each judge prompt with the reply its question's id maps to; records the prompts."""

    def __init__(self, replies):
        self.replies, self.prompts = replies, []
        self.weight_version, self.stats = "judge", EngineStats()

    def generate(self, requests, params):
        assert params.temperature == 0.0 and params.max_new_tokens == 512
        out = []
        for r in requests:
            text = "".join(map(chr, r.prompt_ids))
            self.prompts.append(text)
            out.append([Generation([1], [0.0], self.replies[r.request_id.removeprefix("judge:")], "stop")])
        return out


def test_the_chain_lets_the_rule_decide_and_sends_only_the_rest_to_the_judge(pool):
    qs = [Question(f"q{i}", f"question {i}", "B", metadata={"options": ["x", "y", "z"]}) for i in range(4)]
    responses = [r"\boxed{B}", r"\boxed{A}", "<think>I pick the second option</think>",
                 "<think>no idea</think>"]
    engine = ScriptedJudge({"q2": '{"verdict": "correct"}', "q3": "correct!"})
    judge = EvalJudge(engine, lambda text: [ord(c) for c in text])
    grader = BenchmarkGrader("choice+judge", judge, pool)
    scores = grader.grade(responses, qs)
    assert scores == [1.0, 0.0, 1.0, 0.0]
    assert len(engine.prompts) == 2  # the rule decided q0 and q1: the judge never saw them
    assert "question 2" in engine.prompts[0] and "I pick the second option" in engine.prompts[0]
    c = grader.counts
    assert (c.rule, c.judge, c.judge_malformed, c.undecided) == (2, 2, 1, 0)
    assert (judge.calls, judge.malformed) == (2, 1)


def test_without_a_judge_what_the_rule_cannot_decide_scores_zero_and_is_counted(pool):
    q = Question("q", "?", "7")
    grader = BenchmarkGrader("exact+judge", None, pool)
    assert grader.grade([r"\boxed{7}", r"\boxed{seven}"], [q, q]) == [1.0, 0.0]
    assert (grader.counts.rule, grader.counts.undecided) == (1, 1)


def test_metrics_and_benchmark_judges_and_per_item_rules_through_one_grader(pool):
    qs = [Question("a", "?", "Paris", metadata={"answers": ["paris"], "grader": "anls"}),
          Question("b", "?", "3", metadata={"rule": "number"}),
          Question("c", "Describe", "a cat <AND> a dog", metadata={"grader": "judge:mmvet"})]
    engine = ScriptedJudge({"c": '{"score": 0.5}'})
    grader = BenchmarkGrader("rule+judge", EvalJudge(engine, lambda t: [ord(ch) for ch in t]), pool)
    scores = grader.grade([r"\boxed{Pariss}", r"\boxed{3}", r"\boxed{a cat}"], qs)
    assert scores == [pytest.approx(1 - 1 / 6), 1.0, 0.5]  # one edit in six characters
    assert (grader.counts.metric, grader.counts.rule, grader.counts.judge) == (1, 1, 1)
    assert grader.counts.by_protocol == {"anls": 1, "rule+judge": 1, "judge:mmvet": 1}
    assert "<AND>" in engine.prompts[0]


def test_protocols_that_cannot_work_are_refused_at_start_up():
    assert Protocol.parse("choice+judge") == Protocol("choice", "answer")
    assert Protocol.parse("judge:hle") == Protocol("", "hle", "")
    with pytest.raises(GraderError, match="a metric never defers"):
        Protocol.parse("anls+judge")
    with pytest.raises(GraderError, match="unknown"):
        Protocol.parse("choise+judge")
    with pytest.raises(JudgeError, match="missing"):
        Protocol.parse("judge:/nowhere/official.txt:number")
    with pytest.raises(GraderError, match="needs metadata\\['rule'\\]"):
        Protocol.parse("rule").grader_path(Question("q", "?", "1"))


def test_an_evaluation_grader_out_of_range_stops_with_its_name_and_value():
    pool = GraderPool("tests.evaluation.test_grading:_too_high", workers=1, fractional=True)
    try:
        with pytest.raises(GraderError, match=r"returned 1.5 for question 'q'.*a number in \[0, 1\] or None"):
            pool.grade(["x"], [Question("q", "?", "1")])
    finally:
        pool.close()


def _too_high(response, q):
    return 1.5


def test_a_conversation_is_encoded_through_the_chat_template_with_its_earlier_turns(toy_tokenizer):
    from megatron_zppo.core.prompts import encode_media, encode_prompt

    history = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    q = Question("m", "and now?", "YES", history=history)
    ids = encode_media(lambda text, n_img, n_vid=0, history=(): encode_prompt(toy_tokenizer, text, n_img, n_vid,
                                                                                 history), "and now?", q)
    want = toy_tokenizer.apply_chat_template([*history, {"role": "user", "content": "and now?"}],
                                             add_generation_prompt=True, tokenize=True)
    want = list(want["input_ids"] if hasattr(want, "keys") else want)
    assert ids == want and ids != encode_prompt(toy_tokenizer, "and now?")
    assert Question.from_dict(json.loads(json.dumps(q.to_dict()))).history == history
    assert len({q, Question("m", "and now?", "YES", history=history)}) == 1  # hashable, its turns being dicts
    with pytest.raises(ValueError, match="history\\[0\\] must be"):
        Question("m", "?", "1", history=({"role": "robot", "content": "x"},))
