"""The paper's 10 language-only benchmarks, from their public releases' files to questions.

Multiple-choice items (C-Eval, GPQA-Diamond, MMLU, MMLU-Pro, MMLU-Redux) get their options written
into the question and a letter as gold, rule "choice"; competition maths (AIME 2025/2026,
IMO-AnswerBench) gets rule "math", which decides only "right" and leaves the rest to the judge;
HLE and MultiChallenge are graded by their own judges, so no rule is set for them.
GPQA and IMO-AnswerBench ship CSV, MMLU-Redux 2.0 Arrow files (`datasets.save_to_disk`), which
`read_rows` does not read: `_rows` reads those itself and hands the other formats to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from megatron_zppo.core.records import Question
from megatron_zppo.evaluation.benchmarks.layout import (LETTERS, LayoutError, data_files, field, image_ref, question,
                                                         read_rows, strip_directives, with_options)
from megatron_zppo.evaluation.benchmarks.registry import converter

# Folder names that are a split, not a subject ({subject}/test/0000.parquet in HF's parquet branch).
SPLIT_DIRS = {"test", "val", "validation", "dev", "train", "data"}
# Answer-format directives some copies of the maths sets carry; the project's closer replaces them.
MATH_DIRECTIVES = [r"\s*Please reason step by step,? and put your final answer within \\boxed\{\}\.?",
                   r"\s*(?:Please )?put your final answer (?:with)?in \\boxed\{\}\.?",
                   r"\s*Let'?s think step by step\.?", r"\s*Think step by step\.?"]


# --- reading -------------------------------------------------------------------------------------

def _files(path: Path, patterns: Sequence[str], keep: Callable[[str], bool] | None = None,
           wanted: str = "") -> list[Path]:
    """The data files under `path` (or `path` itself), those a folder holds filtered by `keep`
    (given the path relative to the folder), so that a whole downloaded repository can be named."""
    p = Path(path)
    files = data_files(p, patterns)
    if p.is_dir() and keep is not None:
        files = [f for f in files if keep(f.relative_to(p).as_posix())]
        if not files:
            raise LayoutError(f"benchmark data {p}: no {wanted} file under it ({' / '.join(patterns)})")
    return files


def _subject(f: Path) -> str:
    """The subject of a per-subject release: the nearest folder that is not a split."""
    return next((d.name for d in f.parents if d.name.lower() not in SPLIT_DIRS), f.stem)


def _unique(questions: list[Question]) -> list[Question]:
    seen = set()
    for q in questions:
        if q.id in seen:
            raise LayoutError(f"benchmark item id {q.id!r} appears twice; the files name one item twice "
                              "(two copies of a split or config under the folder?)")
        seen.add(q.id)
    return questions


# --- values --------------------------------------------------------------------------------------

def _text(row: dict, column: str, f: Path) -> str:
    return str(field(row, column, f, (str, int))).strip()


def _optional(row: dict, column: str) -> str:
    value = row.get(column)
    return "" if value is None else str(value).strip()


def _str_list(row: dict, column: str, f: Path) -> list[str]:
    value = field(row, column, f, (list, tuple))
    if not value or not all(isinstance(v, str) for v in value):
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {value!r:.80}; expected a non-empty list "
                          "of option texts")
    return [v.strip() for v in value]


def _letter_index(row: dict, column: str, f: Path, n: int) -> int:
    value = field(row, column, f).strip().upper()
    if len(value) != 1 or value not in LETTERS[:n]:
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {value!r}; "
                          f"expected a letter A-{LETTERS[n - 1]}")
    return LETTERS.index(value)


def _choice(benchmark: str, qid: str, stem: str, options: list[str], gold: int, f: Path, column: str,
            **metadata) -> Question:
    """A multiple-choice item: options below the stem, the gold option's letter as answer."""
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(options):
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {gold!r}; expected an option index "
                          f"0-{len(options) - 1}")
    return question(benchmark, qid, with_options(stem, options), LETTERS[gold], options=options, rule="choice",
                    **metadata)


