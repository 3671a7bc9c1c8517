"""Vision-language benchmarks of the paper's suite (multiple choice and short answers); the four
mathematical ones are in vlm_math.py, charts, documents and OCR in vlm_docs.py.

Each reads the files of the benchmark's Hugging Face release as the user downloaded them. Where a
release has several configurations or splits side by side (MMMU-Pro, We-Math's JSON beside its
parquet), the converter picks its own files under the folder it is given.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from pathlib import Path

from megatron_zppo.core.records import Question
from megatron_zppo.evaluation.benchmarks.layout import (LETTERS, LayoutError, field, image_ref, question, read_rows,
                                                         strip_directives, with_options)
from megatron_zppo.evaluation.benchmarks.registry import converter

# ---------------------------------------------------------------- shared by vlm.py and vlm_math.py


def qid_of(row: dict, column: str, f: Path) -> str:
    """An id column (some releases store it as an integer) as text."""
    return str(field(row, column, f, (str, int))).strip()


def unique(items: Sequence[tuple[Path, str, Question]]) -> list[Question]:
    """The questions, once it is checked that no two share an id (a repeated id would merge two
    items' grades); each item is (file, id column, question)."""
    seen: dict[str, Path] = {}
    for f, column, q in items:
        if q.id in seen:
            raise LayoutError(f"benchmark file {f}: column {column!r} repeats the id {q.id!r} (first in {seen[q.id]}); "
                              "expected one row per item")
        seen[q.id] = f
    return [q for _, _, q in items]


def options_of(row: dict, column: str, f: Path) -> list[str]:
    """A list column of option texts (numbers written as text), at least two."""
    values = field(row, column, f, (list,))
    if len(values) < 2 or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {values!r:.80}; expected a list of at least "
                          "two option texts")
    return [str(v) for v in values]


