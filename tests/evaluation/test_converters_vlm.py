"""The vision-language converters (benchmarks/vlm.py, vlm_math.py) read fixtures written in each
release's published layout (parquet with HF Image structs holding real PNGs) into the questions the
suite asks, field by field; a release in another layout is refused, naming the file and the column."""

import io
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from megatron_zppo.evaluation.benchmarks.layout import LayoutError
from megatron_zppo.evaluation.benchmarks.registry import CONVERTERS, convert
from megatron_zppo.evaluation.benchmarks.vlm import CHOICES_IN_IMAGE, MMMU_PRO_VISION_PROMPT
from megatron_zppo.evaluation.benchmarks.vlm_math import QUESTION_IN_IMAGE

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "gray": (90, 90, 90)}


def png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), COLORS[color]).save(buf, format="PNG")
    return buf.getvalue()


def img(color: str) -> dict:
    """An HF Image cell: {bytes, path}."""
    return {"bytes": png(color), "path": f"{color}.png"}


def write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------- one row-builder per benchmark


def ai2d_row(question="Which stage follows the egg?", options=("larva", "pupa", "adult"), answer="0", color="red"):
    return {"question": question, "options": list(options), "answer": answer, "image": img(color)}


def embspatial_row(qid=7, answer=2, relation="left"):
    return {"question_id": qid, "question": "<image>\nWhere is the lamp relative to the bed?",
            "answer_options": ["above", "below", "left", "right"], "answer": answer, "image": img("green"),
            "relation": relation, "data_source": "mp3d"}


def visualpuzzles_row(qid, options, answer, category="Spatial"):
    return {"id": qid, "question": "Which piece completes the pattern?", "options": options, "answer": answer,
            "image": img("blue"), "category": category, "difficulty": "Easy"}


def wemath_row(ident, key, option="A. 200.96;B. 3215.36;C. 6280;D. 32; E. No correct answer", answer="B"):
    return {"ID": ident, "split": "testmini", "knowledge concept": "Area of a circle", "question": "Find the area.",
            "option": option, "answer": answer, "key": key, "question number": 1,
            "knowledge concept description": "-", "image_path": img("gray")}


def mmmu_standard_row(qid, question, options, answer, images):
    row = {"id": qid, "question": question, "options": repr(list(options)), "explanation": "", "answer": answer,
           "img_type": "['Diagrams']", "topic_difficulty": "Easy", "subject": "Physics"}
    row.update({f"image_{k}": images.get(k) for k in range(1, 8)})
    return row


def mmmu_vision_row(qid="test_Art_1", answer="B"):
    return {"id": qid, "image": img("gray"), "options": "['Monet', 'Manet', \"O'Keeffe\"]", "answer": answer,
            "subject": "Art"}


def mathverse_row(index, version, question, answer, kind, image=True):
    return {"sample_index": str(index), "problem_index": "9", "problem_version": version, "question": question,
            "image": img("red") if image else {"bytes": None, "path": None}, "answer": answer, "question_type": kind,
            "metadata": {"split": "testmini", "source": "fixture", "subject": "Plane Geometry", "subfield": "Length"},
            "query_wo": "Please directly answer the question.\nQuestion: " + question,
            "query_cot": "Please first conduct reasoning.\nQuestion: " + question, "question_for_eval": question}


def mathvision_row(qid, question, options, answer, subject="counting"):
    return {"id": qid, "question": question, "options": list(options), "image": f"images/{qid}.jpg",
            "decoded_image": img("blue"), "answer": answer, "solution": "", "level": 2, "subject": subject}


def mathvista_row(pid, question, choices, answer, qtype, atype, precision=None, unit=None):
    return {"pid": pid, "question": question, "image": f"images/{pid}.jpg", "decoded_image": img("green"),
            "choices": choices, "unit": unit, "precision": precision, "answer": answer, "question_type": qtype,
            "answer_type": atype, "query": "Hint: Please answer the question and provide the final answer at the end.",
            "metadata": {"category": "math-targeted-vqa", "task": "figure question answering", "skills": ["algebra"]}}


