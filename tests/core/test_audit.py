"""The candidate-match audit (core/audit.py) and the data ZPPO records for it (methods/zppo.py)."""

import math
import random
from types import SimpleNamespace

import pytest

from megatron_zppo.core.audit import (
    audit_metrics, bcq_audit, bcq_candidate_answers, ncq_audit, ncq_teacher_answers, normalise,
)
from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import PromptKind
from megatron_zppo.core.reformulate import ZppoConfig, plan_reformulations
from megatron_zppo.methods.zppo import LISTED, ZppoPrompts
from tests.core.factories import group, question, teacher


@pytest.mark.parametrize("raw, want", [
    ("\\text{ Five }", "five"),
    ("5\\,\\mathrm{kg}", "5\\,kg"),
    ("\\textbf{B}", "b"),
    ("\\text{\\textbf{Yes}}", "yes"),  # nested wrappers
    ("\\text {x}", "x"),  # space before the brace
    ("\\mathrm{\\frac{1}{2}}", "\\frac{1}{2}"),  # braces inside the wrapper stay
    ("  A \n\t B ", "a b"),
    ("\\frac{1}{2}", "\\frac{1}{2}"),
    ("\\textstyle 3", "\\textstyle 3"),  # a longer command is not a wrapper
    ("\\text{abc", "abc"),  # unbalanced: the command goes, the text stays
])
def test_normalise_lowercases_unwraps_formatting_and_collapses_white_space(raw, want):
    assert normalise(raw) == want


def _plans():
    """q: the teacher solves it (BCQ + NCQ); r: the teacher never ran (NCQ only)."""
    q, r = question("q"), question("r")
    hard = [group(q, [0, 0], texts=["s \\boxed{7}", "s \\boxed{7}"]), group(r, [0], texts=["\\boxed{2}"])]
    tch = {"q": teacher(q, [1, 0], ["T \\boxed{\\text{Five}}", "T \\boxed{9}"])}
    return hard, tch, plan_reformulations(hard, tch, 5, ZppoConfig(), random.Random(0))


def _reformulated():
    q, r = question("q"), question("r")
    bcq = group(q, [1, 1, 1, 0, 0, 0, 0, 0], gid="q:plain:bcq", kind=PromptKind.BCQ, texts=[
        "\\boxed{five}", "\\boxed{ \\textbf{FIVE} }", "\\boxed{5}",  # correct: pos, pos, other
        "\\boxed{7}", "\\boxed{ 7}", "\\boxed{\\mathrm{7}}", "\\boxed{8}", "no box"])  # wrong: neg x3, other x2
    ncq_q = group(q, [0, 1, 0, 0], gid="q:plain:ncq", kind=PromptKind.NCQ,
                  texts=["\\boxed{7}", "\\boxed{Five}", "\\boxed{6}", "none"])  # neg, pos, other, other
    ncq_r = group(r, [1, 0], gid="r:plain:ncq", kind=PromptKind.NCQ,
                  texts=["\\boxed{2}", "\\boxed{five}"])  # neg, other (no teacher answer known for r)
    return [bcq, ncq_q, ncq_r]


def test_recorded_candidates_are_the_shown_answers_and_the_teachers_correct_ones():
    _, tch, plans = _plans()
    assert [(p.group_id, p.kind.value) for p in plans] == [("q:plain:bcq", "bcq"), ("q:plain:ncq", "ncq"),
                                                            ("r:plain:ncq", "ncq")]
    assert bcq_candidate_answers(plans) == {"q:plain:bcq": ["\\text{Five}", "7"]}
    assert ncq_teacher_answers(plans, tch) == {"q:plain:ncq": ["\\text{Five}"]}  # r: the teacher never ran
    assert ncq_teacher_answers(plans, {**tch, "r": teacher(question("r"), [0])})["r:plain:ncq"] == []


def test_audit_counts_and_rates_on_scripted_rollouts():
    _, tch, plans = _plans()
    groups = _reformulated()
    listed = {p.group_id: p.wrong_answers for p in plans if p.kind is PromptKind.NCQ}
    bcq = bcq_audit(groups, bcq_candidate_answers(plans))
    assert bcq == {"correct_match_pos": 2, "correct_match_neg": 0, "correct_other": 1,
                   "wrong_match_pos": 0, "wrong_match_neg": 3, "wrong_other": 2}
    ncq = ncq_audit(groups, listed, ncq_teacher_answers(plans, tch))
    assert ncq == {"n": 6, "match_neg": 2, "n_teacher": 4, "match_pos": 1, "other": 3}
    m = audit_metrics(bcq, ncq)
    assert (m["bcq_match_pos_correct"], m["bcq_other_correct"], m["bcq_match_neg_correct"]) == (2 / 3, 1 / 3, 0.0)
    assert (m["bcq_match_neg_wrong"], m["bcq_other_wrong"], m["bcq_match_pos_wrong"]) == (3 / 5, 2 / 5, 0.0)
    assert (m["ncq_match_neg"], m["ncq_match_pos"], m["ncq_other"]) == (2 / 6, 1 / 6, 3 / 6)  # a row sums to 1
    assert m["ncq_repeats_listed_answer"] == m["ncq_match_neg"]
    assert (m["bcq_audit_n_correct"], m["bcq_audit_n_wrong"], m["ncq_audit_n"], m["ncq_audit_n_teacher"]) == (3, 5, 6, 4)
    assert m["ncq_audit_n_pos"] == 6
    none_known = audit_metrics(bcq, {**ncq, "n_teacher": 0, "match_pos": 0, "other": 4})
    assert math.isnan(none_known["ncq_match_pos"]) and none_known["ncq_audit_n_pos"] == 0


def test_zppo_prompts_record_what_the_audit_needs_and_old_rollouts_give_nan():
    hard, tch, _ = _plans()
    stub = SimpleNamespace(rollouts=lambda qs, n, seed: {q.id: tch[q.id] for q in qs if q.id in tch})
    prompts = ZppoPrompts(ZppoConfig(compression=False), stub, 2, PromptTemplates.load(), lambda s: None, 0)
    made = prompts(hard, 5, 0, {})
    assert sorted(s.group_id for s in made.specs) == ["q:plain:bcq", "q:plain:ncq", "r:plain:ncq"]
    m = prompts.metrics(SimpleNamespace(reformulated=_reformulated(), method_data=made.data))
    assert (m["bcq_match_pos_correct"], m["bcq_match_neg_wrong"], m["ncq_match_pos"]) == (2 / 3, 3 / 5, 1 / 6)
    old = prompts.metrics(SimpleNamespace(reformulated=_reformulated(), method_data={LISTED: made.data[LISTED]}))
    assert math.isnan(old["bcq_match_pos_correct"]) and math.isnan(old["ncq_match_pos"])
    assert old["ncq_repeats_listed_answer"] == old["ncq_match_neg"] == 2 / 6
    nothing = prompts.metrics(SimpleNamespace(reformulated=[], method_data={}))
    assert all(math.isnan(v) for k, v in nothing.items() if "_audit_n" not in k) and nothing["ncq_audit_n"] == 0