def index_letter(value, n: int, f: Path, column: str) -> str:
    """The letter of a 0-based option index (an int, or a digit string)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n:
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {value!r:.40}; expected the 0-based index of "
                          f"one of the {n} options")
    return LETTERS[value]


def gold_letter(value, n: int, f: Path, column: str) -> str:
    """A gold option letter, checked to name one of `n` options."""
    letter = value.strip().strip("()").upper() if isinstance(value, str) else None
    if letter is None or len(letter) != 1 or letter not in LETTERS[:n]:
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {value!r:.40}; expected one of the option "
                          f"letters {LETTERS[:n]}")
    return letter


def has_image(cell) -> bool:
    """Whether an image cell holds an image (text-only rows leave it null, empty or {bytes: null, path: null})."""
    if isinstance(cell, dict):
        return bool(cell.get("bytes") or cell.get("path"))
    return bool(cell)


# ---------------------------------------------------------------- AI2D, EmbSpatial, VisualPuzzles, We-Math

LAYOUT_AI2D = ("lmms-lab/ai2d test parquet (data/test-*.parquet; card revision c83a9b9, data 7f7fbf8): columns "
               "question, options (list of texts), answer (0-based option index as a digit string), image; no id "
               "column (the row's position is the id)")


@converter("ai2d", LAYOUT_AI2D)
def ai2d(path: Path) -> list[Question]:
    items = []
    for i, (f, row) in enumerate(read_rows(path, ["question", "options", "answer", "image"], LAYOUT_AI2D)):
        options = options_of(row, "options", f)
        gold = index_letter(row["answer"], len(options), f, "answer")
        text = with_options(field(row, "question", f), options)
        items.append((f, "answer", question("ai2d", str(i), text, gold, images=[image_ref(row["image"], f, "image")],
                                            options=options, rule="choice")))
    return unique(items)


LAYOUT_EMBSPATIAL = ("FlagEval/EmbSpatial-Bench test parquet (data/test-*.parquet; card revision not known, the card "
                     "was not readable: columns as lmms-eval's embspatial task @2bb5e98 reads them, dtypes UNCERTAIN): "
                     "columns question_id, question, "
                     "answer_options (list), answer (0-based int index), image, relation; data_source if present")


@converter("embspatial", LAYOUT_EMBSPATIAL)
def embspatial(path: Path) -> list[Question]:
    items = []
    columns = ["question_id", "question", "answer_options", "answer", "image", "relation"]
    for f, row in read_rows(path, columns, LAYOUT_EMBSPATIAL):
        options = options_of(row, "answer_options", f)
        gold = index_letter(row["answer"], len(options), f, "answer")
        # Some questions carry an "<image>" placeholder; the image is given beside the text.
        text = with_options(field(row, "question", f).replace("<image>", "").strip(), options)
        extra = {"data_source": row["data_source"]} if row.get("data_source") else {}
        items.append((f, "question_id", question(
            "embspatial", qid_of(row, "question_id", f), text, gold, images=[image_ref(row["image"], f, "image")],
            options=options, rule="choice", task=field(row, "relation", f), **extra)))
    return unique(items)


LAYOUT_VISUALPUZZLES = ("neulab/VisualPuzzles parquet (data.parquet, split 'train', named 'test' since card "
                        "revision 121e4ff; either is read): columns id, question, options (list of 4, or null when "
                        "the choices are drawn in the image), answer (letter), image, category")
# Where the choices are drawn in the image, the question says so (lmms-eval's task does the same);
# our wording.
CHOICES_IN_IMAGE = "Choose the answer from the options (A), (B), (C) and (D) shown in the image."


@converter("visualpuzzles", LAYOUT_VISUALPUZZLES)
def visualpuzzles(path: Path) -> list[Question]:
    items = []
    columns = ["id", "question", "options", "answer", "image", "category"]
    for f, row in read_rows(path, columns, LAYOUT_VISUALPUZZLES):
        stem = field(row, "question", f).strip()
        if row["options"] is None:
            options, text = [], f"{stem}\n\n{CHOICES_IN_IMAGE}"
        else:
            options = options_of(row, "options", f)
            text = with_options(stem, options)
        gold = gold_letter(row["answer"], len(options) or 4, f, "answer")
        extra = {"difficulty": row["difficulty"]} if row.get("difficulty") else {}
        items.append((f, "id", question("visualpuzzles", qid_of(row, "id", f), text, gold,
                                        images=[image_ref(row["image"], f, "image")], options=options, rule="choice",
                                        task=field(row, "category", f), **extra)))
    return unique(items)


LAYOUT_WEMATH = ("We-Math/We-Math testmini parquet (data/testmini-*.parquet; card revision 527c44d): columns ID, "
                 "key, question, option (one text 'A. ...;B. ...'), answer (letter), image_path (an image); "
                 "'knowledge concept' if present. ID is shared by a problem's one-step parts, so ID and key make "
                 "the id")
_WEMATH_MARK = re.compile(r"(?:^|;)\s*([A-Z])\s*[.．:：]\s*")


def split_lettered(text: str, f: Path, column: str) -> list[str]:
    """'A. x;B. y; C. z' as [x, y, z]: options start at a letter A, B, ... in order, each at the
    start or after a ';' (a ';' inside an option text stays in it)."""
    marks = []
    for m in _WEMATH_MARK.finditer(text):
        if len(marks) < len(LETTERS) and m.group(1) == LETTERS[len(marks)]:
            marks.append(m)
    if len(marks) < 2 or marks[0].start() != 0:
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {text!r:.80}; expected lettered options "
                          "'A. text;B. text;...'")
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [text[m.end():end].strip().rstrip(";").strip() for m, end in zip(marks, ends)]


@converter("wemath", LAYOUT_WEMATH)
def wemath(path: Path) -> list[Question]:
    items = []
    columns = ["ID", "key", "question", "option", "answer", "image_path"]
    for f, row in read_rows(path, columns, LAYOUT_WEMATH, patterns=("testmini-*.parquet",)):
        options = split_lettered(field(row, "option", f), f, "option")
        gold = gold_letter(row["answer"], len(options), f, "answer")
        ident, key = qid_of(row, "ID", f), qid_of(row, "key", f)
        # ID and key are what We-Math's four-dimensional metric joins a problem's parts on.
        extra = {"knowledge_concept": row["knowledge concept"]} if row.get("knowledge concept") else {}
        items.append((f, "ID", question("wemath", f"{ident}:{key}", with_options(field(row, "question", f), options),
                                        gold, images=[image_ref(row["image_path"], f, "image_path")],
                                        options=options, rule="choice", ID=ident, key=key, **extra)))
    return unique(items)


# ---------------------------------------------------------------- MMMU-Pro (three configurations)

_MMMU_PRO = ("MMMU/MMMU_Pro {config} parquet ('{folder}/test-*.parquet'; card revision cd9382d; prompt as in "
             "mmmu-pro/infer/infer_gpt.py and prompts.yaml of MMMU-Benchmark/MMMU): columns id, {columns}, options (a "
             "Python-literal list in a text), answer (letter); subject if present")
LAYOUT_MMMU_PRO_4 = _MMMU_PRO.format(config="'standard (4 options)'", folder="standard (4 options)",
                                     columns="question (with <image k> tags), image_1..image_7")
LAYOUT_MMMU_PRO_10 = _MMMU_PRO.format(config="'standard (10 options)'", folder="standard (10 options)",
                                      columns="question (with <image k> tags), image_1..image_7")
LAYOUT_MMMU_PRO_VISION = _MMMU_PRO.format(config="'vision'", folder="vision",
                                          columns="image (a screenshot holding the question and its options)")
# The official vision prompt gives the screenshot and an answer-format instruction only, never the
# options as text; this is the instruction without its format directive, in our words.
MMMU_PRO_VISION_PROMPT = "Answer the multiple-choice question shown in the image."
_IMAGE_TAG = re.compile(r"<image (\d+)>")


def literal_list(row: dict, column: str, f: Path) -> list[str]:
    """A list column that the release stores as the text of a Python list."""
    value = row.get(column)
    try:
        parsed = ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError):
        parsed = None
    if not isinstance(parsed, list) or len(parsed) < 2:
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {value!r:.80}; expected a Python-literal list "
                          "of at least two options")
    return [str(v) for v in parsed]


def config_folder(path: Path, folder: str) -> Path:
    """The configuration's own folder when given the whole release, else `path` itself."""
    return path / folder if (path / folder).is_dir() else path


