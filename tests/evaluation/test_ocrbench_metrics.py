"""OCRBench v2's per-task metrics against hand-computed values, the final answer they read, and
the official bucket report."""

import pytest

from megatron_zppo.core.records import Question
from megatron_zppo.evaluation import ocrbench
from megatron_zppo.evaluation.ocrbench import bucket_mean, buckets, score
from megatron_zppo.evaluation.teds import teds

OFFICIAL_TYPES = [
    "APP agent en", "ASCII art classification en", "key information extraction en", "key information mapping en",
    "math QA en", "full-page OCR en", "reasoning VQA en", "fine-grained text recognition en", "science QA en",
    "table parsing en", "text counting en", "text grounding en", "text recognition en", "text spotting en",
    "document classification en", "cognition VQA en", "VQA with position en", "chart parsing en",
    "document parsing en", "formula recognition en", "diagram QA en",
    "cognition VQA cn", "key information extraction cn", "formula recognition cn", "full-page OCR cn",
    "reasoning VQA cn", "text translation cn", "table parsing cn", "handwritten answer extraction cn",
    "document parsing cn"]


def item(task, answers, how="", text="q", **meta):
    return Question("ocrbench_v2_en:1", text, answers[0],
                    metadata={"task": task, "answers": list(answers), "eval": how, **meta})


def boxed(s):
    return f"<think>reasoning</think>\\boxed{{{s}}}"


# ---------------------------------------------------------------- VQA family

def test_vqa_short_gold_contained_in_the_prediction_case_ignored():
    q = item("text recognition en", ["stop"])
    assert score(boxed("The sign says STOP."), q) == 1.0
    assert score(boxed("GO"), q) == 0.0


def test_vqa_case_sensitive_items_need_the_exact_case():
    q = item("text recognition en", ["STOP"], "case sensitive")
    assert score(boxed("stop"), q) == 0.0
    assert score(boxed("STOP sign"), q) == 1.0


def test_vqa_long_gold_scores_its_anls_and_nothing_below_the_threshold():
    q = item("reasoning VQA en", ["the quick brown fox jumps"])
    assert score(boxed("the quick brown fox jump"), q) == pytest.approx(1 - 1 / 25)
    assert score(boxed("an unrelated sentence entirely"), q) == 0.0


def test_vqa_empty_prediction_scores_zero():
    assert score("<think>stop</think>", item("text recognition en", ["stop"])) == 0.0
    assert score("", item("cognition VQA cn", ["猫"])) == 0.0


def test_the_prediction_is_the_final_answer_not_the_reasoning():
    q = item("text recognition en", ["stop"])
    assert score("<think>it says stop</think>go", q) == 0.0
    assert score("<think>hmm</think>It says stop", q) == 1.0  # no box: the text after </think>


def test_chinese_vqa_ignores_spaces():
    assert score(boxed("答案是北 京"), item("cognition VQA cn", ["北京"])) == 1.0


def test_multiple_choice_by_letter():
    q = item("science QA en", ["B"], "multiple choice")
    assert [score(boxed(r), q) for r in ("B", "(B)", "B. apples", "C", "The answer")] == [1, 1, 1, 0, 0]


def test_counting_regression_and_exact_match():
    q = item("text counting en", ["10"], "regression")
    assert score(boxed("8"), q) == pytest.approx(0.8)
    assert score(boxed("4"), q) == 0.0  # closeness 0.4 is not above 0.5
    assert score(boxed("20"), q) == 0.0  # twice the gold or more
    assert score(boxed("no idea"), q) == 0.0
    assert score(boxed("There are 3 words"), item("text counting en", ["3"], "exact match")) == 1.0


def test_formula_recognition_ignores_spaces_and_zh_unwraps_text():
    assert score(boxed(r"$\frac{a} {b}$"), item("formula recognition en", [r"\frac{a}{b}"])) == 1.0
    assert score(boxed(r"\frac{a}{c}"), item("formula recognition en", [r"\frac{a}{b}"])) == 0.0
    assert score(boxed("面积 = 3"), item("formula recognition cn", [r"\text{面积}=3"])) == 1.0


def test_handwritten_choice_letters_with_any_separator_and_essays_by_similarity():
    q = item("handwritten answer extraction cn", ["ABD"])
    assert score(boxed("答案：A、B、D"), q) == 1.0
    assert score(boxed("AB"), q) == 0.0
    essay = item("handwritten answer extraction cn", ["abcd"], text="简答题")
    assert score(boxed("abce"), essay) == pytest.approx(0.75)


# ---------------------------------------------------------------- text similarity

def test_full_page_ocr_is_the_normalised_edit_similarity():
    q = item("full-page OCR en", ["hello world"])
    assert score(boxed("hello word"), q) == pytest.approx(10 / 11)
    assert score(boxed("hello world"), q) == 1.0
    assert score("", q) == 0.0
    assert score(boxed("Hello world"), q) == pytest.approx(10 / 11)  # case counts, as in the official


