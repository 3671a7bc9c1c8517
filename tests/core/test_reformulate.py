import random

import pytest

from megatron_zppo.config_io import from_dict
from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import PromptKind
from megatron_zppo.core.reformulate import (
    ZppoConfig, fraction_count, plan_reformulations, render, select_hard,
)
from tests.core.factories import group, question, teacher


def test_fraction_count_rounds_halves_up():
    assert fraction_count(0.25, 384) == 96
    assert fraction_count(0.25, 10) == 3  # 2.5 -> 3, where round() would give 2
    assert fraction_count(0.25, 9) == 2
    assert fraction_count(0.0, 100) == 0


def test_select_hard_is_acc_below_tau_lowest_first_ties_in_batch_order_and_capped():
    qs = [question(f"q{i}") for i in range(5)]
    accs = [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]]
    groups = [group(q, r) for q, r in zip(qs, accs)]
    hard = select_hard(groups, tau=0.5, cap=10)
    # q0 has acc exactly 0.5: not hard. q4 acc 0.75: not hard.
    assert [g.question.id for g in hard] == ["q1", "q3", "q2"]
    assert [g.question.id for g in select_hard(groups, tau=0.5, cap=2)] == ["q1", "q3"]
    assert [g.question.id for g in select_hard(groups, tau=0.8, cap=10)] == ["q1", "q3", "q2", "q0", "q4"]


def test_bcq_needs_a_correct_teacher_rollout_ncq_only_a_wrong_student_one():
    qa, qb = question("a"), question("b")
    hard = [group(qa, [0, 0, 0, 0]), group(qb, [0, 0, 0, 1])]
    tch = {"a": teacher(qa, [0, 0, 0, 0]), "b": teacher(qb, [0, 1, 0, 0])}
    plans = plan_reformulations(hard, tch, cap=10, cfg=ZppoConfig(), rng=random.Random(0))
    # teacher fails "a": NCQ only. "b": BCQ then NCQ.
    assert [(p.question.id, p.kind) for p in plans] == [
        ("a", PromptKind.NCQ), ("b", PromptKind.BCQ), ("b", PromptKind.NCQ)]
    assert len({p.group_id for p in plans}) == 3
    bcq = plans[1]
    assert tch["b"][1].response_text in bcq.candidates
    assert bcq.candidates[bcq.teacher_position] == tch["b"][1].response_text
    wrong_texts = {s.response_text for s in hard[1].wrong()}
    assert bcq.candidates[1 - bcq.teacher_position] in wrong_texts


def test_post_cap_walks_by_accuracy_bcq_first_and_one_slot_keeps_bcq():
    qs = [question(f"q{i}") for i in range(3)]
    hard = [group(qs[0], [0, 0, 0, 0]), group(qs[1], [0, 0, 0, 0]), group(qs[2], [1, 0, 0, 0])]
    tch = {q.id: teacher(q, [1, 0]) for q in qs}
    plans = plan_reformulations(hard, tch, cap=3, cfg=ZppoConfig(), rng=random.Random(0))
    assert [(p.question.id, p.kind.value) for p in plans] == [("q0", "bcq"), ("q0", "ncq"), ("q1", "bcq")]
    assert plan_reformulations(hard, tch, cap=0, cfg=ZppoConfig(), rng=random.Random(0)) == []


def test_ablation_switches_remove_their_prompt_kind_and_all_off_is_plain_grpo():
    q = question("q")
    hard, tch = [group(q, [0, 0])], {"q": teacher(q, [1])}
    kinds = lambda cfg: [p.kind.value for p in plan_reformulations(hard, tch, 5, cfg, random.Random(0))]
    assert kinds(ZppoConfig()) == ["bcq", "ncq"]
    assert kinds(ZppoConfig(bcq=False)) == ["ncq"]
    assert kinds(ZppoConfig(ncq=False)) == ["bcq"]
    assert kinds(ZppoConfig(bcq=False, ncq=False)) == []


def test_ncq_holds_all_wrong_rollouts_and_their_deduplicated_answers():
    q = question("q")
    texts = ["a \\boxed{3}", "b \\boxed{4}", "c \\boxed{3}", "d \\boxed{5}"]
    g = group(q, [0, 0, 0, 1], texts=texts)
    (ncq,) = plan_reformulations([g], {}, 5, ZppoConfig(), random.Random(0))
    assert ncq.candidates == texts[:3] and ncq.wrong_answers == ["3", "4"]
    prompt = render([ncq], PromptTemplates.load())[0]
    assert "\\boxed{3}, \\boxed{4}" in prompt and all(t in prompt for t in texts[:3]) and texts[3] not in prompt


def test_render_compresses_distinct_candidates_in_one_call():
    q = question("q")
    g = group(q, [0, 0], texts=["same \\boxed{1}", "same \\boxed{1}"])
    plans = plan_reformulations([g], {"q": teacher(q, [1], ["T \\boxed{5}"])}, 5, ZppoConfig(), random.Random(0))
    calls = []

    def compress(texts):
        calls.append(list(texts))
        return [f"SUMMARY[{t}]" for t in texts]

    prompts = render(plans, PromptTemplates.load(), compress)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(["same \\boxed{1}", "T \\boxed{5}"])
    assert "SUMMARY[T \\boxed{5}]" in prompts[0] and "SUMMARY[same \\boxed{1}]" in prompts[1]
    with pytest.raises(ValueError, match="2 candidates"):
        render(plans, PromptTemplates.load(), lambda texts: ["one"])


def test_teacher_mapping_with_student_or_unscored_samples_is_rejected():
    q = question("q")
    bad = {"q": group(q, [1]).samples}  # student samples posing as teacher rollouts
    with pytest.raises(ValueError, match="'student' sample"):
        plan_reformulations([group(q, [0, 0])], bad, 5, ZppoConfig(), random.Random(0))


def test_config_rejects_out_of_range_values():
    from megatron_zppo.config import MethodConfig

    with pytest.raises(ValueError, match="method.tau: 0.0 is out of range"):
        from_dict(MethodConfig, {"tau": 0}, "method")  # ranges are checked where configs are read
    with pytest.raises(ValueError, match="method.rho_aug: -0.1 is out of range"):
        from_dict(MethodConfig, {"rho_aug": -0.1}, "method")