def interleave(texts: list[str], row: dict, f: Path) -> tuple[list[str], list]:
    """The texts with each `<image k>` tag made "[image j]", j the image's place in the prompt, and
    the images in the order their tags first appear (question, then options); an image no tag names
    follows them (the official script passes every image the row holds)."""
    order: list[int] = []
    for text in texts:
        order += [k for k in map(int, _IMAGE_TAG.findall(text)) if k not in order]
    order += [k for k in range(1, 8) if k not in order and has_image(row.get(f"image_{k}"))]
    images = [image_ref(row.get(f"image_{k}"), f, f"image_{k}") for k in order]
    place = {k: j + 1 for j, k in enumerate(order)}
    return [_IMAGE_TAG.sub(lambda m: f"[image {place[int(m.group(1))]}]", t) for t in texts], images


def _mmmu_pro_standard(path: Path, benchmark: str, folder: str, layout: str) -> list[Question]:
    items = []
    for f, row in read_rows(config_folder(path, folder), ["id", "question", "options", "answer", "image_1"], layout):
        options = literal_list(row, "options", f)
        gold = gold_letter(row["answer"], len(options), f, "answer")
        texts, images = interleave([field(row, "question", f), *options], row, f)
        extra = {"task": row["subject"]} if row.get("subject") else {}
        items.append((f, "id", question(benchmark, qid_of(row, "id", f), with_options(texts[0], texts[1:]), gold,
                                        images=images, options=texts[1:], rule="choice", **extra)))
    return unique(items)


@converter("mmmu_pro_standard4", LAYOUT_MMMU_PRO_4)
def mmmu_pro_standard4(path: Path) -> list[Question]:
    return _mmmu_pro_standard(path, "mmmu_pro_standard4", "standard (4 options)", LAYOUT_MMMU_PRO_4)


@converter("mmmu_pro_standard10", LAYOUT_MMMU_PRO_10)
def mmmu_pro_standard10(path: Path) -> list[Question]:
    return _mmmu_pro_standard(path, "mmmu_pro_standard10", "standard (10 options)", LAYOUT_MMMU_PRO_10)


@converter("mmmu_pro_vision", LAYOUT_MMMU_PRO_VISION)
def mmmu_pro_vision(path: Path) -> list[Question]:
    items = []
    for f, row in read_rows(config_folder(path, "vision"), ["id", "image", "options", "answer"],
                            LAYOUT_MMMU_PRO_VISION):
        options = literal_list(row, "options", f)  # for the rule and the judge only: the student reads the image
        gold = gold_letter(row["answer"], len(options), f, "answer")
        extra = {"task": row["subject"]} if row.get("subject") else {}
        items.append((f, "id", question("mmmu_pro_vision", qid_of(row, "id", f), MMMU_PRO_VISION_PROMPT, gold,
                                        images=[image_ref(row["image"], f, "image")], options=options, rule="choice",
                                        **extra)))
    return unique(items)