def dynamath_row(seed, question, truth, atype):
    return {"id": seed, "question": question, "image": f"image/image{seed}.png", "decoded_image": img("red"),
            "ground_truth": truth, "answer_type": atype, "subject": "statistics", "knowledge_level": "high school"}


def babyvision_row(task_id, kind, options=None, choice=None, blank=None):
    return {"taskId": task_id, "question": "Which shadow matches the toy?", "image": img("gray"),
            "type": "Fine-grained Discrimination", "subtype": "Find the shadow", "ansType": kind, "options": options,
            "choiceAns": choice, "blankAns": blank}


def blind_row(task, prompt, truth):
    return {"task": task, "image": img("blue"), "prompt": prompt, "groundtruth": truth, "metadata": "{}"}


# ---------------------------------------------------------------- each benchmark, field by field


def test_ai2d_letters_the_options_and_makes_the_index_answer_a_letter(tmp_path):
    write(tmp_path / "data" / "test-00000-of-00001.parquet",
          [ai2d_row(), ai2d_row("What eats the grass?", ("cow", "owl"), "1", "green")])
    first, second = convert("ai2d", tmp_path)
    assert first.id == "ai2d:0" and second.id == "ai2d:1"
    assert first.text == "Which stage follows the egg?\n\nA. larva\nB. pupa\nC. adult"
    assert (first.answer, second.answer) == ("A", "B")
    assert first.metadata["options"] == ["larva", "pupa", "adult"] and first.metadata["rule"] == "choice"
    assert first.images == (png("red"),) and second.images == (png("green"),)


def test_embspatial_drops_the_image_placeholder_and_keeps_the_relation_as_task(tmp_path):
    write(tmp_path / "test.parquet", [embspatial_row(), embspatial_row(8, 0, "above")])
    q, r = convert("embspatial", tmp_path)
    assert q.id == "embspatial:7" and r.id == "embspatial:8"
    assert q.text == "Where is the lamp relative to the bed?\n\nA. above\nB. below\nC. left\nD. right"
    assert (q.answer, r.answer) == ("C", "A")
    assert q.metadata["task"] == "left" and q.metadata["data_source"] == "mp3d" and q.metadata["rule"] == "choice"
    assert q.images == (png("green"),)


def test_visualpuzzles_says_the_choices_are_in_the_image_when_the_options_are_null(tmp_path):
    write(tmp_path / "data.parquet", [visualpuzzles_row("vp-1", ["one", "two", "three", "four"], "B"),
                                      visualpuzzles_row("vp-2", None, "D", "Inductive")])
    listed, drawn = convert("visualpuzzles", tmp_path)
    assert listed.text == "Which piece completes the pattern?\n\nA. one\nB. two\nC. three\nD. four"
    assert listed.answer == "B" and listed.metadata["options"] == ["one", "two", "three", "four"]
    assert drawn.text == f"Which piece completes the pattern?\n\n{CHOICES_IN_IMAGE}"
    assert drawn.answer == "D" and "options" not in drawn.metadata and drawn.metadata["rule"] == "choice"
    assert (listed.metadata["task"], drawn.metadata["task"]) == ("Spatial", "Inductive")
    assert drawn.id == "visualpuzzles:vp-2" and drawn.images == (png("blue"),)


