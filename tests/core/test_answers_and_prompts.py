import pytest

from megatron_zppo.core.answers import last_boxed, wrong_answer_list
from megatron_zppo.core.prompts import PromptTemplates, TemplateError, parse_summary


@pytest.mark.parametrize(
    "text, expected",
    [
        ("the answer is \\boxed{5}", "5"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{a{b{c}}d} tail", "a{b{c}}d"),
        ("no box here", None),
        ("\\boxed{7} and a cut-off \\boxed{\\frac{1", "7"),  # unclosed last box: earlier one wins
        ("\\boxed{}", ""),
        # Math-Verify's extraction accepts these, so an NCQ list or a hint's redaction must too:
        ("so \\boxed 5.", "5"),
        ("\\boxed {5}", "5"),
        ("\\boxed\n{5}", "5"),
        ("\\fbox{7}", "7"),
        ("\\boxed{\n\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}\n}", "\n\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}\n"),
        ("\\boxedx{5}", None),  # another command, not a box
        ("\\boxed{\\frac{1 cut} then \\boxed{2}", "2"),  # an unclosed box does not hide a later one
    ],
)
def test_last_boxed_takes_the_last_balanced_box(text, expected):
    assert last_boxed(text) == expected


def test_wrong_answer_list_dedupes_in_first_seen_order_and_skips_unboxed():
    responses = ["\\boxed{3}", "nothing", "\\boxed{ 4 }", "\\boxed{3}", "\\boxed{4}", "\\boxed{1}"]
    assert wrong_answer_list(responses) == ["3", "4", "1"]


def test_every_prompt_kind_ends_with_the_closer():
    t = PromptTemplates.load()
    assert "\\boxed{}" in t.closer and "<think>" in t.closer
    for p in (t.plain("Q?"), t.bcq_prompt("Q?", ["a", "b"]), t.ncq_prompt("Q?", ["a"], ["1"])):
        assert p.startswith("Q?") and p.endswith(t.closer)


def test_bcq_prompt_wraps_both_candidates_in_order_without_labels():
    t = PromptTemplates.load()
    p = t.bcq_prompt("Q?", ["first text", "second text"])
    assert p.count("<candidate>\n") == 2 and p.count("</candidate>") == 2
    assert p.index("first text") < p.index("second text")
    assert "correct:" not in p.lower() and "teacher" not in p.lower()


def test_ncq_prompt_lists_wrong_answers_boxed_and_comma_joined():
    t = PromptTemplates.load()
    p = t.ncq_prompt("Q?", ["w1", "w2"], ["3", "x+1"])
    assert "\\boxed{3}, \\boxed{x+1}" in p and "WRONG" in p
    assert p.count("<candidate>\n") == 2
    unstated = t.ncq_prompt("Q?", ["w1"], [])  # no wrong rollout stated an answer: nothing to list
    assert "none of them reached a final answer" in unstated and "\\boxed" not in unstated.split("<candidate>")[0] and "WRONG" in unstated


def test_placeholders_are_filled_once_so_question_text_is_not_expanded():
    t = PromptTemplates.load()
    p = t.bcq_prompt("What does {candidates} mean?", ["a", "b"])
    assert "What does {candidates} mean?" in p


def test_template_missing_a_placeholder_is_rejected_naming_the_file(tmp_path):
    for name in ("closer", "bcq", "ncq", "compress"):
        (tmp_path / f"{name}.txt").write_text((PromptTemplates.load().__dict__[name]))
    (tmp_path / "ncq.txt").write_text("{question}\n{candidates}")  # no {wrong_answers}
    with pytest.raises(ValueError, match=r"ncq\.txt.*wrong_answers"):
        PromptTemplates.load(tmp_path)
    (tmp_path / "bcq.txt").unlink()
    with pytest.raises(TemplateError, match="bcq.txt"):
        PromptTemplates.load(tmp_path)


def test_user_templates_replace_the_defaults(tmp_path):
    for name, text in {"closer": "END", "bcq": "B {question} {candidates}",
                       "ncq": "N {question} {wrong_answers} {candidates}", "compress": "C {response}"}.items():
        (tmp_path / f"{name}.txt").write_text(text)
    t = PromptTemplates.load(tmp_path)
    assert t.bcq_prompt("Q", ["a", "b"]).startswith("B Q <candidate>") and t.plain("Q") == "Q\n\nEND"
    assert t.compress_prompt("resp") == "C resp"


def test_parse_summary_keeps_only_summaries_that_keep_the_answer():
    orig = "long reasoning ... \\boxed{42}"
    assert parse_summary("<summary>short \\boxed{42}</summary>", orig) == ("short \\boxed{42}", True)
    assert parse_summary("<summary>short \\boxed{41}</summary>", orig) == (orig, False)  # answer changed
    assert parse_summary("no tags \\boxed{42}", orig) == (orig, False)
    assert parse_summary("<summary>  </summary>", orig) == (orig, False)