# ---------------------------------------------------------------- BabyVision, VLMs-are-Blind

LAYOUT_BABYVISION = ("UnipatAI/BabyVision train parquet (the only split; card revision 849cbee; original file names "
                     "UNCERTAIN, any parquet/jsonl under the folder is read): columns taskId, question, image, type, "
                     "ansType ('choice' | 'blank'), options (list, choice items), choiceAns (0-based index), "
                     "blankAns (blank items); subtype if present")


@converter("babyvision", LAYOUT_BABYVISION)
def babyvision(path: Path) -> list[Question]:
    items = []
    for f, row in read_rows(path, ["taskId", "question", "image", "type", "ansType"], LAYOUT_BABYVISION):
        stem, kind = field(row, "question", f), row["ansType"]
        if kind == "choice":
            options, rule = options_of(row, "options", f), "choice"
            text, gold = with_options(stem, options), index_letter(row.get("choiceAns"), len(options), f, "choiceAns")
        elif kind == "blank":
            options, text, rule = [], stem.strip(), "exact"
            gold = str(field(row, "blankAns", f, (str, int, float))).strip()
        else:
            raise LayoutError(f"benchmark file {f}: column 'ansType' holds {kind!r:.40}; expected 'choice' or 'blank'")
        extra = {"subtype": row["subtype"]} if row.get("subtype") else {}
        items.append((f, "taskId", question("babyvision", qid_of(row, "taskId", f), text, gold,
                                            images=[image_ref(row["image"], f, "image")], options=options, rule=rule,
                                            task=field(row, "type", f), **extra)))
    return unique(items)


LAYOUT_VLMS_ARE_BLIND = ("XAI/vlmsareblind valid parquet (data/valid-*.parquet; main revision 8c9b35b, whose row "
                         "count differs from earlier revisions): columns task, image, prompt (the question with its "
                         "answer-format instruction), groundtruth; no id column (the row's position is the id)")
# The answer-format instructions of the benchmark's prompts (vision-llms-are-blind src/prompts.md):
# "Answer with a number in curly brackets, e.g., {3}.", "Put your answer in curly brackets, e.g.,
# {2}.", "Answer with only the number in numerical format.", "Answer with Yes/No." ...
BLIND_DIRECTIVES = [
    r"\s*(?:please\s+)?(?:answer|put your answer|reply)\b[^{}\n]*?(?:e\.g\.,?|for example,?)\s*\{[^{}]*\}\.?",
    r"\s*answer with only the numbers? in (?:numerical format|a pair\b[^.\n]*?e\.g\.,?\s*\(\s*\d+\s*,\s*\d+\s*\))\.?",
    r"\s*answer with yes\s*/\s*no\.?",
]
# The grid prompt puts its directive inside the sentence: "Count the number of rows and columns and
# answer with numbers in curly brackets. For example, rows={5} columns={6}".
_BLIND_GRID = re.compile(r"\s*and answer with numbers in curly brackets\.?\s*for example,?\s*rows=\{\d+\}\s*"
                         r"columns=\{\d+\}\.?", re.I)


@converter("vlms_are_blind", LAYOUT_VLMS_ARE_BLIND)
def vlms_are_blind(path: Path) -> list[Question]:
    items = []
    for i, (f, row) in enumerate(read_rows(path, ["task", "image", "prompt", "groundtruth"], LAYOUT_VLMS_ARE_BLIND)):
        text = strip_directives(_BLIND_GRID.sub(".", field(row, "prompt", f)), BLIND_DIRECTIVES)
        if not text:
            raise LayoutError(f"benchmark file {f}: column 'prompt' holds {row['prompt']!r:.80}: nothing is left "
                              "once its answer-format instruction is removed; expected a question")
        # The gold is sometimes written as the prompt asks for it, "{3}": the braces are not the answer.
        gold = re.sub(r"^\{(.*)\}$", r"\1", str(field(row, "groundtruth", f, (str, int))).strip())
        items.append((f, "task", question("vlms_are_blind", str(i), text, gold,
                                          images=[image_ref(row["image"], f, "image")], rule="exact",
                                          task=field(row, "task", f))))
    return unique(items)