def test_wemath_splits_the_option_string_and_keeps_id_and_key_for_the_four_dimensional_metric(tmp_path):
    write(tmp_path / "data" / "testmini-00000-of-00001-adbfe22dcd3558e6.parquet",
          [wemath_row("2steps_7", "2steps_1"), wemath_row("2steps_7", "2steps_multi", "A. 3; 4;B. 5", "A")])
    (tmp_path / "testmini.json").write_text('[{"not": "read"}]')  # the JSON release beside it is not this layout
    one, multi = convert("wemath", tmp_path)
    assert one.id == "wemath:2steps_7:2steps_1" and multi.id == "wemath:2steps_7:2steps_multi"
    assert one.metadata["options"] == ["200.96", "3215.36", "6280", "32", "No correct answer"]
    assert one.text == "Find the area.\n\nA. 200.96\nB. 3215.36\nC. 6280\nD. 32\nE. No correct answer"
    assert multi.metadata["options"] == ["3; 4", "5"] and (one.answer, multi.answer) == ("B", "A")
    assert (multi.metadata["ID"], multi.metadata["key"]) == ("2steps_7", "2steps_multi")
    assert one.metadata["knowledge_concept"] == "Area of a circle" and one.images == (png("gray"),)


def test_mmmu_pro_standard_passes_images_in_the_order_of_their_tags_and_marks_them_neutrally(tmp_path):
    tagged = mmmu_standard_row("test_Physics_1", "<image 2> shows a circuit and <image 1> its graph. Which law?",
                               ["Ohm", "Faraday", "<image 3>", "Lenz"], "C",
                               {1: img("red"), 2: img("green"), 3: img("blue")})
    untagged = mmmu_standard_row("test_Physics_2", "<image 1> What is shown?", ["a", "b", "c", "d"], "A",
                                 {1: img("red"), 2: img("gray")})
    write(tmp_path / "standard (4 options)" / "test-00000-of-00001.parquet", [tagged, untagged])
    write(tmp_path / "vision" / "test-00000-of-00001.parquet", [mmmu_vision_row()])  # another config: not read
    q, r = convert("mmmu_pro_standard4", tmp_path)
    assert q.id == "mmmu_pro_standard4:test_Physics_1"
    assert q.text == ("[image 1] shows a circuit and [image 2] its graph. Which law?\n\n"
                      "A. Ohm\nB. Faraday\nC. [image 3]\nD. Lenz")
    assert q.images == (png("green"), png("red"), png("blue"))
    assert q.metadata["options"] == ["Ohm", "Faraday", "[image 3]", "Lenz"] and q.answer == "C"
    assert q.metadata["rule"] == "choice" and q.metadata["task"] == "Physics"
    assert r.text == "[image 1] What is shown?\n\nA. a\nB. b\nC. c\nD. d" and r.images == (png("red"), png("gray"))


def test_mmmu_pro_standard10_reads_its_own_folder_and_a_tenth_letter(tmp_path):
    options = [str(v) for v in range(10)]
    write(tmp_path / "standard (10 options)" / "test-00000-of-00001.parquet",
          [mmmu_standard_row("validation_Math_3", "Pick nine. <image 1>", options, "J", {1: img("blue")})])
    write(tmp_path / "standard (4 options)" / "test-00000-of-00001.parquet",
          [mmmu_standard_row("other", "x <image 1>", ["a", "b"], "A", {1: img("red")})])
    (q,) = convert("mmmu_pro_standard10", tmp_path)
    assert q.id == "mmmu_pro_standard10:validation_Math_3" and q.answer == "J"
    assert q.text == "Pick nine. [image 1]\n\n" + "\n".join(f"{'ABCDEFGHIJ'[i]}. {i}" for i in range(10))
    assert q.metadata["options"] == options and q.images == (png("blue"),)


def test_mmmu_pro_vision_gives_the_screenshot_and_an_instruction_without_the_options(tmp_path):
    write(tmp_path / "vision" / "test-00000-of-00001.parquet", [mmmu_vision_row()])
    (q,) = convert("mmmu_pro_vision", tmp_path)
    assert q.id == "mmmu_pro_vision:test_Art_1" and q.text == MMMU_PRO_VISION_PROMPT
    assert q.text == "Answer the multiple-choice question shown in the image."
    assert q.answer == "B" and q.metadata["options"] == ["Monet", "Manet", "O'Keeffe"]
    assert q.images == (png("gray"),) and q.metadata["rule"] == "choice" and q.metadata["task"] == "Art"


