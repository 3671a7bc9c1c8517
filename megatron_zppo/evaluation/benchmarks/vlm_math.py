"""The mathematical vision-language benchmarks: MathVerse, MathVision, MathVista and DynaMath mix
multiple-choice and free-form items, so each item carries its own rule (metadata["rule"]).

Where a release puts the options inside the question text (MathVerse, DynaMath) the text is kept as
it is; the options are also read out of it for the rules and the judge when they can be (an
option's text then counts as naming it), else the gold letter alone decides.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from megatron_zppo.core.records import Question
from megatron_zppo.evaluation.benchmarks.layout import (LETTERS, LayoutError, field, image_ref, question, read_rows,
                                                         strip_directives, with_options)
from megatron_zppo.evaluation.benchmarks.registry import converter
from megatron_zppo.evaluation.benchmarks.vlm import gold_letter, has_image, options_of, qid_of, unique

# Options at line starts ("A:5 cm", "B. 7", "(C) 9"), MathVerse's form, or inline ("Choices: (A) yes
# (B) no"), DynaMath's.
_LINE_OPTION = re.compile(r"^[ \t]*(?:\(([A-Z])\)|([A-Z])[.:：])[ \t]*", re.M)
_INLINE_OPTION = re.compile(r"\(([A-Z])\)[ \t]*")


def _lettered_run(marks: list[tuple[str, int, int]]) -> list[tuple[int, int]]:
    """The last run of markers lettered A, B, C... in order, as (start, end) of each marker."""
    runs: list[list[tuple[int, int]]] = []
    for letter, start, end in marks:
        if letter == "A":
            runs.append([(start, end)])
        elif runs and letter == LETTERS[len(runs[-1])]:
            runs[-1].append((start, end))
    return runs[-1] if runs and len(runs[-1]) >= 2 else []


def inline_options(text: str) -> list[str]:
    """The options a question writes inside itself, in letter order; [] when there is no clear list."""
    for pattern in (_LINE_OPTION, _INLINE_OPTION):
        run = _lettered_run([(next(g for g in m.groups() if g), m.start(), m.end()) for m in pattern.finditer(text)])
        if run:
            ends = [start for start, _ in run[1:]] + [len(text)]
            # An option ends at the next marker; the last one at the end of its line.
            return [text[end:stop].split("\n")[0].strip() if k == len(run) - 1 else text[end:stop].strip()
                    for k, ((_, end), stop) in enumerate(zip(run, ends))]
    return []


def _choice(answer, text: str, f: Path, column: str) -> tuple[str, list[str]]:
    """The gold letter of a question holding its options, and the options read out of it (none if
    the gold letter is not among them: the reading is then not trusted)."""
    options = inline_options(text)
    if options and isinstance(answer, str) and answer.strip().strip("()").upper() in LETTERS[:len(options)]:
        return gold_letter(answer, len(options), f, column), options
    return gold_letter(answer, len(LETTERS), f, column), []


def _no_image_tags(text: str) -> str:
    """The text without "<image1>"-like placeholders (the image is given beside the text)."""
    return re.sub(r"[ \t]*<image\s*\d*>[ \t]*", " ", text).strip()


LAYOUT_MATHVERSE = ("CaraJ/MathVerse-lmmseval testmini parquet (testmini.parquet, config testmini; card revision "
                    "8479d5e): columns sample_index, problem_index, problem_version, question (the options inside it "
                    "for multi-choice; empty for 'Vision Only'), image, answer (a letter for multi-choice), "
                    "question_type ('multi-choice' | 'free-form'); metadata if present. query_wo and query_cot are "
                    "not read: they are the question with answer-format directives added")
MATHVERSE_DIRECTIVES = [r"(?:according to the question shown in the image, )?please (?:directly answer|first conduct "
                        r"reasoning)[^\n]*"]
# A 'Vision Only' item has no question text: the question is in the image (MathVerse's own prompt
# says "According to the question shown in the image, ..."); our words.
QUESTION_IN_IMAGE = "Answer the question shown in the image."


@converter("mathverse", LAYOUT_MATHVERSE)
def mathverse(path: Path) -> list[Question]:
    items = []
    columns = ["sample_index", "problem_index", "problem_version", "question", "image", "answer", "question_type"]
    for f, row in read_rows(path, columns, LAYOUT_MATHVERSE, patterns=("testmini.parquet",)):
        text = strip_directives(field(row, "question", f), MATHVERSE_DIRECTIVES) or QUESTION_IN_IMAGE
        kind, answer = row["question_type"], field(row, "answer", f)
        if kind == "multi-choice":
            (gold, options), rule = _choice(answer, text, f, "answer"), "choice"
        elif kind == "free-form":
            gold, options, rule = answer.strip(), [], "math"
        else:
            raise LayoutError(f"benchmark file {f}: column 'question_type' holds {kind!r:.40}; expected "
                              "'multi-choice' or 'free-form'")
        meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        extra = {"subject": meta["subject"]} if meta.get("subject") else {}
        images = [image_ref(row["image"], f, "image")] if has_image(row["image"]) else []
        items.append((f, "sample_index", question(
            "mathverse", qid_of(row, "sample_index", f), text, gold, images=images, options=options, rule=rule,
            task=field(row, "problem_version", f), problem_index=qid_of(row, "problem_index", f), **extra)))
    return unique(items)


LAYOUT_MATHVISION = ("MathLLMs/MathVision test parquet (data/test-*.parquet, the full 3,040-item split; card revision "
                     "0c681f3): columns id, question, options (list; empty for a free-form item), decoded_image, "
                     "answer (a letter when there are options); subject and level if present")


@converter("mathvision", LAYOUT_MATHVISION)
def mathvision(path: Path) -> list[Question]:
    items = []
    for f, row in read_rows(path, ["id", "question", "options", "decoded_image", "answer"], LAYOUT_MATHVISION,
                            patterns=("test-*.parquet",)):
        stem, answer = _no_image_tags(field(row, "question", f)), field(row, "answer", f)
        if row["options"] is not None and field(row, "options", f, (list,)):  # null or [] is a free-form item
            options = options_of(row, "options", f)
            text, gold, rule = with_options(stem, options), gold_letter(answer, len(options), f, "answer"), "choice"
        else:
            options, text, gold, rule = [], stem, answer.strip(), "math"
        extra = {k: row[k] for k in ("level",) if row.get(k) is not None}
        if row.get("subject"):
            extra["task"] = row["subject"]
        items.append((f, "id", question("mathvision", qid_of(row, "id", f), text, gold,
                                        images=[image_ref(row["decoded_image"], f, "decoded_image")], options=options,
                                        rule=rule, **extra)))
    return unique(items)


LAYOUT_MATHVISTA = ("AI4Math/MathVista testmini parquet (data/testmini-*.parquet; card revision e3889d48): columns "
                    "pid, question, decoded_image, choices (list, or null for free-form), answer (the right choice's "
                    "TEXT for multi_choice), question_type ('multi_choice' | 'free_form'), answer_type ('text' | "
                    "'integer' | 'float' | 'list'); precision, unit and metadata if present. The query column is "
                    "not read: it adds the official hint, an answer-format directive")


def _mathvista_gold(row: dict, f: Path) -> tuple[str, list[str], dict]:
    """Gold, options and rule metadata of a MathVista item."""
    answer, kind = str(field(row, "answer", f, (str, int, float))).strip(), row["question_type"]
    if kind == "multi_choice":
        options = options_of(row, "choices", f)
        texts = [o.strip() for o in options]
        if answer not in texts:
            raise LayoutError(f"benchmark file {f}: column 'answer' holds {answer!r:.60}, none of the choices "
                              f"{options!r:.120}; expected the right choice's text")
        return LETTERS[texts.index(answer)], options, {"rule": "choice"}
    if kind != "free_form":
        raise LayoutError(f"benchmark file {f}: column 'question_type' holds {kind!r:.40}; expected 'multi_choice' "
                          "or 'free_form'")
    answer_type = row["answer_type"]
    if answer_type in ("text", "list"):
        return answer, [], {"rule": "exact"}
    if answer_type not in ("integer", "float"):
        raise LayoutError(f"benchmark file {f}: column 'answer_type' holds {answer_type!r:.40}; expected 'text', "
                          "'integer', 'float' or 'list'")
    precision = row.get("precision")
    # A float answer is compared at the release's decimals; an integer (no precision) exactly.
    if isinstance(precision, (int, float)) and not math.isnan(precision):
        return answer, [], {"rule": "number", "precision": int(precision)}
    return answer, [], {"rule": "number"}


@converter("mathvista", LAYOUT_MATHVISTA)
def mathvista(path: Path) -> list[Question]:
    items = []
    columns = ["pid", "question", "decoded_image", "choices", "answer", "question_type", "answer_type"]
    for f, row in read_rows(path, columns, LAYOUT_MATHVISTA, patterns=("testmini-*.parquet",)):
        gold, options, meta = _mathvista_gold(row, f)
        stem = field(row, "question", f)
        text = with_options(stem, options) if options else stem.strip()
        if row.get("unit"):
            meta["unit"] = row["unit"]  # for the judge and the report; the official hint shows it to the model
        if isinstance(row.get("metadata"), dict) and row["metadata"].get("task"):
            meta["task"] = row["metadata"]["task"]
        items.append((f, "pid", question("mathvista", qid_of(row, "pid", f), text, gold,
                                         images=[image_ref(row["decoded_image"], f, "decoded_image")],
                                         options=options, answer_type=row["answer_type"], **meta)))
    return unique(items)


LAYOUT_DYNAMATH = ("DynaMath/DynaMath_Sample parquet, splits sample_variant1..10 as data/sample{k}-*.parquet (card "
                   "revision 115d18d, data 167c894); the variant k is read from the file name: columns id (the seed "
                   "question, shared by its 10 variants), question (options inside it for multiple choice), "
                   "decoded_image, ground_truth, answer_type ('multiple choice' | 'float' | 'free form'); subject "
                   "and knowledge_level if present")
_VARIANT = re.compile(r"sample(?:_variant)?(\d+)")
# VLMEvalKit accepts a float answer within 0.001 of the gold: three decimals.
DYNAMATH_FLOAT_PRECISION = 3


@converter("dynamath", LAYOUT_DYNAMATH)
def dynamath(path: Path) -> list[Question]:
    items = []
    columns = ["id", "question", "decoded_image", "ground_truth", "answer_type"]
    for f, row in read_rows(path, columns, LAYOUT_DYNAMATH, patterns=("sample*.parquet",)):
        found = _VARIANT.search(f.name)
        if not found:
            raise LayoutError(f"benchmark file {f}: its name gives no variant; expected data/sample{{k}}-*.parquet "
                              "(the split sample_variant{k})")
        variant, seed = int(found.group(1)), qid_of(row, "id", f)
        text, kind = field(row, "question", f).strip(), row["answer_type"]
        answer = str(field(row, "ground_truth", f, (str, int, float))).strip()
        if kind == "multiple choice":
            (gold, options), meta = _choice(answer, text, f, "ground_truth"), {"rule": "choice"}
        elif kind == "float":
            gold, options, meta = answer, [], {"rule": "number", "precision": DYNAMATH_FLOAT_PRECISION}
        elif kind == "free form":
            gold, options, meta = answer, [], {"rule": "exact"}
        else:
            raise LayoutError(f"benchmark file {f}: column 'answer_type' holds {kind!r:.40}; expected 'multiple "
                              "choice', 'float' or 'free form'")
        extra = {k: row[k] for k in ("knowledge_level",) if row.get(k)}
        if row.get("subject"):
            extra["task"] = row["subject"]
        # Worst-case accuracy counts a seed right only when all its variants are: both are kept.
        items.append((f, "id", question("dynamath", f"{seed}:v{variant}", text, gold,
                                        images=[image_ref(row["decoded_image"], f, "decoded_image")], options=options,
                                        seed=seed, variant=variant, **meta, **extra)))
    return unique(items)