def _aime_answer(row: dict, column: str, f: Path) -> str:
    """An AIME answer as its integer: releases store it as text, some with LaTeX ("336^\\circ")."""
    value = field(row, column, f, (str, int))
    m = re.match(r"\s*\$?\s*(\d{1,3})(?!\d)", str(value))
    if not m:
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {value!r}; expected an integer 0-999")
    return str(int(m.group(1)))


def _gpqa_order(record_id: str, n: int) -> list[int]:
    """A fixed shuffle of n choices for one record: each choice ranked by a SHA-256 of the record's id
    and its position, so every run and machine shows the same order (no RNG, no hash())."""
    return sorted(range(n), key=lambda i: hashlib.sha256(f"gpqa:{record_id}:{i}".encode()).hexdigest())


# --- AIME ----------------------------------------------------------------------------------------

LAYOUT_AIME25 = ("opencompass/AIME2025 JSONL (aime2025-I.jsonl and aime2025-II.jsonl = configs AIME2025-I/II, split "
                 "test; revision a6ad95f6): fields question, answer (an integer 0-999 as text, some with LaTeX such "
                 "as 336^\\circ); id AIME2025-<I|II>-<problem number from 1>")


@converter("aime25", LAYOUT_AIME25)
def aime25(path: Path) -> list[Question]:
    files = _files(path, ("*.jsonl", "*.json", "*.parquet"), lambda rel: "aime2025" in rel.lower(), "aime2025-I/II")
    out, counts = [], {}
    for f, row in read_rows(files, ("question", "answer"), LAYOUT_AIME25):
        part = re.search(r"aime2025-(I{1,2})(?![A-Za-z])", f.name, re.I)  # the release has no id: the file says
        if not part:
            raise LayoutError(f"benchmark file {f}: its name does not say which exam (aime2025-I or aime2025-II); "
                              f"expected {LAYOUT_AIME25}")
        exam = f"AIME2025-{part.group(1).upper()}"
        counts[exam] = counts.get(exam, 0) + 1
        text = strip_directives(_text(row, "question", f), MATH_DIRECTIVES)
        out.append(question("aime25", f"{exam}-{counts[exam]}", text, _aime_answer(row, "answer", f), rule="math",
                            task=exam))
    return _unique(out)


LAYOUT_AIME26 = ("MathArena/aime_2026 parquet (data/train-*.parquet, config default, split train, 30 rows; card "
                 "2548a41): columns problem_idx (int, 1-30), problem (LaTeX), answer (int64; text accepted)")


@converter("aime26", LAYOUT_AIME26)
def aime26(path: Path) -> list[Question]:
    files = _files(path, ("*.parquet", "*.jsonl"))
    out = []
    for f, row in read_rows(files, ("problem_idx", "problem", "answer"), LAYOUT_AIME26):
        idx = _text(row, "problem_idx", f)
        text = strip_directives(_text(row, "problem", f), MATH_DIRECTIVES)
        out.append(question("aime26", idx, text, _aime_answer(row, "answer", f), rule="math"))
    return _unique(out)


# --- multiple choice -----------------------------------------------------------------------------

LAYOUT_CEVAL = ("ceval/ceval-exam, split val of the 52 subject configs (parquet {subject}/val-*.parquet since the "
                "parquet conversion 1577cea; the older ceval-exam.zip CSVs val/{subject}_val.csv also read): columns "
                "id, question, A, B, C, D, answer (letter); the subject is the folder (or CSV) name; id "
                "<subject>-val-<id>")


