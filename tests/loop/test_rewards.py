import pytest

from megatron_zppo.core.records import Question
from megatron_zppo.rewards import (
    grade_choice,
    grade_exact,
    grade_last_number,
    grade_math,
    grade_math_verify,
    grade_task,
)

Q = Question("q", "What is half of one?", "\\frac{1}{2}")


def test_math_grader_uses_the_last_box_and_strips_degree_and_percent_on_retry():
    assert grade_math("first \\boxed{3} then \\boxed{0.5}", Q) == 1.0
    assert grade_math("\\boxed{0.4}", Q) == 0.0
    assert grade_math("no box, 0.5", Q) == 0.0
    assert grade_math("\\boxed{30^\\circ}", Question("a", "angle?", "30")) == 1.0
    assert grade_math("\\boxed{45\\%}", Question("p", "share?", "45")) == 1.0
    assert grade_math("\\boxed{30\\circ}", Question("a", "angle?", "30")) == 1.0  # a bare \\circ
    assert grade_math("\\boxed{30\\deg}", Question("a", "angle?", "30")) == 1.0
    assert grade_math("\\boxed{30°}", Question("a", "angle?", "30^\\circ")) == 1.0  # stripped on both sides
    assert grade_math("\\boxed{\\cos x}", Question("c", "d/dx sin x?", "\\cos x")) == 1.0  # \\cos is not \\circ
    assert grade_math_verify("\\boxed{0.5}", Q) == 1.0 and grade_math_verify("\\boxed{2}", Q) == 0.0


@pytest.mark.parametrize("response, gold, right", [
    ("\\boxed{\n\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}\n}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", 1.0),
    ("\\boxed{\n\\begin{pmatrix} 3 \\\\ -1 \\end{pmatrix}\n}", "-1", 0.0),  # a loose parse once said "-1"
    ("\\boxed{\\frac{1}\n{2}}", "1/2", 1.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{3}", "4", 0.0),
])
def test_math_verify_grader_reads_multi_line_boxes(response, gold, right):
    assert grade_math_verify(response, Question("q", "t", gold)) == right


def test_exact_and_choice_graders():
    q = Question("c", "Pick", "B")
    assert grade_choice("\\boxed{(B)}", q) == 1.0 and grade_choice("\\boxed{b.}", q) == 1.0
    assert grade_choice("\\boxed{C}", q) == 0.0 and grade_choice("B", q) == 0.0
    assert grade_exact("\\boxed{ ssilb }", Question("s", "?", "ssilb")) == 1.0
    assert grade_exact("\\boxed{ssil}", Question("s", "?", "ssilb")) == 0.0


def test_task_grader_uses_reasoning_gyms_scorer():
    from megatron_zppo.data import SourceConfig, load_source

    (q,), _ = load_source(SourceConfig(kind="reasoning_gym", task="chain_sum", size=1, seed=3))
    assert grade_task(f"\\boxed{{{q.answer}}}", q) == 1.0
    assert grade_task(f"\\boxed{{{int(q.answer) + 1}}}", q) == 0.0
    with pytest.raises(ValueError, match="metadata\\['entry'\\]"):
        grade_task("\\boxed{1}", Q)


def test_last_number_takes_the_boxed_answer_else_the_last_number_compared_as_numbers():
    q = Question("n", "5 - 9 =", "-4")
    assert grade_last_number("5 - 9 = -4", q) == 1.0
    assert grade_last_number("5 - 9 = 1", q) == 0.0  # the last number, not any number
    assert grade_last_number("It is -4.0, not \\boxed{-4}", q) == 1.0
    assert grade_last_number("-4 is tempting, but \\boxed{4}", q) == 0.0  # a boxed answer wins
    assert grade_last_number("no idea", q) == 0.0
    assert grade_last_number("\\boxed{x}", Question("t", "?", "x")) == 1.0  # non-numeric: as text