# ---------------------------------------------------------------- boxes

def test_text_grounding_is_the_iou_itself():
    q = item("text grounding en", ["10", "10", "20", "20"])
    assert score(boxed("[10, 10, 20, 20]"), q) == 1.0
    assert score(boxed("[20, 20, 30, 30]"), q) == 0.0  # touching, no overlap
    assert score(boxed("(15, 10, 25, 20)"), q) == pytest.approx(50 / 150)
    assert score("<think>x</think>first [0, 0, 5, 5], finally [10, 10, 20, 20]", q) == 1.0  # the last box
    assert score(boxed("[0, 0, 2000, 2000]"), q) == 0.0  # outside 0..1000: not a box
    assert score(boxed("somewhere at the top"), q) == 0.0


def test_text_grounding_falls_back_to_the_bbox_column():
    q = item("text grounding en", ["the word"], bbox=[0, 0, 10, 10])
    assert score(boxed("[0, 0, 10, 5]"), q) == pytest.approx(0.5)


def test_vqa_with_position_halves_content_and_box():
    q = item("VQA with position en", ["$5"], bbox=[1, 2, 30, 40])
    assert score(boxed('{"answer": "$5", "bbox": [1, 2, 30, 40]}'), q) == 1.0
    assert score(boxed('{"answer": "$6", "bbox": [1, 2, 30, 40]}'), q) == 0.5
    assert score(boxed('{"answer": "$5"}'), q) == 0.5
    assert score(boxed("five dollars"), q) == 0.0


def test_text_spotting_is_the_f1_of_box_and_text_matches():
    q = item("text spotting en", ["x"], bbox_list=[[0, 0, 10, 0, 10, 5, 0, 5], [20, 0, 40, 0, 40, 10, 20, 10]],
             content=["OPEN", "Shop"])
    three = "[[0, 0, 10, 5, 'open'], [20, 0, 40, 10, 'SHOP.'], [50, 50, 60, 60, 'x']]"
    assert score(boxed(three), q) == pytest.approx(0.8)  # P 2/3, R 1
    assert score(boxed("(0, 0, 10, 5, OPEN)"), q) == pytest.approx(2 / 3)  # P 1, R 1/2
    assert score(boxed("[[0, 0, 10, 5, 'CLOSED']]"), q) == 0.0
    assert score(boxed("nothing here"), q) == 0.0


# ---------------------------------------------------------------- structured answers

KIE_GOLD = '{"name": "Bob", "total": ["12.50", "12.5"]}'


def test_kie_per_key_match_over_the_union_of_keys():
    q = item("key information extraction en", [KIE_GOLD])
    assert score(boxed('{"name": "bob", "total": "12.5"}'), q) == 1.0  # any accepted value, case ignored
    assert score(boxed('{"name": "Bob", "total": "13", "date": "x"}'), q) == pytest.approx(1 / 3)
    assert score('<think>x</think>```json\n{"name": "Bob", "total": "12.50"}\n```', q) == 1.0


def test_kie_malformed_json_falls_back_to_key_value_pairs_or_zero():
    q = item("key information mapping en", [KIE_GOLD])
    assert score('<think>x</think>{"name": "Bob", "total": ', q) == 0.5  # name read, total missing
    assert score(boxed("no idea"), q) == 0.0
    assert score("", q) == 0.0


def test_kie_chinese_gold_is_a_python_literal():
    q = item("key information extraction cn", ["{'姓名': '张三', '金额': ['5', '5.0']}"])
    assert score(boxed('{"姓名": "张 三", "金额": "5.0"}'), q) == 1.0


def doc(rows_html):
    return f"<html><body><table>{rows_html}</table></body></html>"


# Gold: 2 rows x 2 cells. Elements below <table>: 2 tr + 4 td = 6 (the official's node count).
TEDS_GOLD = doc("<tr><td>ab</td><td>c</td></tr><tr><td>d</td><td>e</td></tr>")


def test_teds_identical_tables_score_one():
    assert teds(TEDS_GOLD, TEDS_GOLD) == 1.0


def test_teds_one_cell_text_changed_costs_its_levenshtein_share():
    # "ab" -> "ax": rename cost = Levenshtein 1 / max(2, 2) = 0.5; TEDS = 1 - 0.5 / 6 = 11/12.
    pred = doc("<tr><td>ax</td><td>c</td></tr><tr><td>d</td><td>e</td></tr>")
    assert teds(pred, TEDS_GOLD) == pytest.approx(11 / 12)
    # an element inside a cell is a token pair: "<b>", "a", "b", "</b>" vs "a", "b": distance 2 / 4.
    bold = doc("<tr><td><b>ab</b></td><td>c</td></tr><tr><td>d</td><td>e</td></tr>")
    # 7 elements below the bold table (the <b> counted, as the official does): 1 - 0.5 / 7.
    assert teds(bold, TEDS_GOLD) == pytest.approx(1 - 0.5 / 7)