@converter("ceval", LAYOUT_CEVAL)
def ceval(path: Path) -> list[Question]:
    files = _files(path, ("*.parquet", "*.csv"),
                   lambda rel: Path(rel).name.startswith("val") or Path(rel).stem.endswith("_val"), "val split")
    out = []
    for f, row in read_rows(files, ("id", "question", "A", "B", "C", "D", "answer"), LAYOUT_CEVAL):
        subject = f.stem[:-len("_val")] if f.suffix == ".csv" and f.stem.endswith("_val") else _subject(f)
        options = [_text(row, c, f) for c in "ABCD"]
        out.append(_choice("ceval", f"{subject}-val-{_text(row, 'id', f)}", _text(row, "question", f), options,
                           _letter_index(row, "answer", f, 4), f, "answer", task=subject))
    return _unique(out)


GPQA_COLUMNS = ("Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                "Incorrect Answer 3")
LAYOUT_GPQA = ("Idavidrein/gpqa (gated), config gpqa_diamond, split train, 198 rows: gpqa_diamond.csv (or HF's parquet "
               "of it; revision 633f5ee8): columns Record ID, Question, Correct Answer, Incorrect Answer 1-3, "
               "High-level domain, Subdomain; the four answers are shuffled by a SHA-256 of the Record ID")


@converter("gpqa_diamond", LAYOUT_GPQA)
def gpqa_diamond(path: Path) -> list[Question]:
    files = _files(path, ("*.csv", "*.parquet"), lambda rel: "diamond" in rel.lower(), "gpqa_diamond")
    out = []
    for f, row in read_rows(files, GPQA_COLUMNS, LAYOUT_GPQA):
        record = _text(row, "Record ID", f)
        answers = [_text(row, c, f) for c in GPQA_COLUMNS[2:]]  # the correct one first
        order = _gpqa_order(record, len(answers))
        out.append(_choice("gpqa_diamond", record, _text(row, "Question", f), [answers[i] for i in order],
                           order.index(0), f, "Correct Answer", task=_optional(row, "High-level domain"),
                           subdomain=_optional(row, "Subdomain")))
    return _unique(out)


LAYOUT_MMLU = ("cais/mmlu, config all, split test (all/test-*.parquet, 14,042 rows; per-subject configs read when "
               "`all` is absent): columns question, subject, choices (4 texts), answer (ClassLabel int 0-3); id "
               "<subject>-<index within the subject>")


@converter("mmlu", LAYOUT_MMLU)
def mmlu(path: Path) -> list[Question]:
    p = Path(path)
    files = _files(p, ("*.parquet",), lambda rel: Path(rel).name.startswith("test"), "test split")
    if p.is_dir() and any(f.relative_to(p).parts[0] == "all" for f in files):
        files = [f for f in files if f.relative_to(p).parts[0] == "all"]  # the 57 subject configs repeat `all`
    out, counts = [], {}
    for f, row in read_rows(files, ("question", "subject", "choices", "answer"), LAYOUT_MMLU):
        subject = _text(row, "subject", f)
        counts[subject] = counts.get(subject, -1) + 1
        out.append(_choice("mmlu", f"{subject}-{counts[subject]}", _text(row, "question", f),
                           _str_list(row, "choices", f), field(row, "answer", f, (int,)), f, "answer", task=subject))
    return _unique(out)


LAYOUT_MMLU_PRO = ("TIGER-Lab/MMLU-Pro, split test (data/test-*.parquet, 12,032 rows; schema of b6056463): columns "
                   "question_id, question, options (up to 10), answer (letter), answer_index, category, src; "
                   "'N/A' padding options of early uploads dropped")


@converter("mmlu_pro", LAYOUT_MMLU_PRO)
def mmlu_pro(path: Path) -> list[Question]:
    files = _files(path, ("*.parquet", "*.jsonl"), lambda rel: Path(rel).name.startswith("test"), "test split")
    out = []
    columns = ("question_id", "question", "options", "answer", "answer_index", "category")
    for f, row in read_rows(files, columns, LAYOUT_MMLU_PRO):
        options = _str_list(row, "options", f)
        gold = field(row, "answer_index", f, (int,))
        if _letter_index(row, "answer", f, len(LETTERS)) != gold:
            raise LayoutError(f"benchmark file {f}: column 'answer' holds {row['answer']!r} but answer_index holds "
                              f"{gold!r}; expected the letter of that index")
        kept = [i for i, o in enumerate(options) if o != "N/A" or i == gold]  # "N/A" pads to ten: not an option
        gold = kept.index(gold) if gold in kept else gold  # out of range: _choice names it
        out.append(_choice("mmlu_pro", _text(row, "question_id", f), _text(row, "question", f),
                           [options[i] for i in kept], gold, f, "answer_index",
                           task=_text(row, "category", f), src=_optional(row, "src")))
    return _unique(out)


LAYOUT_MMLU_REDUX = ("edinburgh-dawg/mmlu-redux-2.0, 57 subject configs, split test, 100 rows each (Arrow "
                     "{subject}/data-00000-of-00001.arrow at ecde135, or the parquet conversion): columns question, "
                     "choices (4 texts), answer (int 0-3), error_type, correct_answer; ALL rows kept, error_type in "
                     "metadata; id <subject>-<index>")


@converter("mmlu_redux", LAYOUT_MMLU_REDUX)
def mmlu_redux(path: Path) -> list[Question]:
    # Every row is kept, those annotated as erroneous too (the paper says "all 57 subjects"); a suite
    # that scores only error_type == "ok" filters on the metadata.
    files = _files(path, ("*.arrow", "*.parquet"))
    out, counts = [], {}
    for f, row in read_rows(files, ("question", "choices", "answer", "error_type"), LAYOUT_MMLU_REDUX):
        subject = _subject(f)
        counts[subject] = counts.get(subject, -1) + 1
        out.append(_choice("mmlu_redux", f"{subject}-{counts[subject]}", _text(row, "question", f),
                           _str_list(row, "choices", f), field(row, "answer", f, (int,)), f, "answer", task=subject,
                           error_type=_optional(row, "error_type"), correct_answer=_optional(row, "correct_answer")))
    return _unique(out)


# --- free-form, judged ---------------------------------------------------------------------------

LAYOUT_IMO = ("OpenEvals/IMO-AnswerBench, split train, 400 rows (UNCERTAIN file format: parquet, JSONL or the "
              "original google-deepmind/superhuman answerbench.csv all read): columns Problem ID, Problem, Short "
              "Answer (LaTeX, an outer $...$ removed), Category, Subcategory, Source")


@converter("imo_answerbench", LAYOUT_IMO)
def imo_answerbench(path: Path) -> list[Question]:
    files = _files(path, ("*.parquet", "*.csv", "*.jsonl"), lambda rel: not re.search("grading|proof", rel.lower()),
                   "AnswerBench")
    out = []
    for f, row in read_rows(files, ("Problem ID", "Problem", "Short Answer", "Category"), LAYOUT_IMO):
        answer = _text(row, "Short Answer", f)
        if len(answer) > 2 and answer[0] == answer[-1] == "$" and "$" not in answer.strip("$"):
            answer = answer.strip("$").strip()  # math delimiters around the whole answer, not part of it
        text = strip_directives(_text(row, "Problem", f), MATH_DIRECTIVES)
        out.append(question("imo_answerbench", _text(row, "Problem ID", f), text, answer, rule="math",
                            task=_text(row, "Category", f), subcategory=_optional(row, "Subcategory"),
                            problem_source=_optional(row, "Source")))
    return _unique(out)


LAYOUT_HLE = ("cais/hle (gated), split test (data/test-*.parquet, 2,500 rows; revision UNCERTAIN): columns id, "
              "question (multiple-choice options inline), image (base64 data URI or ''), answer, answer_type "
              "(exactMatch | multipleChoice), category, raw_subject")


@converter("hle", LAYOUT_HLE)
def hle(path: Path) -> list[Question]:
    files = _files(path, ("*.parquet", "*.jsonl"), lambda rel: Path(rel).name.startswith("test"), "test split")
    out = []
    for f, row in read_rows(files, ("id", "question", "image", "answer", "answer_type", "category"), LAYOUT_HLE):
        kind = _text(row, "answer_type", f)
        if kind not in ("exactMatch", "multipleChoice"):
            raise LayoutError(f"benchmark file {f}: column 'answer_type' holds {kind!r}; expected exactMatch or "
                              "multipleChoice")
        # The image is kept as the release gives it (a data URI the loader accepts); most rows have none.
        images = [image_ref(row["image"], f, "image")] if row["image"] else []
        out.append(question("hle", _text(row, "id", f), _text(row, "question", f), _text(row, "answer", f),
                            images=images, task=_text(row, "category", f), answer_type=kind,
                            raw_subject=_optional(row, "raw_subject")))
    return _unique(out)


LAYOUT_MULTICHALLENGE = ("ScaleAI/MultiChallenge, split test (data/test-00000-of-00001.parquet, 266 rows; card "
                         "670fd81, data 9d9e0fd; the GitHub benchmark_questions.jsonl with upper-case keys also "
                         "read): columns question_id, axis, conversation (turns {role, content}, as a list or a dict "
                         "of lists; the last is the user's), target_question, pass_criteria (YES | NO)")


def _turns(value, f: Path) -> list[dict[str, str]]:
    """A conversation as {role, content} turns: `datasets` gives a sequence of records as a dict of
    lists, pyarrow and JSON as a list of records."""
    if isinstance(value, dict) and isinstance(value.get("role"), list) and isinstance(value.get("content"), list) \
            and len(value["role"]) == len(value["content"]):
        value = [{"role": r, "content": c} for r, c in zip(value["role"], value["content"])]
    if not isinstance(value, list) or not value:
        raise LayoutError(f"benchmark file {f}: column 'conversation' holds {value!r:.80}; expected a list of "
                          "{role, content} turns")
    turns = []
    for t in value:
        if not isinstance(t, dict) or t.get("role") not in ("system", "user", "assistant") \
                or not isinstance(t.get("content"), str):
            raise LayoutError(f"benchmark file {f}: column 'conversation' holds the turn {t!r:.80}; expected "
                              "{role: system|user|assistant, content: str}")
        turns.append({"role": t["role"], "content": t["content"]})
    return turns


def _lower_keys(row: dict) -> dict:
    return {str(k).lower(): v for k, v in row.items()}  # GitHub's jsonl spells them QUESTION_ID, AXIS...


@converter("multichallenge", LAYOUT_MULTICHALLENGE)
def multichallenge(path: Path) -> list[Question]:
    files = _files(path, ("*.parquet", "*.jsonl"),
                   lambda rel: Path(rel).name.startswith(("test", "benchmark_questions")), "test split")
    columns = ("question_id", "axis", "conversation", "target_question", "pass_criteria")
    out = []
    for f, row in read_rows(files, columns, LAYOUT_MULTICHALLENGE, rename=_lower_keys):
        turns = _turns(row["conversation"], f)
        if turns[-1]["role"] != "user":
            raise LayoutError(f"benchmark file {f}: column 'conversation' ends with a {turns[-1]['role']} turn; "
                              "expected the user's turn the model answers")
        verdict = _text(row, "pass_criteria", f).upper()
        if verdict not in ("YES", "NO"):
            raise LayoutError(f"benchmark file {f}: column 'pass_criteria' holds {verdict!r}; expected YES or NO")
        # The criterion is shown only to the judge (metadata "rubric"); the student sees the conversation.
        q = question("multichallenge", _text(row, "question_id", f), turns[-1]["content"], verdict,
                     rubric=_text(row, "target_question", f), task=_text(row, "axis", f))
        out.append(dataclasses.replace(q, history=tuple(turns[:-1])))
    return _unique(out)
