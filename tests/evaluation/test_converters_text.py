"""The 10 language-only converters (benchmarks/text.py) read each benchmark's published layout,
written here in miniature, into questions checked field by field; a wrong layout names the file
and the column."""

from __future__ import annotations

import base64
import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from megatron_zppo.evaluation.benchmarks import text
from megatron_zppo.evaluation.benchmarks.layout import LayoutError
from megatron_zppo.evaluation.benchmarks.registry import CONVERTERS, convert

TEXT_BENCHMARKS = ("aime25", "aime26", "ceval", "gpqa_diamond", "mmlu", "mmlu_pro", "mmlu_redux", "imo_answerbench",
                   "hle", "multichallenge")


# --- writers -------------------------------------------------------------------------------------

def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(path, rows, schema=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_arrow_stream(path, rows):
    """As `datasets.save_to_disk` writes data-00000-of-00001.arrow (the Arrow stream format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return path


# --- one row builder per benchmark (its published columns) --------------------------------------

def aime25_row(question, answer):
    return {"question": question, "answer": answer}


def aime26_row(idx, problem, answer):
    return {"problem_idx": idx, "problem": problem, "answer": answer}


CEVAL_SCHEMA = pa.schema([("id", pa.int32()), ("question", pa.string()), ("A", pa.string()), ("B", pa.string()),
                          ("C", pa.string()), ("D", pa.string()), ("answer", pa.string()),
                          ("explanation", pa.string())])


def ceval_row(i, question, options, answer, explanation=""):
    return {"id": i, "question": question, **dict(zip("ABCD", options)), "answer": answer,
            "explanation": explanation}


def gpqa_row(record, question, correct, wrong, domain="Physics"):
    return {"Pre-Revision Question": question, "Question": question, "Correct Answer": correct,
            "Incorrect Answer 1": wrong[0], "Incorrect Answer 2": wrong[1], "Incorrect Answer 3": wrong[2],
            "Explanation": "because", "Record ID": record, "High-level domain": domain,
            "Subdomain": "Quantum Mechanics", "Writer's Difficulty Estimate": "Hard graduate level"}


def mmlu_row(question, subject, choices, answer):
    return {"question": question, "subject": subject, "choices": choices, "answer": answer}


def mmlu_pro_row(qid, question, options, answer_index, category="math"):
    return {"question_id": qid, "question": question, "options": options, "answer": "ABCDEFGHIJ"[answer_index],
            "answer_index": answer_index, "cot_content": "", "category": category, "src": "ori_mmlu-math"}


def redux_row(question, choices, answer, error_type, correct_answer=None):
    return {"question": question, "choices": choices, "answer": answer, "error_type": error_type,
            "source": "", "correct_answer": correct_answer, "potential_reason": ""}


def imo_row(pid, problem, short, category="Algebra"):
    return {"Problem ID": pid, "Problem": problem, "Short Answer": short, "Category": category,
            "Subcategory": "Operation", "Source": "IMO Shortlist 2021"}


def hle_row(rid, question, answer, answer_type, image="", category="Math"):
    return {"id": rid, "question": question, "image": image, "image_preview": None, "answer": answer,
            "answer_type": answer_type, "author_name": "a", "rationale": "r", "raw_subject": "Mathematics",
            "category": category, "canary": "c"}


# `datasets` stores a Sequence of {role, content} as a struct of lists.
MULTICHALLENGE_SCHEMA = pa.schema([("question_id", pa.string()), ("axis", pa.string()),
                                   ("conversation", pa.struct([("role", pa.list_(pa.string())),
                                                               ("content", pa.list_(pa.string()))])),
                                   ("target_question", pa.string()), ("pass_criteria", pa.string()),
                                   ("num_turns", pa.int32())])


def multichallenge_row(qid, axis, turns, target, criteria="YES"):
    return {"question_id": qid, "axis": axis,
            "conversation": {"role": [r for r, _ in turns], "content": [c for _, c in turns]},
            "target_question": target, "pass_criteria": criteria, "num_turns": len(turns)}


# --- each converter ------------------------------------------------------------------------------

def test_aime25_reads_both_exams_numbers_problems_and_takes_the_integer_of_a_latex_answer(tmp_path):
    write_jsonl(tmp_path / "aime2025-I.jsonl", [
        aime25_row("Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b$.", "70"),
        aime25_row("Find the angle $\\theta$ in degrees. Please reason step by step, and put your final answer "
                   "within \\boxed{}.", "336^\\circ")])
    write_jsonl(tmp_path / "aime2025-II.jsonl", [aime25_row("Find $m+n$.", "468")])
    (tmp_path / "README.md").write_text("card")
    qs = convert("aime25", tmp_path)
    assert [q.id for q in qs] == ["aime25:AIME2025-I-1", "aime25:AIME2025-I-2", "aime25:AIME2025-II-1"]
    assert qs[1].text == "Find the angle $\\theta$ in degrees."  # directive removed, content kept
    assert [q.answer for q in qs] == ["70", "336", "468"]
    assert qs[0].text == "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b$."
    assert all(q.metadata["rule"] == "math" and q.source == "aime25" for q in qs)
    assert [q.metadata["task"] for q in qs] == ["AIME2025-I", "AIME2025-I", "AIME2025-II"]
    assert all(q.images == () and q.history == () and "options" not in q.metadata for q in qs)


def test_aime26_reads_the_parquet_with_integer_answers(tmp_path):
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet",
                  [aime26_row(1, "Let $x$ be ... Find $x$.", 7), aime26_row(16, "Compute $N \\bmod 1000$.", 0)])
    qs = convert("aime26", tmp_path)
    assert [(q.id, q.text, q.answer) for q in qs] == [("aime26:1", "Let $x$ be ... Find $x$.", "7"),
                                                      ("aime26:16", "Compute $N \\bmod 1000$.", "0")]
    assert all(q.metadata["rule"] == "math" for q in qs)


def test_ceval_reads_val_of_each_subject_folder_and_ignores_dev_and_test(tmp_path):
    write_parquet(tmp_path / "computer_network" / "val-00000-of-00001.parquet", [
        ceval_row(0, "使用位填充方法，以01111110为位首flag，数据为011011111111111111110010，求问传送时要添加几个0____",
                  ["1", "2", "3", "4"], "C"),
        ceval_row(1, "下列协议中属于应用层的是____。", ["IP", "TCP", "HTTP", "ARP"], "c")], CEVAL_SCHEMA)
    write_parquet(tmp_path / "accountant" / "val-00000-of-00001.parquet",
                  [ceval_row(0, "会计的基本职能是____。", ["核算与监督", "预测", "决策", "评价"], "A")], CEVAL_SCHEMA)
    write_parquet(tmp_path / "accountant" / "test-00000-of-00001.parquet",
                  [ceval_row(0, "withheld", ["a", "b", "c", "d"], "")], CEVAL_SCHEMA)
    write_parquet(tmp_path / "accountant" / "dev-00000-of-00001.parquet",
                  [ceval_row(0, "shot", ["a", "b", "c", "d"], "B", "解析")], CEVAL_SCHEMA)
    qs = {q.id: q for q in convert("ceval", tmp_path)}
    assert sorted(qs) == ["ceval:accountant-val-0", "ceval:computer_network-val-0", "ceval:computer_network-val-1"]
    q = qs["ceval:computer_network-val-1"]
    assert q.text == "下列协议中属于应用层的是____。\n\nA. IP\nB. TCP\nC. HTTP\nD. ARP"
    assert (q.answer, q.metadata["options"], q.metadata["rule"], q.metadata["task"]) == \
        ("C", ["IP", "TCP", "HTTP", "ARP"], "choice", "computer_network")
    assert qs["ceval:accountant-val-0"].answer == "A" and qs["ceval:accountant-val-0"].metadata["task"] == "accountant"


def test_ceval_reads_the_older_zip_csvs(tmp_path):
    write_csv(tmp_path / "val" / "logic_val.csv", [ceval_row(3, "以下推理正确的是", ["甲", "乙", "丙", "丁"], "D")])
    write_csv(tmp_path / "dev" / "logic_dev.csv", [ceval_row(0, "shot", ["a", "b", "c", "d"], "A", "x")])
    (q,) = convert("ceval", tmp_path)
    assert (q.id, q.text, q.answer, q.metadata["task"]) == \
        ("ceval:logic-val-3", "以下推理正确的是\n\nA. 甲\nB. 乙\nC. 丙\nD. 丁", "D", "logic")


# What the SHA-256 order gives the fixture's records (first record: correct answer "10^-4 eV" at C).
PINNED_GPQA_LETTERS = ["C", "A", "C", "D"]
PINNED_GPQA_FIRST_OPTIONS = ["10^-9 eV", "10^-11 eV", "10^-4 eV", "10^-8 eV"]


def test_gpqa_diamond_shuffle_is_pinned_by_the_record_id_and_the_gold_follows_the_correct_answer(tmp_path):
    rows = [gpqa_row("recZ0wCxFpMXXYHkq", " Two quantum states with energies E1 and E2 ...\n", "10^-4 eV\n",
                     ["10^-11 eV", "10^-8 eV", "10^-9 eV"]),
            gpqa_row("recQwTMi7jCPnbK0u", "Which compound is chiral?", "2-butanol", ["ethanol", "methane", "water"],
                     "Chemistry"),
            gpqa_row("rec2", "q2", "right", ["w1", "w2", "w3"]),
            gpqa_row("rec3", "q3", "right", ["w1", "w2", "w3"])]
    write_csv(tmp_path / "gpqa_diamond.csv", rows)
    write_csv(tmp_path / "gpqa_main.csv", [gpqa_row("recMain", "not diamond", "x", ["y", "z", "w"])])
    qs = convert("gpqa_diamond", tmp_path)
    assert [q.id for q in qs] == ["gpqa_diamond:recZ0wCxFpMXXYHkq", "gpqa_diamond:recQwTMi7jCPnbK0u",
                                  "gpqa_diamond:rec2", "gpqa_diamond:rec3"]
    for q, row in zip(qs, rows):
        opts = q.metadata["options"]
        assert sorted(opts) == sorted(row[c].strip() for c in text.GPQA_COLUMNS[2:])
        assert opts["ABCD".index(q.answer)] == row["Correct Answer"].strip()
        assert q.metadata["rule"] == "choice"
    # Pinned: the same letters on every run and machine (a SHA-256 order, no RNG, no hash()).
    assert [q.answer for q in qs] == PINNED_GPQA_LETTERS
    assert qs[0].metadata["options"] == PINNED_GPQA_FIRST_OPTIONS
    assert qs[0].text == ("Two quantum states with energies E1 and E2 ...\n\n"
                          + "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(PINNED_GPQA_FIRST_OPTIONS)))
    assert (qs[1].metadata["task"], qs[1].metadata["subdomain"]) == ("Chemistry", "Quantum Mechanics")
    assert [q.answer for q in convert("gpqa_diamond", tmp_path / "gpqa_diamond.csv")] == PINNED_GPQA_LETTERS


def test_gpqa_diamond_reads_hf_parquet_of_the_csv(tmp_path):
    write_parquet(tmp_path / "gpqa_diamond" / "train" / "0000.parquet",
                  [gpqa_row("rec2", "q2", "right", ["w1", "w2", "w3"])])
    (q,) = convert("gpqa_diamond", tmp_path)
    assert q.id == "gpqa_diamond:rec2" and q.metadata["options"]["ABCD".index(q.answer)] == "right"


def test_mmlu_reads_the_all_config_once_and_numbers_items_per_subject(tmp_path):
    rows = [mmlu_row("Find the degree of Q(sqrt(2)) over Q.", "abstract_algebra", ["0", "4", "2", "6"], 2),
            mmlu_row("Statement 1 | ...", "abstract_algebra", ["True, True", "False, False", "True, False",
                                                               "False, True"], 0),
            mmlu_row("Which bone ...?", "anatomy", ["femur", "tibia", "ulna", "radius"], 3)]
    write_parquet(tmp_path / "all" / "test-00000-of-00001.parquet", rows)
    write_parquet(tmp_path / "all" / "dev-00000-of-00001.parquet", rows[:1])
    write_parquet(tmp_path / "abstract_algebra" / "test-00000-of-00001.parquet", rows[:2])  # repeats `all`
    qs = convert("mmlu", tmp_path)
    assert [q.id for q in qs] == ["mmlu:abstract_algebra-0", "mmlu:abstract_algebra-1", "mmlu:anatomy-0"]
    assert qs[0].text == "Find the degree of Q(sqrt(2)) over Q.\n\nA. 0\nB. 4\nC. 2\nD. 6"
    assert [q.answer for q in qs] == ["C", "A", "D"]
    assert qs[2].metadata["options"] == ["femur", "tibia", "ulna", "radius"]
    assert [(q.metadata["task"], q.metadata["rule"]) for q in qs] == \
        [("abstract_algebra", "choice"), ("abstract_algebra", "choice"), ("anatomy", "choice")]


def test_mmlu_pro_writes_up_to_ten_options_and_drops_na_padding(tmp_path):
    ten = [f"opt{i}" for i in range(10)]
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [
        mmlu_pro_row(70, "The symmetric group $S_n$ has $n!$ elements ...", ten, 9),
        mmlu_pro_row(71, "Padded?", ["yes", "no", "N/A", "maybe", "N/A"], 3, "philosophy")])
    write_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", [mmlu_pro_row(1, "shot", ten, 0)])
    qs = convert("mmlu_pro", tmp_path)
    assert [q.id for q in qs] == ["mmlu_pro:70", "mmlu_pro:71"]
    assert qs[0].text == "The symmetric group $S_n$ has $n!$ elements ...\n\n" + "\n".join(
        f"{'ABCDEFGHIJ'[i]}. opt{i}" for i in range(10))
    assert (qs[0].answer, qs[0].metadata["options"], qs[0].metadata["task"]) == ("J", ten, "math")
    assert qs[1].text == "Padded?\n\nA. yes\nB. no\nC. maybe"
    assert (qs[1].answer, qs[1].metadata["options"]) == ("C", ["yes", "no", "maybe"])
    assert (qs[1].metadata["task"], qs[1].metadata["src"], qs[1].metadata["rule"]) == \
        ("philosophy", "ori_mmlu-math", "choice")


def test_mmlu_redux_keeps_every_row_with_its_error_type_from_the_arrow_files(tmp_path):
    write_arrow_stream(tmp_path / "anatomy" / "data-00000-of-00001.arrow", [
        redux_row("What is the embryological origin of the hyoid bone?", ["first arch", "second arch",
                                                                          "third arch", "second and third"], 3, "ok"),
        redux_row("Which is wrong?", ["a", "b", "c", "d"], 0, "wrong_groundtruth", "B")])
    (tmp_path / "anatomy" / "dataset_info.json").write_text("{}")
    (tmp_path / "anatomy" / "state.json").write_text("{}")
    write_parquet(tmp_path / "virology" / "test" / "0000.parquet",
                  [redux_row("Which virus?", ["flu", "hiv", "hpv", "ebv"], 1, "no_correct_answer")])
    qs = convert("mmlu_redux", tmp_path)
    assert [q.id for q in qs] == ["mmlu_redux:anatomy-0", "mmlu_redux:anatomy-1", "mmlu_redux:virology-0"]
    assert qs[0].text == ("What is the embryological origin of the hyoid bone?\n\nA. first arch\nB. second arch\n"
                          "C. third arch\nD. second and third")
    assert [q.answer for q in qs] == ["D", "A", "B"]
    assert [q.metadata["error_type"] for q in qs] == ["ok", "wrong_groundtruth", "no_correct_answer"]
    assert [q.metadata["correct_answer"] for q in qs] == ["", "B", ""]
    assert [q.metadata["task"] for q in qs] == ["anatomy", "anatomy", "virology"]
    assert all(q.metadata["rule"] == "choice" for q in qs)


def test_imo_answerbench_reads_the_csv_and_unwraps_an_answer_in_dollars(tmp_path):
    write_csv(tmp_path / "answerbench.csv", [
        imo_row("imo-bench-algebra-001", "Find all $N$ such that the sum is $\\frac{N^3-N^2+2}{4}$.", "3"),
        imo_row("imo-bench-geometry-007", "Find the angle.", "$\\frac{\\pi}{3}$", "Geometry"),
        imo_row("imo-bench-number_theory-002", "Find all pairs.", "$(1,2)$ and $(2,1)$", "Number Theory")])
    write_csv(tmp_path / "gradingbench.csv", [{"Grading ID": "GB-0001", "Problem ID": "x"}])
    qs = convert("imo_answerbench", tmp_path)
    assert [q.id for q in qs] == ["imo_answerbench:imo-bench-algebra-001", "imo_answerbench:imo-bench-geometry-007",
                                  "imo_answerbench:imo-bench-number_theory-002"]
    assert qs[0].text == "Find all $N$ such that the sum is $\\frac{N^3-N^2+2}{4}$."
    assert [q.answer for q in qs] == ["3", "\\frac{\\pi}{3}", "$(1,2)$ and $(2,1)$"]
    assert [q.metadata["task"] for q in qs] == ["Algebra", "Geometry", "Number Theory"]
    assert qs[0].metadata["subcategory"] == "Operation" and qs[0].metadata["problem_source"] == "IMO Shortlist 2021"
    assert all(q.metadata["rule"] == "math" for q in qs)


def test_hle_keeps_the_data_uri_image_and_the_inline_options(tmp_path):
    png = png_bytes()
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    mc = "Which is largest?\n\nAnswer Choices:\nA. 1\nB. 2\nC. 3"
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [
        hle_row("668825f80a642802bdfeadfa", "What is the count shown in the figure?", "12", "exactMatch", uri),
        hle_row("66e8c2d5f5a6a7b1d2c3e4f5", mc, "C", "multipleChoice", "", "Physics")])
    qs = convert("hle", tmp_path)
    assert [q.id for q in qs] == ["hle:668825f80a642802bdfeadfa", "hle:66e8c2d5f5a6a7b1d2c3e4f5"]
    assert qs[0].images == (uri,) and base64.b64decode(qs[0].images[0].split(",", 1)[1]) == png
    assert (qs[0].text, qs[0].answer) == ("What is the count shown in the figure?", "12")
    assert (qs[1].text, qs[1].answer, qs[1].images) == (mc, "C", ())
    assert [(q.metadata["answer_type"], q.metadata["task"]) for q in qs] == \
        [("exactMatch", "Math"), ("multipleChoice", "Physics")]
    assert all("rule" not in q.metadata and "options" not in q.metadata for q in qs)  # the HLE judge grades


def test_multichallenge_puts_earlier_turns_in_history_and_the_criterion_in_rubric(tmp_path):
    turns = [("user", "I am vegan. Suggest a dinner."), ("assistant", "Lentil curry."),
             ("user", "Now give me a recipe with a protein source.")]
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [
        multichallenge_row("6724be3c7be8a0c5a4b8e1f2", "INFERENCE_MEMORY", turns,
                           "Does the recipe avoid all animal products?"),
        multichallenge_row("q2", "SELF_COHERENCE", [("user", "Is 7 prime?")], "Does it say no?", "NO")],
        MULTICHALLENGE_SCHEMA)
    qs = convert("multichallenge", tmp_path)
    assert [q.id for q in qs] == ["multichallenge:6724be3c7be8a0c5a4b8e1f2", "multichallenge:q2"]
    assert qs[0].text == "Now give me a recipe with a protein source."
    assert qs[0].history == ({"role": "user", "content": "I am vegan. Suggest a dinner."},
                             {"role": "assistant", "content": "Lentil curry."})
    assert (qs[0].answer, qs[0].metadata["rubric"], qs[0].metadata["task"]) == \
        ("YES", "Does the recipe avoid all animal products?", "INFERENCE_MEMORY")
    assert (qs[1].text, qs[1].history, qs[1].answer) == ("Is 7 prime?", (), "NO")
    assert all("rule" not in q.metadata and "Does" not in q.text for q in qs)  # the criterion is the judge's only


def test_multichallenge_reads_the_github_jsonl_with_a_list_of_turns_and_upper_case_keys(tmp_path):
    write_jsonl(tmp_path / "data" / "benchmark_questions.jsonl", [
        {"QUESTION_ID": 17, "AXIS": "INSTRUCTION_RETENTION",
         "CONVERSATION": [{"role": "user", "content": "Answer in French from now on."},
                          {"role": "assistant", "content": "D'accord."}, {"role": "user", "content": "Hi?"}],
         "TARGET_QUESTION": "Is the reply in French?", "PASS_CRITERIA": "YES"}])
    write_jsonl(tmp_path / "data" / "final_model_responses" / "gpt.jsonl", [{"QUESTION_ID": 17, "RESPONSE": "x"}])
    (q,) = convert("multichallenge", tmp_path)
    assert (q.id, q.text, q.answer) == ("multichallenge:17", "Hi?", "YES")
    assert [t["role"] for t in q.history] == ["user", "assistant"]
    assert (q.metadata["rubric"], q.metadata["task"]) == ("Is the reply in French?", "INSTRUCTION_RETENTION")


def test_all_ten_text_converters_are_registered_with_their_release_named():
    for name in TEXT_BENCHMARKS:
        assert name in CONVERTERS and CONVERTERS[name].read.__module__ == text.__name__
        assert "/" in CONVERTERS[name].layout  # the HF repository it follows


# --- wrong layouts -------------------------------------------------------------------------------

def test_a_missing_column_names_the_file_and_the_column(tmp_path):
    f = write_parquet(tmp_path / "all" / "test-00000-of-00001.parquet",
                      [{"question": "q", "subject": "anatomy", "answer": 1}])
    with pytest.raises(LayoutError, match=r"test-00000-of-00001\.parquet.*column 'choices' is missing.*cais/mmlu"):
        convert("mmlu", tmp_path)
    row = gpqa_row("rec1", "q", "r", ["a", "b", "c"])
    del row["Correct Answer"]
    g = write_csv(tmp_path / "g" / "gpqa_diamond.csv", [row])
    with pytest.raises(LayoutError, match=r"gpqa_diamond\.csv.*column 'Correct Answer' is missing"):
        convert("gpqa_diamond", g)
    m = write_jsonl(tmp_path / "m" / "test.jsonl", [{"question_id": "1", "axis": "A", "conversation": [],
                                                     "pass_criteria": "YES"}])
    with pytest.raises(LayoutError, match=r"test\.jsonl.*column 'target_question' is missing"):
        convert("multichallenge", m)
    assert f.is_file()


@pytest.mark.parametrize("name, write, column", [
    ("ceval", lambda d: write_parquet(d / "law" / "val-0.parquet", [ceval_row(0, "q", "abcd", "E")], CEVAL_SCHEMA),
     "answer"),
    ("mmlu", lambda d: write_parquet(d / "all" / "test-0.parquet", [mmlu_row("q", "law", ["a", "b", "c", "d"], 4)]),
     "answer"),
    ("mmlu_pro", lambda d: write_parquet(d / "test-0.parquet", [{**mmlu_pro_row(1, "q", ["a", "b"], 1),
                                                                 "answer": "A"}]), "answer"),
    ("hle", lambda d: write_parquet(d / "test-0.parquet", [hle_row("1", "q", "a", "exact_match")]), "answer_type"),
    ("aime25", lambda d: write_jsonl(d / "aime2025-I.jsonl", [aime25_row("q", "seventy")]), "answer"),
    ("multichallenge", lambda d: write_parquet(d / "test-0.parquet", [multichallenge_row(
        "1", "A", [("user", "hi"), ("assistant", "hello")], "t")], MULTICHALLENGE_SCHEMA), "conversation"),
    ("multichallenge", lambda d: write_parquet(d / "test-0.parquet", [multichallenge_row(
        "1", "A", [("user", "hi")], "t", "MAYBE")], MULTICHALLENGE_SCHEMA), "pass_criteria"),
])
def test_a_bad_value_raises_layout_error_naming_the_file_and_the_column(tmp_path, name, write, column):
    f = write(tmp_path)
    with pytest.raises(LayoutError, match=rf"{f.name}.*column '{column}'"):
        convert(name, tmp_path)


def test_an_item_named_twice_is_refused(tmp_path):
    write_parquet(tmp_path / "data" / "test-0.parquet", [mmlu_pro_row(1, "q", ["a", "b"], 0)] * 2)
    with pytest.raises(LayoutError, match="'mmlu_pro:1' appears twice"):
        convert("mmlu_pro", tmp_path)