def test_mathverse_sets_the_rule_per_item_and_reads_the_options_inside_the_question(tmp_path):
    directive = ("Which length is AB?\nChoices:\nA:5 cm\nB:5 m\nPlease directly answer the question and provide "
                 "the correct option letter, e.g., A, B, C, D.")
    write(tmp_path / "testmini.parquet", [mathverse_row(1, "Text Dominant", directive, "A", "multi-choice"),
                                          mathverse_row(2, "Text Lite", "Find L.", "14", "free-form"),
                                          mathverse_row(3, "Vision Only", "", "B", "multi-choice")])
    write(tmp_path / "testmini_text_only.parquet",  # another config beside it: not read
          [mathverse_row(1, "Text Only", "Find L.", "14", "free-form", image=False)])
    mc, free, vision = convert("mathverse", tmp_path)
    assert mc.id == "mathverse:1" and mc.text == "Which length is AB?\nChoices:\nA:5 cm\nB:5 m"
    assert (mc.answer, mc.metadata["rule"], mc.metadata["options"]) == ("A", "choice", ["5 cm", "5 m"])
    assert (free.text, free.answer, free.metadata["rule"]) == ("Find L.", "14", "math")
    assert "options" not in free.metadata
    assert vision.text == QUESTION_IN_IMAGE and vision.answer == "B" and "options" not in vision.metadata
    assert [q.metadata["task"] for q in (mc, free, vision)] == ["Text Dominant", "Text Lite", "Vision Only"]
    assert mc.metadata["problem_index"] == "9" and mc.metadata["subject"] == "Plane Geometry"
    assert mc.images == (png("red"),)


def test_mathverse_gives_no_image_for_a_row_without_one(tmp_path):
    write(tmp_path / "testmini.parquet", [mathverse_row(5, "Text Dominant", "What is 2+3?", "5", "free-form",
                                                        image=False)])
    (q,) = convert("mathverse", tmp_path)
    assert q.images == () and q.text == "What is 2+3?"


def test_mathvision_letters_listed_options_and_grades_free_form_by_math(tmp_path):
    write(tmp_path / "data" / "test-00000-of-00001-3532b8d3f1b4047a.parquet",
          [mathvision_row("1", "<image1>\nHow many dots are there?", ["1", "2", "3", "4", "5"], "C"),
           mathvision_row("2", "What is the perimeter? <image1>", [], "14", "metric geometry - length")])
    write(tmp_path / "data" / "testmini-00000-of-00001-f8ff70fcb2f29b1d.parquet",
          [mathvision_row("1", "duplicate of the test split", [], "0")])  # the other split: not read
    mc, free = convert("mathvision", tmp_path)
    assert mc.id == "mathvision:1" and mc.text == "How many dots are there?\n\nA. 1\nB. 2\nC. 3\nD. 4\nE. 5"
    assert (mc.answer, mc.metadata["rule"], mc.metadata["options"]) == ("C", "choice", ["1", "2", "3", "4", "5"])
    assert (free.text, free.answer, free.metadata["rule"]) == ("What is the perimeter?", "14", "math")
    assert free.metadata["task"] == "metric geometry - length" and free.metadata["level"] == 2
    assert "options" not in free.metadata and free.images == (png("blue"),)


