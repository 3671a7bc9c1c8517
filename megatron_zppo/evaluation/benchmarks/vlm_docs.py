"""Converters of the chart, document and OCR benchmarks: CharXiv (reasoning and descriptive),
MM-Vet, InfographicVQA and OCRBench v2 (English and Chinese).

CharXiv's prompts follow its official code's structure (princeton-nlp/CharXiv, src/constants.py and
descriptive_utils.py: read, not copied) in this project's words: a reasoning question gets a short
guidance line for its answer category, a descriptive question is generated from its template id with
the subplot it is about, and every item carries the rubric its category's judge applies. None of
these benchmarks puts options in its questions or asks for an answer format that the project's
closer would contradict, so no directive is removed.
"""

from __future__ import annotations

from pathlib import Path

from megatron_zppo.core.records import Question
from megatron_zppo.evaluation.benchmarks.layout import LayoutError, field, image_ref, question, read_rows
from megatron_zppo.evaluation.benchmarks.registry import converter
from megatron_zppo.evaluation.ocrbench import buckets

LAYOUT_CHARXIV = ("princeton-nlp/CharXiv validation file val.parquet (card revision dd7819d; the test file's "
                  "answers are withheld): one row per chart, columns image, figure_path (the figure id is its "
                  "stem), reasoning_q, reasoning_a, reasoning_a_type (1-4; the official inst_category), "
                  "descriptive_q1..4 (template ids 1-19), descriptive_a1..4, subplot_loc (str or null), "
                  "subplot_row, subplot_col")
LAYOUT_MMVET = ("lmms-lab/MMVet test parquet (data/test-*.parquet; card revision b310d12, data 6f71fda): columns "
                "question_id, image, question, answer (<AND>/<OR> mark parts and alternatives), capability "
                "(comma-separated)")
LAYOUT_INFOVQA = ("lmms-lab/DocVQA config InfographicVQA, validation parquet (InfographicVQA/validation-*.parquet; "
                  "card revision 539088e): columns questionId, question, answers (every accepted answer), image")
LAYOUT_OCRBENCH = ("ling99/OCRBench_v2 test parquet (data/test-*.parquet; card main, refs/pr/2 4408d90): columns id, "
                   "question, type (suffix ' en' or ' cn'), answers, image, eval ('None' when absent), bbox, "
                   "bbox_list, content, dataset_name")

# ---------------------------------------------------------------- CharXiv

REASONING_CATEGORIES = {1: "text-in-chart", 2: "text-in-general", 3: "number-in-chart", 4: "number-in-general"}
_REASONING_GUIDE = {
    1: "Answer with text that is written in the chart and relevant to the question; separate several terms with "
       "commas, and give subplots and labels by their full names unless the question asks for something else "
       "(such as a letter).",
    2: "If the question lists options, answer with one of them; follow any other instruction the question gives; "
       "otherwise a short phrase is enough.",
    3: "Answer with a number that is written in the chart and relevant to the question, even if it is only "
       "approximate; the number may be part of some text.",
}
_SAME_NUMBER = ("Score 1 only when the extracted number has exactly the value of the reference; another notation "
                "of that value is fine (0.01 and 10^-2, 1500 and 1.5e3); any other value, however close, scores 0.")
REASONING_RUBRICS = {
    1: "The reference is text taken from the chart (a label, a legend entry, a subplot name). Score 1 only when the "
       "extracted answer names the same term(s): notation may differ (alpha and α, LaTeX and plain text) and "
       "several terms may come in any order, but any differing term (ACC+ for ACC, P-101 for P=101) scores 0.",
    2: "If the question lists options, score 1 only when the extracted answer is the same option as the reference. "
       "Otherwise score 1 when it means the same as the reference in other words ('rises then falls' for "
       "'increasing then decreasing'), and 0 when its meaning differs ('stays flat', 'diverge' for 'converge').",
    3: "The reference is a number read from the chart. " + _SAME_NUMBER,
    4: "The reference is a number derived from the chart, given at the precision the question asks for. "
       + _SAME_NUMBER,
}

# Descriptive templates, 1-19: the question after the subplot prefix, with what counts as an answer.
_NA = ' If there is none, answer "Not Applicable".'
_X_TICK = ("Give the tick value as written (an x-axis shared by several subplots counts; with x-axes at the top and "
           "bottom, use the bottom one), without units or scale factors written elsewhere, such as in the axis label "
           "or a corner of the plot.")
