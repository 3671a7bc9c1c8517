"""The chart/document/OCR converters read small files written in each release's published layout
(parquet, Image columns as {bytes, path} structs holding a real PNG) and give the expected
questions field by field; a wrong layout names the file and the column."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from megatron_zppo.evaluation.benchmarks.layout import LayoutError
from megatron_zppo.evaluation.benchmarks.registry import CONVERTERS, convert
from megatron_zppo.evaluation.benchmarks.vlm_docs import (DESCRIPTIVE_RUBRICS, DESCRIPTIVE_TEMPLATES,
                                                          REASONING_RUBRICS)

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="PNG")
    return buf.getvalue()


def write(path, rows, schema):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


# ---------------------------------------------------------------- CharXiv

CHARXIV = pa.schema([("image", IMAGE), ("category", pa.string()), ("figure_path", pa.string()),
                     ("num_subplots", pa.int64()), ("subplot_row", pa.int64()), ("subplot_col", pa.int64()),
                     ("subplot_loc", pa.string()),
                     *[(f"descriptive_q{k}", pa.int64()) for k in range(1, 5)],
                     *[(f"descriptive_a{k}", pa.string()) for k in range(1, 5)],
                     ("reasoning_q", pa.string()), ("reasoning_a", pa.string()),
                     ("reasoning_q_source", pa.int64()), ("reasoning_a_type", pa.int64())])


def charxiv_row(fig, qids, answers, q, a, a_type, row=0, col=0, loc=None, q_source=1):
    qids = list(qids) + [None] * (4 - len(qids))
    answers = list(answers) + [None] * (4 - len(answers))
    return {"image": {"bytes": png(), "path": f"{fig}.jpg"}, "category": "cs", "figure_path": f"images/{fig}.jpg",
            "num_subplots": 1, "subplot_row": row, "subplot_col": col, "subplot_loc": loc,
            **{f"descriptive_q{k + 1}": qids[k] for k in range(4)},
            **{f"descriptive_a{k + 1}": answers[k] for k in range(4)},
            "reasoning_q": q, "reasoning_a": a, "reasoning_q_source": q_source, "reasoning_a_type": a_type}


@pytest.fixture
def charxiv(tmp_path):
    rows = [charxiv_row(0, [1, 13, 18, 11], ["Loss curves", "A, B", "2 by 3", "Yes"],
                        "Which model declines most? ", "Joint-CNN", 1, row=1, col=2),
            charxiv_row(2, [7, 19], ["0.12", "1"], "What is the value at t=10?", "0.5", 3),
            charxiv_row(5, [16], ["Increases"], "How much higher is A than B?", "1.25", 4, loc="the bottom subplot"),
            charxiv_row(7, [2], ["Time"], "Which trend does the red curve follow?", "rises", 2, q_source=3)]
    folder = tmp_path / "CharXiv"
    write(folder / "val.parquet", rows, CHARXIV)
    # the test file (answers withheld) beside it is never read
    write(folder / "test.parquet", [charxiv_row(9, [1], ["x"], "q", None, 1)], CHARXIV)
    return folder


def test_charxiv_reasoning_gives_one_item_per_chart_with_its_category_guidance_and_rubric(charxiv):
    qs = convert("charxiv_reasoning", charxiv)
    assert [q.id for q in qs] == ["charxiv_reasoning:0", "charxiv_reasoning:2", "charxiv_reasoning:5",
                                  "charxiv_reasoning:7"]
    q0, q2, q5, q7 = qs
    assert q0.text == ("Which model declines most?\nAnswer with text that is written in the chart and relevant to the "
                       "question; separate several terms with commas, and give subplots and labels by their full "
                       "names unless the question asks for something else (such as a letter).")
    assert q0.answer == "Joint-CNN" and q0.images == (png(),)
    assert q0.metadata["task"] == "text-in-chart" and q0.metadata["rubric"] == REASONING_RUBRICS[1]
    assert q2.metadata["task"] == "number-in-chart" and q2.metadata["rubric"] == REASONING_RUBRICS[3]
    # category 4 states the reference's precision, as the official prompt does
    assert q5.text == "How much higher is A than B?\nGive a number with 2 decimal places."
    assert q5.metadata["task"] == "number-in-general" and q5.metadata["rubric"] == REASONING_RUBRICS[4]
    # the category is reasoning_a_type (the official inst_category), not reasoning_q_source
    assert q7.metadata["task"] == "text-in-general" and q7.metadata["rubric"] == REASONING_RUBRICS[2]
    assert "options" not in q0.metadata and "answers" not in q0.metadata and "rule" not in q0.metadata
    assert q0.metadata["benchmark"] == "charxiv_reasoning" and q0.source == "charxiv_reasoning"


def test_charxiv_reasoning_integer_reference_asks_for_an_exact_integer(tmp_path):
    path = write(tmp_path / "val.parquet", [charxiv_row(3, [1], ["t"], "How many bars?", "12", 4)], CHARXIV)
    assert convert("charxiv_reasoning", path)[0].text == "How many bars?\nGive an exact integer."


def test_charxiv_descriptive_generates_questions_with_the_subplot_prefix_rule_and_group_rubrics(charxiv):
    qs = convert("charxiv_descriptive", charxiv)
    assert [q.id for q in qs] == ["charxiv_descriptive:0_0", "charxiv_descriptive:0_1", "charxiv_descriptive:0_2",
                                  "charxiv_descriptive:0_3", "charxiv_descriptive:2_0", "charxiv_descriptive:2_1",
                                  "charxiv_descriptive:5_0", "charxiv_descriptive:7_0"]
    by = {q.id.split(":")[1]: q for q in qs}
    # grid position for a subplot, "current plot" for row 0, the release's words where there is no grid
    assert by["0_0"].text == "For the subplot at row 1 and column 2, " + DESCRIPTIVE_TEMPLATES[1]
    assert by["2_0"].text == "For the current plot, " + DESCRIPTIVE_TEMPLATES[7]
    assert by["5_0"].text == "For the bottom subplot, " + DESCRIPTIVE_TEMPLATES[16]
    # layout and subplot count take no prefix
    assert by["0_2"].text == DESCRIPTIVE_TEMPLATES[18] and by["2_1"].text == DESCRIPTIVE_TEMPLATES[19]
    assert [q.answer for q in qs] == ["Loss curves", "A, B", "2 by 3", "Yes", "0.12", "1", "Increases", "Time"]
    assert [q.metadata["task"] for q in qs] == ["title", "enum", "layout", "bool", "ocr", "quant", "trend", "ocr"]
    assert all(q.metadata["rubric"] == DESCRIPTIVE_RUBRICS[q.metadata["task"]] for q in qs)
    assert by["0_1"].metadata["template"] == 13 and by["0_0"].images == (png(),)


def test_charxiv_descriptive_templates_and_rubrics_cover_all_19_ids_and_7_groups():
    from megatron_zppo.evaluation.benchmarks.vlm_docs import DESCRIPTIVE_GROUPS

    assert sorted(DESCRIPTIVE_TEMPLATES) == list(range(1, 20)) == sorted(DESCRIPTIVE_GROUPS)
    assert set(DESCRIPTIVE_GROUPS.values()) == set(DESCRIPTIVE_RUBRICS) == {
        "title", "ocr", "quant", "bool", "enum", "trend", "layout"}
    assert set(REASONING_RUBRICS) == {1, 2, 3, 4}


def test_charxiv_unknown_answer_type_or_template_names_file_and_column(tmp_path):
    path = write(tmp_path / "val.parquet", [charxiv_row(1, [20], ["x"], "q", "a", 5)], CHARXIV)
    with pytest.raises(LayoutError, match=r"val\.parquet.*'reasoning_a_type'.*5"):
        convert("charxiv_reasoning", path)
    with pytest.raises(LayoutError, match=r"val\.parquet.*'descriptive_q1'.*20"):
        convert("charxiv_descriptive", path)


def test_charxiv_missing_column_names_file_and_column(tmp_path):
    path = write(tmp_path / "val.parquet", [charxiv_row(1, [1], ["x"], "q", "a", 1)],
                 pa.schema([f for f in CHARXIV if f.name != "reasoning_a"]))
    with pytest.raises(LayoutError, match=r"val\.parquet.*'reasoning_a' is missing.*princeton-nlp/CharXiv"):
        convert("charxiv_reasoning", path)


# ---------------------------------------------------------------- MM-Vet

MMVET = pa.schema([("question_id", pa.string()), ("image", IMAGE), ("question", pa.string()), ("answer", pa.string()),
                   ("image_source", pa.string()), ("capability", pa.string())])


def mmvet_row(qid, question, answer, capability):
    return {"question_id": qid, "image": {"bytes": png((0, 90, 0)), "path": None}, "question": question,
            "answer": answer, "image_source": "web", "capability": capability}


def test_mmvet_keeps_and_or_golds_and_the_capability_as_task(tmp_path):
    path = write(tmp_path / "data" / "test-00000-of-00001.parquet",
                 [mmvet_row("v1_0", "What is x in the equation?", "-1<AND>-5", "ocr,math"),
                  mmvet_row("v1_1", "Which city is this? ", "Paris <OR> paris, France", "rec,know"),
                  mmvet_row("v1_2", "Can you explain this meme?", "It jokes about names.", "rec,ocr,know,gen")],
                 MMVET)
    qs = convert("mmvet", tmp_path)
    assert [q.id for q in qs] == ["mmvet:v1_0", "mmvet:v1_1", "mmvet:v1_2"]
    assert [q.text for q in qs] == ["What is x in the equation?", "Which city is this?", "Can you explain this meme?"]
    assert [q.answer for q in qs] == ["-1 <AND> -5", "Paris <OR> paris, France", "It jokes about names."]
    assert [q.metadata["task"] for q in qs] == ["ocr,math", "rec,know", "rec,ocr,know,gen"]
    assert qs[0].metadata["capabilities"] == ["ocr", "math"]
    assert qs[0].images == (png((0, 90, 0)),) and "answers" not in qs[0].metadata  # one gold, <AND>/<OR> inside it


def test_mmvet_bad_capability_value_names_file_and_column(tmp_path):
    rows = [mmvet_row("v1_0", "q", "a", "ocr")]
    rows[0]["capability"] = None
    path = write(tmp_path / "test.parquet", rows, MMVET)
    with pytest.raises(LayoutError, match=r"test\.parquet.*'capability'.*expected str"):
        convert("mmvet", path)


# ---------------------------------------------------------------- InfographicVQA

INFOVQA = pa.schema([("questionId", pa.string()), ("question", pa.string()), ("answers", pa.list_(pa.string())),
                     ("answer_type", pa.list_(pa.string())), ("image", IMAGE), ("image_url", pa.string()),
                     ("operation/reasoning", pa.list_(pa.string())), ("ocr", pa.string()), ("data_split", pa.string())])


def infovqa_row(qid, question, answers):
    return {"questionId": qid, "question": question, "answers": answers, "answer_type": ["single span"],
            "image": {"bytes": png((0, 0, 200)), "path": "x.jpeg"}, "image_url": "https://example.org/x.jpeg",
            "operation/reasoning": [], "ocr": "{}", "data_split": "val"}


def test_infovqa_keeps_every_accepted_answer_and_reads_only_its_config_validation_files(tmp_path):
    root = tmp_path / "DocVQA"
    write(root / "InfographicVQA" / "validation-00000-of-00001.parquet",
          [infovqa_row("98765", "What percentage of people walk?", ["25%", "25"]),
           infovqa_row("98766", "Which country ranks first?", ["Japan"])], INFOVQA)
    write(root / "InfographicVQA" / "test-00000-of-00001.parquet", [infovqa_row("1", "q", ["a"])], INFOVQA)
    write(root / "DocVQA" / "validation-00000-of-00001.parquet", [infovqa_row("2", "q", ["a"])], INFOVQA)
    qs = convert("infovqa", root)
    assert [q.id for q in qs] == ["infovqa:98765", "infovqa:98766"]
    assert [q.text for q in qs] == ["What percentage of people walk?", "Which country ranks first?"]
    assert [q.answer for q in qs] == ["25%", "Japan"]
    assert [q.metadata["answers"] for q in qs] == [["25%", "25"], ["Japan"]]
    assert qs[0].images == (png((0, 0, 200)),)


def test_infovqa_answers_not_a_list_names_file_and_column(tmp_path):
    schema = pa.schema([f if f.name != "answers" else pa.field("answers", pa.string()) for f in INFOVQA])
    row = infovqa_row("1", "q", None)
    row["answers"] = "25%"
    path = write(tmp_path / "validation-00000-of-00001.parquet", [row], schema)
    with pytest.raises(LayoutError, match=r"validation-00000-of-00001\.parquet.*'answers'.*expected list"):
        convert("infovqa", path)


# ---------------------------------------------------------------- OCRBench v2

OCRBENCH = pa.schema([("id", pa.int32()), ("dataset_name", pa.string()), ("question", pa.string()),
                      ("type", pa.string()), ("answers", pa.list_(pa.string())), ("image", IMAGE),
                      ("eval", pa.string()), ("bbox", pa.list_(pa.int32())),
                      ("bbox_list", pa.list_(pa.list_(pa.int32()))), ("content", pa.list_(pa.string()))])


def ocrbench_row(i, kind, question, answers, how="None", bbox=None, bbox_list=None, content=None):
    return {"id": i, "dataset_name": "src", "question": question, "type": kind, "answers": answers,
            "image": {"bytes": png((90, 90, 90)), "path": ""}, "eval": how, "bbox": bbox, "bbox_list": bbox_list,
            "content": content}


@pytest.fixture
def ocrbench(tmp_path):
    kie = json.dumps({"name": "Bob", "total": ["12.50", "12.5"]})
    rows = [ocrbench_row(0, "text recognition en", "What is written in the image?", ["STOP"], "case sensitive"),
            ocrbench_row(1, "VQA with position en", "Where is the price? Answer in JSON.", ["$5"], bbox=[1, 2, 30, 40]),
            ocrbench_row(2, "key information extraction cn", "提取信息", [kie]),
            ocrbench_row(3, "text spotting en", "Spot all text.", ["x"], bbox_list=[[0, 0, 10, 0, 10, 5, 0, 5]],
                         content=["OPEN"]),
            ocrbench_row(4, "cognition VQA cn", "这是什么？", ["猫"], "multiple choice")]
    return write(tmp_path / "data" / "test-00000-of-00001.parquet", rows, OCRBENCH)


def test_ocrbench_v2_en_takes_the_en_types_with_their_metric_metadata(ocrbench):
    qs = convert("ocrbench_v2_en", ocrbench.parent)
    assert [q.id for q in qs] == ["ocrbench_v2_en:0", "ocrbench_v2_en:1", "ocrbench_v2_en:3"]
    assert [q.text for q in qs] == ["What is written in the image?", "Where is the price? Answer in JSON.",
                                    "Spot all text."]
    assert [q.answer for q in qs] == ["STOP", "$5", "x"]
    assert [q.metadata["answers"] for q in qs] == [["STOP"], ["$5"], ["x"]]
    assert [q.metadata["task"] for q in qs] == ["text recognition en", "VQA with position en", "text spotting en"]
    assert [q.metadata["eval"] for q in qs] == ["case sensitive", "", ""]  # the release's "None" means none
    assert qs[1].metadata["bbox"] == [1, 2, 30, 40] and qs[0].metadata["bbox"] is None
    assert qs[2].metadata["bbox_list"] == [[0, 0, 10, 0, 10, 5, 0, 5]] and qs[2].metadata["content"] == ["OPEN"]
    assert qs[0].images == (png((90, 90, 90)),) and qs[0].metadata["dataset_name"] == "src"


def test_ocrbench_v2_zh_takes_the_cn_types(ocrbench):
    qs = convert("ocrbench_v2_zh", ocrbench)
    assert [q.id for q in qs] == ["ocrbench_v2_zh:2", "ocrbench_v2_zh:4"]
    assert [q.metadata["task"] for q in qs] == ["key information extraction cn", "cognition VQA cn"]
    assert json.loads(qs[0].answer) == {"name": "Bob", "total": ["12.50", "12.5"]}
    assert qs[1].text == "这是什么？" and qs[1].metadata["eval"] == "multiple choice"


def test_ocrbench_v2_type_without_language_suffix_names_file_and_column(tmp_path):
    path = write(tmp_path / "test.parquet", [ocrbench_row(0, "text recognition", "q", ["a"])], OCRBENCH)
    with pytest.raises(LayoutError, match=r"test\.parquet.*'type'.*'text recognition'"):
        convert("ocrbench_v2_en", path)


def test_ocrbench_v2_missing_column_names_file_and_column(tmp_path):
    path = write(tmp_path / "test.parquet", [ocrbench_row(0, "math QA en", "q", ["a"])],
                 pa.schema([f for f in OCRBENCH if f.name != "eval"]))
    with pytest.raises(LayoutError, match=r"test\.parquet.*'eval' is missing"):
        convert("ocrbench_v2_en", path)


def test_the_six_converters_are_registered_with_their_layouts():
    for name in ("charxiv_reasoning", "charxiv_descriptive", "mmvet", "infovqa", "ocrbench_v2_en", "ocrbench_v2_zh"):
        assert name in CONVERTERS and CONVERTERS[name].layout