def test_teds_missing_row_costs_its_inserted_nodes():
    # pred has 1 tr + 2 td = 3 elements; gold 6; inserting the tr and its 2 td costs 3: 1 - 3/6.
    pred = doc("<tr><td>ab</td><td>c</td></tr>")
    assert teds(pred, TEDS_GOLD) == pytest.approx(0.5)
    assert teds(TEDS_GOLD, pred) == pytest.approx(0.5)  # deleting costs the same


def test_teds_differing_colspan_is_a_rename_of_cost_one():
    # 2 tr + 3 td = 5 elements each; the first td's colspan 2 vs 1 costs 1 (texts equal): 1 - 1/5.
    gold = doc('<tr><td colspan="2">ab</td></tr><tr><td>c</td><td>d</td></tr>')
    pred = doc("<tr><td>ab</td></tr><tr><td>c</td><td>d</td></tr>")
    assert teds(pred, gold) == pytest.approx(0.8)
    assert teds(gold.replace('colspan="2"', 'colspan="x"'), gold) == 0.0  # an unreadable span: 0


def test_teds_without_a_table_scores_zero():
    assert teds("<html><body><p>ab c d e</p></body></html>", TEDS_GOLD) == 0.0
    assert teds("", TEDS_GOLD) == 0.0


def test_table_parsing_scores_teds_of_html_and_markdown_tables():
    gold = "<table><thead><tr><th>a</th><th>b</th></tr></thead><tr><td>1</td><td>2</td></tr></table>"
    q = item("table parsing en", [gold], text="Convert the table to HTML.")
    assert score(boxed(gold), q) == 1.0
    assert score("<think>x</think>Here it is:\n" + gold + "\nDone.", q) == 1.0  # cut from "<table"
    # without <thead>: 6 elements vs the gold's 7 (thead, 2 tr, 2 th, 2 td); deleting thead costs 1.
    assert score(boxed(gold.replace("<thead>", "").replace("</thead>", "")), q) == pytest.approx(6 / 7)
    assert score(boxed("a b 1 2"), q) == 0.0  # no <table> for an HTML question
    md = item("table parsing en", ["| a | b |\n|---|---|\n| 1 | 2 |"], text="Give the table in markdown.")
    # 2 tr + 4 td = 6 elements; "3" for "2" costs 1: 1 - 1/6.
    assert score("<think>x</think>|a|b|\n|-|-|\n|1|3|", md) == pytest.approx(5 / 6)
    assert score("", item("table parsing cn", [gold])) == 0.0
    assert score(boxed(gold), item("table parsing cn", [gold])) == 1.0


def test_chart_parsing_scores_teds_of_the_dicts_as_two_column_tables():
    q = item("chart parsing en", ['{"2019": "5", "2020": "7"}'])
    assert score("<think>x</think>{'2019': 5, '2020': 7}", q) == 1.0
    # 2 tr + 4 td = 6 elements; the value cell "9" vs "7" costs 1: 1 - 1/6.
    assert score("<think>x</think>{'2019': 5, '2020': 9}", q) == pytest.approx(5 / 6)
    # values' characters are joined by spaces (the official's dict_to_html): "1 2" vs "1 3" costs 1/3.
    wide = item("chart parsing en", ['{"2019": "12"}'])
    assert score("<think>x</think>{'2019': 13}", wide) == pytest.approx(1 - (1 / 3) / 3)
    assert score(boxed("a bar chart"), q) == 0.0


# ---------------------------------------------------------------- dispatch and report

def test_every_official_type_has_a_metric_and_a_bucket_and_nothing_else():
    assert sorted(ocrbench.METRICS) == sorted(OFFICIAL_TYPES)
    en = {buckets(t) for t in OFFICIAL_TYPES if t.endswith(" en")}
    zh = {buckets(t) for t in OFFICIAL_TYPES if t.endswith(" cn")}
    assert len(en) == 8 and len(zh) == 5
    assert buckets("text grounding en") == "text detection" and buckets("text translation cn") == "knowledge reasoning"


def test_unknown_type_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'text magic en'"):
        score("x", item("text magic en", ["a"]))
    with pytest.raises(ValueError, match="'text magic en'"):
        buckets("text magic en")


def test_bucket_mean_is_the_mean_of_the_languages_non_empty_bucket_means():
    scores = {"text recognition en": [1.0, 0.0], "full-page OCR en": [0.5], "text grounding en": [1.0],
              "math QA en": [0.0], "text spotting en": [], "cognition VQA cn": [1.0], "reasoning VQA cn": [0.0, 0.5]}
    assert bucket_mean(scores, "en") == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert bucket_mean(scores, "zh") == pytest.approx((1.0 + 0.25) / 2)
    with pytest.raises(ValueError):
        bucket_mean(scores, "fr")
    with pytest.raises(ValueError):
        bucket_mean({"math QA en": [1.0]}, "zh")