_Y_TICK = ("Give the tick value as written (a y-axis shared by several subplots counts; with y-axes on the left and "
           "right, use the left one), without units or scale factors written elsewhere, such as in the axis label "
           "or a corner of the plot.")
_STEP = ("what is the difference between consecutive numerical tick values on the {a}-axis? Ticks of an axis shared "
         "by several subplots count. If the {a}-axis has no written tick values, its ticks are not numbers, or the "
         "step between them is not constant, answer \"Not Applicable\".")
_LEGEND = "Count only legend labels that belong to this plot, even when the legend sits outside it."
_COLORBAR = "Leave out any percent sign. If there is no colorbar relevant to this plot, answer \"Not Applicable\"."
DESCRIPTIVE_TEMPLATES = {
    1: "what is its title? Give the title exactly as it is written on the plot. If there is no written title, or "
       "only a letter, answer \"Not Applicable\".",
    2: "what is the label of the x-axis? Give it as written, also when the x-axis is shared by several subplots; "
       "with x-axes at the top and bottom, use the bottom one." + _NA,
    3: "what is the label of the y-axis? Give it as written, also when the y-axis is shared by several subplots; "
       "with y-axes on the left and right, use the left one." + _NA,
    4: "what is the leftmost labeled tick on the x-axis? " + _X_TICK,
    5: "what is the rightmost labeled tick on the x-axis? " + _X_TICK,
    6: "what is the labeled tick placed lowest on the y-axis? " + _Y_TICK,
    7: "what is the labeled tick placed highest on the y-axis? " + _Y_TICK,
    8: _STEP.format(a="x"),
    9: _STEP.format(a="y"),
    10: "how many lines does it contain? Do not count grid lines, tick marks or horizontal and vertical reference "
        "lines. If it is not a line plot, answer \"Not Applicable\".",
    11: "do any of its lines cross each other? Answer \"Yes\" or \"No\", ignoring grid lines, tick marks and "
        "horizontal and vertical reference lines. If it is not a line plot, answer \"Not Applicable\".",
    12: "how many distinct labels does its legend have? " + _LEGEND + _NA,
    13: "what are the labels of its legend? List them from top to bottom, then from left to right, separated by "
        "commas. " + _LEGEND + _NA,
    14: "what is the difference between the largest and the smallest tick label of its colorbar (the continuous "
        "legend)? " + _COLORBAR,
    15: "what is the largest tick label of its colorbar (the continuous legend)? " + _COLORBAR,
    16: "how does the data change overall from left to right? Answer in a few words, such as \"increases\" or "
        "\"increases then stabilizes\".",
    17: "how many labeled ticks are there in total over all its axes? Count every tick that has a written label, "
        "including those of axes shared by several subplots.",
    18: "How are the subplots laid out? Answer as \"n by m\", n rows by m columns; a plot without subplots is "
        "\"1 by 1\".",
    19: "How many subplots are there? A plot without subplots counts as 1.",
}
_NOT_APPLICABLE = " When the reference is \"Not Applicable\", only an answer saying so scores 1."
DESCRIPTIVE_GROUPS = {1: "title", **dict.fromkeys(range(2, 8), "ocr"),
                      **dict.fromkeys((8, 9, 10, 12, 14, 15, 17, 19), "quant"), 11: "bool", 13: "enum", 16: "trend",
                      18: "layout"}
DESCRIPTIVE_RUBRICS = {
    "title": "The reference is the plot's title. Score 1 when the answer gives the same title, allowing other "
             "notation or grammar (α and alpha, LaTeX and plain text, a dropped '(a)' prefix); any different word "
             "scores 0." + _NOT_APPLICABLE,
    "ocr": "The reference is text or a number written on the plot (an axis label or tick). Score 1 when the answer "
           "names the same term, notation aside (α and alpha), or, for a number, has exactly the same value (1.0 "
           "and 1.00); anything else scores 0." + _NOT_APPLICABLE,
    "quant": "The reference is a number (a count, a difference or a tick value). Score 1 only when the answer's "
             "number has exactly the same value; any other value scores 0." + _NOT_APPLICABLE,
    "bool": "The reference is yes or no. Score 1 only when the answer takes the same side." + _NOT_APPLICABLE,
    "enum": "The reference lists legend labels in order. Score 1 only when the answer gives the same labels "
            "(notation aside, e.g. \\alpha and α) in the same order, none missing and none added." + _NOT_APPLICABLE,
    "trend": "The reference describes the data's overall trend. Score 1 when the answer describes the same trend "
             "in any words ('goes up, then levels off' for 'increases then stabilizes'); a different or partial "
             "trend ('decreases' for 'decreases then increases') scores 0.",
    "layout": "The reference gives the subplot grid as 'n by m' (rows by columns). Score 1 only when the answer "
              "gives the same numbers of rows and columns in that order ('two rows and three columns' is '2 by 3'; "
              "'3 by 2' is not).",
}


