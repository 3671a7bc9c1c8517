"""The effect experiment's world: pair-sum questions (one pair only), their grader, their data
files, and the supervised mix that never shows a student the RL run's questions."""

import itertools
import json
import re
from pathlib import Path

from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import Question
from megatron_zppo.toy import pair_sum
from megatron_zppo.toy.corpus import WORLDS, corpus

ROOT = Path(__file__).resolve().parents[2]


def test_every_question_has_exactly_one_pair_and_the_grader_checks_the_pair_not_the_string():
    qs = pair_sum.questions(7, 200)
    assert len({q.text for q in qs}) == 200
    for q in qs:
        nums, target = pair_sum.parse(q.text)
        pairs = [(a, b) for a, b in itertools.combinations(nums, 2) if a + b == target]
        assert len(pairs) == 1 and q.answer == "+".join(map(str, sorted(pairs[0])))
    q = Question("q", "Which two of 7 9 1 3 5 4 add up to 13?", "4+9")
    assert pair_sum.grade("<think>9+4=13</think>\\boxed{9+4}", q) == 1.0  # either order
    assert pair_sum.grade("\\boxed{4 + 9}", q) == 1.0
    for wrong in ("\\boxed{5+8}", "\\boxed{6+7}", "\\boxed{13}", "\\boxed{4+9+0}", "4+9", "\\boxed{}"):
        assert pair_sum.grade(wrong, q) == 0.0, wrong  # 8 is not in the list; 6 and 7 neither
    q2 = Question("q", "Which two of 7 2 1 3 5 4 add up to 14?", "7+7")
    assert pair_sum.grade("\\boxed{7+7}", q2) == 0.0  # one 7 in the list: a number used twice


def test_the_data_files_are_the_generator_s_and_train_and_eval_do_not_overlap(tmp_path):
    pair_sum.write(tmp_path)
    for name in pair_sum.SPLITS:
        assert (tmp_path / f"{name}.jsonl").read_text() == (ROOT / "examples/pair_sum/data" / f"{name}.jsonl").read_text()
    texts = {n: {json.loads(line)["question"] for line in (tmp_path / f"{n}.jsonl").read_text().splitlines()}
             for n in pair_sum.SPLITS}
    assert not texts["train"] & texts["eval"]


def test_the_mix_teaches_checking_on_other_questions_and_never_shows_the_reserved_ones():
    reserved = {q.text for q in pair_sum.questions(0, 400) + pair_sum.questions(1, 128)}
    mix = corpus(PromptTemplates.load(str(ROOT / "examples/cpu_toy/templates")), 600, seed=0,
                 reserved=frozenset(reserved), world=WORLDS["pair_sum"])
    assert not [e for e in mix if any(t in e.prompt for t in reserved)]
    bcq = [e for e in mix if "one right and one WRONG" in e.prompt and "add up to" in e.prompt]
    assert len(bcq) > 20
    for e in bcq:  # the response is the right candidate, shown verbatim in the prompt
        assert e.response in e.prompt and pair_sum.grade(e.response, Question("q", e.prompt, "")) == 1.0
    claims = [e for e in mix if "<candidate>" in e.prompt and "add up to" in e.prompt]
    faked = absent = 0
    for e in claims:
        nums, target = pair_sum.parse(e.prompt)
        for a, b, total in ((int(x), int(y), int(t)) for x, y, t in re.findall(r"(\d)\+(\d)=(\d+)<", e.prompt)):
            faked += a + b != total and total == target
            absent += a + b == total == target and not (a in nums and b in nums)
    # Wrong candidates a glance at the sum cannot expose: a false sum, or a number not in the list.
    assert faked > 10 and absent > 10