def test_mathvista_turns_the_choice_text_into_a_letter_and_sets_number_rules_with_precision(tmp_path):
    rows = [mathvista_row("1", "The period of the red curve is ____ that of the blue curve.",
                          ["larger than", "equal to", "smaller than"], "equal to", "multi_choice", "text"),
            mathvista_row("2", "What is the length of AB?", None, "1.5", "free_form", "float", 1.0, "cm"),
            mathvista_row("3", "How many bars are there?", None, "3", "free_form", "integer"),
            mathvista_row("4", "Which city is the largest?", None, "Paris", "free_form", "text")]
    write(tmp_path / "data" / "testmini-00000-of-00001-725687bf7a18d64b.parquet", rows)
    mc, flt, integer, text = convert("mathvista", tmp_path)
    assert mc.id == "mathvista:1" and mc.answer == "B" and mc.metadata["rule"] == "choice"
    assert mc.text == ("The period of the red curve is ____ that of the blue curve.\n\n"
                       "A. larger than\nB. equal to\nC. smaller than")
    assert mc.metadata["options"] == ["larger than", "equal to", "smaller than"] and "Hint" not in mc.text
    assert (flt.text, flt.answer, flt.metadata["rule"], flt.metadata["precision"]) == (
        "What is the length of AB?", "1.5", "number", 1)
    assert flt.metadata["unit"] == "cm" and "cm" not in flt.text
    assert integer.metadata["rule"] == "number" and "precision" not in integer.metadata and integer.answer == "3"
    assert (text.metadata["rule"], text.answer) == ("exact", "Paris")
    assert mc.metadata["task"] == "figure question answering" and mc.images == (png("green"),)


def test_dynamath_takes_the_variant_from_the_file_name_into_the_id(tmp_path):
    mc = "Is Dark Magenta greater than Rosy Brown? Choices: (A) yes (B) no"
    for k, period in ((1, "2.0944"), (2, "6.2832")):
        write(tmp_path / "data" / f"sample{k}-00000-of-00001.parquet",
              [dynamath_row("5", mc, "B", "multiple choice"),
               dynamath_row("1", "What is the period of this function? Answer the question with a floating-point "
                            "number.", period, "float"),
               dynamath_row("21", "What time is shown? Please answer in the form like __:__.", "5:0", "free form")])
    questions = {q.id: q for q in convert("dynamath", tmp_path)}
    assert sorted(questions) == sorted(f"dynamath:{s}:v{k}" for s in ("5", "1", "21") for k in (1, 2))
    choice, number, free = questions["dynamath:5:v2"], questions["dynamath:1:v2"], questions["dynamath:21:v1"]
    assert choice.text == mc and choice.answer == "B" and choice.metadata["options"] == ["yes", "no"]
    assert (choice.metadata["rule"], choice.metadata["seed"], choice.metadata["variant"]) == ("choice", "5", 2)
    assert (number.answer, number.metadata["rule"], number.metadata["precision"]) == ("6.2832", "number", 3)
    assert (free.answer, free.metadata["rule"], free.metadata["variant"]) == ("5:0", "exact", 1)
    assert choice.metadata["task"] == "statistics" and choice.images == (png("red"),)


def test_babyvision_letters_choice_items_and_grades_blanks_exactly(tmp_path):
    write(tmp_path / "data" / "train-00000-of-00001.parquet",
          [babyvision_row(11, "choice", ["(1)", "(2)", "(3)"], 2), babyvision_row(12, "blank", blank="(4,7)")])
    choice, blank = convert("babyvision", tmp_path)
    assert choice.id == "babyvision:11" and choice.text == "Which shadow matches the toy?\n\nA. (1)\nB. (2)\nC. (3)"
    assert (choice.answer, choice.metadata["rule"]) == ("C", "choice")
    assert choice.metadata["options"] == ["(1)", "(2)", "(3)"]
    assert (blank.text, blank.answer, blank.metadata["rule"]) == ("Which shadow matches the toy?", "(4,7)", "exact")
    assert blank.metadata["task"] == "Fine-grained Discrimination" and blank.metadata["subtype"] == "Find the shadow"
    assert "options" not in blank.metadata and blank.images == (png("gray"),)