def _charxiv_rows(path: Path, columns: list[str]) -> list[tuple[Path, dict, str]]:
    """Rows with their figure ids; a folder is read for its validation file only (the test file has no answers)."""
    rows = read_rows(path, ["image", "figure_path", *columns], LAYOUT_CHARXIV, patterns=("val*.parquet",))
    out, seen = [], set()
    for f, row in rows:
        fig = Path(field(row, "figure_path", f)).stem
        if fig in seen:
            raise LayoutError(f"benchmark file {f}: column 'figure_path' repeats figure {fig!r}; expected one row "
                              f"per chart ({LAYOUT_CHARXIV})")
        seen.add(fig)
        out.append((f, row, fig))
    return out


def _number_guide(answer: str) -> str:
    """Category 4: the precision the reference is given at (what the official prompt states)."""
    decimals = answer.strip().partition(".")[2]
    return f"Give a number with {len(decimals)} decimal places." if decimals else "Give an exact integer."


@converter("charxiv_reasoning", LAYOUT_CHARXIV)
def charxiv_reasoning(path: Path) -> list[Question]:
    out = []
    for f, row, fig in _charxiv_rows(path, ["reasoning_q", "reasoning_a", "reasoning_a_type"]):
        category = field(row, "reasoning_a_type", f, (int,))
        if category not in REASONING_CATEGORIES:
            raise LayoutError(f"benchmark file {f}: column 'reasoning_a_type' holds {category!r}; expected 1-4")
        answer = field(row, "reasoning_a", f).strip()
        guide = _number_guide(answer) if category == 4 else _REASONING_GUIDE[category]
        text = f"{field(row, 'reasoning_q', f).strip()}\n{guide}"
        out.append(question("charxiv_reasoning", fig, text, answer, images=[image_ref(row["image"], f, "image")],
                            task=REASONING_CATEGORIES[category], rubric=REASONING_RUBRICS[category]))
    return out


def _subplot_prefix(row: dict, f: Path) -> str:
    """Which plot a descriptive question is about: a grid position (row 0: the only plot), or the
    release's own words where the subplots form no grid."""
    loc = row.get("subplot_loc")
    if isinstance(loc, str) and loc.strip():
        return f"For {loc.strip()}, "
    r, c = loc if isinstance(loc, (list, tuple)) and len(loc) == 2 else (row.get("subplot_row"), row.get("subplot_col"))
    # a column with nulls may come back as floats (1.0)
    r, c = (int(v) if isinstance(v, float) and v.is_integer() else v for v in (r, c))
    if not isinstance(r, int) or not isinstance(c, int):
        raise LayoutError(f"benchmark file {f}: columns 'subplot_loc'/'subplot_row'/'subplot_col' hold {loc!r}/"
                          f"{r!r}/{c!r}; expected a description or a row and column number")
    return "For the current plot, " if r == 0 else f"For the subplot at row {r} and column {c}, "


@converter("charxiv_descriptive", LAYOUT_CHARXIV)
def charxiv_descriptive(path: Path) -> list[Question]:
    qcols = [f"descriptive_{x}{k}" for k in range(1, 5) for x in "qa"]
    out = []
    for f, row, fig in _charxiv_rows(path, qcols):
        image = image_ref(row["image"], f, "image")
        for k in range(1, 5):
            template = row[f"descriptive_q{k}"]
            if template is None:  # a chart may have fewer than four questions
                continue
            if not isinstance(template, int) or template not in DESCRIPTIVE_TEMPLATES:
                raise LayoutError(f"benchmark file {f}: column 'descriptive_q{k}' holds {template!r}; expected a "
                                  f"template id 1-19")
            lead = "" if template in (18, 19) else _subplot_prefix(row, f)
            group = DESCRIPTIVE_GROUPS[template]
            out.append(question("charxiv_descriptive", f"{fig}_{k - 1}", lead + DESCRIPTIVE_TEMPLATES[template],
                                field(row, f"descriptive_a{k}", f).strip(), images=[image], task=group,
                                rubric=DESCRIPTIVE_RUBRICS[group], template=template))
    return out