def test_vlms_are_blind_removes_the_answer_format_instruction_of_each_prompt(tmp_path):
    rows = [blind_row("Subway Connections", "How many single-colored paths go from A to C? Answer with a number in "
                      "curly brackets, e.g., {3}.", "2"),
            blind_row("Counting Grid - Blank Grids", "Count the number of rows and columns and answer with numbers in "
                      "curly brackets. For example, rows={5} columns={6}", "5,6"),
            blind_row("Touching Circles", "Are the two circles touching each other? Answer with Yes/No.", "Yes"),
            blind_row("Nested Squares", "Count total number of squares in the image. Answer with only the number in "
                      "numerical format in curly brackets e.g. {3}.", "{4}"),
            blind_row("Olympic Counting - Circles", "How many circles are in the image? Answer with only the number "
                      "in numerical format.", "6"),
            blind_row("Line Plot Intersections", "Count the intersection points where the blue and red lines meet. "
                      "Put your answer in curly brackets, e.g., {2}.", "1")]
    write(tmp_path / "data" / "valid-00000-of-00001.parquet", rows)
    qs = convert("vlms_are_blind", tmp_path)
    assert [q.text for q in qs] == ["How many single-colored paths go from A to C?",
                                    "Count the number of rows and columns.",
                                    "Are the two circles touching each other?",
                                    "Count total number of squares in the image.",
                                    "How many circles are in the image?",
                                    "Count the intersection points where the blue and red lines meet."]
    assert [q.answer for q in qs] == ["2", "5,6", "Yes", "4", "6", "1"]
    assert [q.id for q in qs] == [f"vlms_are_blind:{i}" for i in range(6)]
    assert qs[1].metadata["task"] == "Counting Grid - Blank Grids" and qs[0].metadata["rule"] == "exact"
    assert qs[0].images == (png("blue"),)


# ---------------------------------------------------------------- layouts refused


VALID = {  # name -> (file under the folder, one valid row)
    "ai2d": ("data/test-0.parquet", ai2d_row()),
    "embspatial": ("data/test-0.parquet", embspatial_row()),
    "visualpuzzles": ("data.parquet", visualpuzzles_row("1", None, "A")),
    "wemath": ("data/testmini-0.parquet", wemath_row("1", "1")),
    "mmmu_pro_standard4": ("standard (4 options)/test-0.parquet",
                           mmmu_standard_row("a", "q <image 1>", ["x", "y"], "A", {1: img("red")})),
    "mmmu_pro_standard10": ("standard (10 options)/test-0.parquet",
                            mmmu_standard_row("a", "q <image 1>", ["x", "y"], "A", {1: img("red")})),
    "mmmu_pro_vision": ("vision/test-0.parquet", mmmu_vision_row()),
    "mathverse": ("testmini.parquet", mathverse_row(1, "Text Lite", "Find L.", "14", "free-form")),
    "mathvision": ("data/test-0.parquet", mathvision_row("1", "q", [], "3")),
    "mathvista": ("data/testmini-0.parquet", mathvista_row("1", "q", None, "3", "free_form", "integer")),
    "dynamath": ("data/sample3-0.parquet", dynamath_row("1", "q", "3.0", "float")),
    "babyvision": ("data/train-0.parquet", babyvision_row(1, "blank", blank="3")),
    "vlms_are_blind": ("data/valid-0.parquet", blind_row("Nested Squares", "How many squares?", "3")),
}
MISSING = {"ai2d": "options", "embspatial": "answer_options", "visualpuzzles": "category", "wemath": "option",
           "mmmu_pro_standard4": "options", "mmmu_pro_standard10": "question", "mmmu_pro_vision": "image",
           "mathverse": "problem_version", "mathvision": "decoded_image", "mathvista": "question_type",
           "dynamath": "ground_truth", "babyvision": "ansType", "vlms_are_blind": "groundtruth"}