# ---------------------------------------------------------------- MM-Vet, InfoVQA


@converter("mmvet", LAYOUT_MMVET)
def mmvet(path: Path) -> list[Question]:
    out = []
    for f, row in read_rows(path, ["question_id", "image", "question", "answer", "capability"], LAYOUT_MMVET,
                            patterns=("*.parquet",)):
        qid = str(field(row, "question_id", f, (str, int)))
        # The official judge reads the gold with spaces around its <AND>/<OR> marks.
        gold = " ".join(field(row, "answer", f).replace("<AND>", " <AND> ").replace("<OR>", " <OR> ").split())
        capability = field(row, "capability", f).strip()
        out.append(question("mmvet", qid, field(row, "question", f).strip(), gold,
                            images=[image_ref(row["image"], f, "image")], task=capability,
                            capabilities=[c.strip() for c in capability.split(",") if c.strip()]))
    return out


def _infovqa_files(path: Path) -> Path:
    """The InfographicVQA config's folder when pointed at the whole lmms-lab/DocVQA download."""
    return path / "InfographicVQA" if path.is_dir() and (path / "InfographicVQA").is_dir() else path


@converter("infovqa", LAYOUT_INFOVQA)
def infovqa(path: Path) -> list[Question]:
    out = []
    for f, row in read_rows(_infovqa_files(path), ["questionId", "question", "answers", "image"], LAYOUT_INFOVQA,
                            patterns=("validation*.parquet",)):
        answers = [str(a).strip() for a in field(row, "answers", f, (list,))]
        if not answers or not all(answers):
            raise LayoutError(f"benchmark file {f}: column 'answers' holds {answers!r}; expected non-empty answers")
        out.append(question("infovqa", str(field(row, "questionId", f, (str, int))), field(row, "question", f).strip(),
                            answers[0], images=[image_ref(row["image"], f, "image")], answers=answers))
    return out

# ---------------------------------------------------------------- OCRBench v2


def _ocrbench(path: Path, suffix: str, name: str) -> list[Question]:
    """One language's items: the release is one file, the language is the type's suffix."""
    rows = read_rows(path, ["id", "question", "type", "answers", "image", "eval", "bbox", "content"],
                     LAYOUT_OCRBENCH, patterns=("*.parquet",))
    out = []
    for f, row in rows:
        kind = field(row, "type", f).strip()
        if not kind.endswith((" en", " cn")):
            raise LayoutError(f"benchmark file {f}: column 'type' holds {kind!r}; expected a type ending ' en' or "
                              f"' cn'")
        if not kind.endswith(suffix):
            continue
        try:
            bucket = buckets(kind)  # the official reporting group: the score is the mean over them (parts_by)
        except ValueError as e:
            raise LayoutError(f"benchmark file {f}: column 'type': {e}") from None
        answers = [str(a) for a in field(row, "answers", f, (list,))]
        if not answers:
            raise LayoutError(f"benchmark file {f}: column 'answers' is empty for id {row['id']!r}; expected answers")
        how = row["eval"]
        out.append(question(name, str(field(row, "id", f, (int, str))), field(row, "question", f).strip(), answers[0],
                            images=[image_ref(row["image"], f, "image")], answers=answers, task=kind,
                            eval="" if how in (None, "None") else str(how), bbox=row["bbox"],
                            bbox_list=row.get("bbox_list"), content=row["content"],
                            dataset_name=row.get("dataset_name"), bucket=bucket))
    if not out:
        raise LayoutError(f"benchmark data {path}: no type ends {suffix!r}; expected {LAYOUT_OCRBENCH}")
    return out


@converter("ocrbench_v2_en", LAYOUT_OCRBENCH)
def ocrbench_v2_en(path: Path) -> list[Question]:
    return _ocrbench(path, " en", "ocrbench_v2_en")


@converter("ocrbench_v2_zh", LAYOUT_OCRBENCH)
def ocrbench_v2_zh(path: Path) -> list[Question]:
    return _ocrbench(path, " cn", "ocrbench_v2_zh")