def test_every_vlm_converter_is_registered_with_the_release_it_follows():
    repos = {"ai2d": "lmms-lab/ai2d", "embspatial": "FlagEval/EmbSpatial-Bench",
             "visualpuzzles": "neulab/VisualPuzzles", "wemath": "We-Math/We-Math",
             "mmmu_pro_standard4": "MMMU/MMMU_Pro", "mmmu_pro_standard10": "MMMU/MMMU_Pro",
             "mmmu_pro_vision": "MMMU/MMMU_Pro", "mathverse": "CaraJ/MathVerse-lmmseval",
             "mathvision": "MathLLMs/MathVision", "mathvista": "AI4Math/MathVista",
             "dynamath": "DynaMath/DynaMath_Sample", "babyvision": "UnipatAI/BabyVision",
             "vlms_are_blind": "XAI/vlmsareblind"}
    assert set(repos) == set(VALID) == set(MISSING)
    for name, repo in repos.items():
        assert repo in CONVERTERS[name].layout and "revision" in CONVERTERS[name].layout


@pytest.mark.parametrize("name", sorted(VALID))
def test_a_missing_column_is_refused_naming_the_file_and_the_column(tmp_path, name):
    relative, row = VALID[name]
    assert convert(name, write(tmp_path / "ok" / relative, [row]))  # the row as built is read
    column = MISSING[name]
    bad = write(tmp_path / "bad" / relative, [{k: v for k, v in row.items() if k != column}])
    with pytest.raises(LayoutError, match=f"{re.escape(str(bad))}.*'{column}' is missing"):
        convert(name, tmp_path / "bad")


@pytest.mark.parametrize("name, column, value", [
    ("ai2d", "answer", "3"),  # an index past the three options
    ("embspatial", "answer", "left"),
    ("visualpuzzles", "answer", "E"),
    ("wemath", "option", "200.96, 3215.36"),  # no lettered options
    ("mmmu_pro_standard4", "options", "Ohm or Faraday"),  # not a Python-literal list
    ("mmmu_pro_vision", "answer", "Z"),
    ("mathverse", "question_type", "multiple"),
    ("mathvista", "answer_type", "fraction"),
    ("dynamath", "answer_type", "integer"),
    ("babyvision", "ansType", "open"),
])
def test_a_bad_value_is_refused_naming_the_file_and_the_column(tmp_path, name, column, value):
    relative, row = VALID[name]
    bad = write(tmp_path / relative, [{**row, column: value}])
    with pytest.raises(LayoutError, match=f"{re.escape(str(bad))}.*column '{column}'"):
        convert(name, tmp_path)


def test_mathvista_refuses_a_choice_answer_that_is_none_of_the_choices(tmp_path):
    bad = write(tmp_path / "testmini-0.parquet", [mathvista_row("1", "q", ["a", "b"], "c", "multi_choice", "text")])
    with pytest.raises(LayoutError, match=f"{re.escape(str(bad))}.*column 'answer'.*none of the choices"):
        convert("mathvista", tmp_path)


def test_mmmu_pro_refuses_a_tag_naming_an_image_the_row_lacks(tmp_path):
    row = mmmu_standard_row("a", "Compare <image 1> and <image 5>.", ["x", "y"], "A", {1: img("red")})
    bad = write(tmp_path / "standard (4 options)" / "test-0.parquet", [row])
    with pytest.raises(LayoutError, match=f"{re.escape(str(bad))}.*column 'image_5'"):
        convert("mmmu_pro_standard4", tmp_path)


def test_dynamath_refuses_a_file_whose_name_gives_no_variant(tmp_path):
    bad = write(tmp_path / "train-0.parquet", [VALID["dynamath"][1]])
    with pytest.raises(LayoutError, match=f"{re.escape(str(bad))}.*gives no variant"):
        convert("dynamath", bad)


def test_a_repeated_id_is_refused(tmp_path):
    bad = write(tmp_path / "data" / "test-0.parquet", [embspatial_row(7), embspatial_row(7)])
    with pytest.raises(LayoutError, match=f"{re.escape(str(bad))}.*'question_id' repeats the id 'embspatial:7'"):
        convert("embspatial", tmp_path)
