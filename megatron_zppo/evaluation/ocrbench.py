"""OCRBench v2's per-task metrics, and how its per-task scores become the EN and ZH numbers.

`score(response, q)` grades one answer in [0, 1] by the item's task type (`q.metadata["task"]`,
the release's `type`, e.g. "text grounding en"), following the idea of the official evaluator
(Yuliang-Liu/MultimodalOCR, OCRBench_v2/eval_scripts: eval.py and the metric files it imports,
read, not copied) family by family:

- VQA types: each gold answer of fewer than 5 words (Chinese: fewer than 4 comma-separated parts,
  spaces removed) must be contained in the prediction, case ignored unless the item's `eval` is
  "case sensitive"; a longer gold scores its ANLS (core.scores.anls, tau 0.5; case ignored there);
  `eval` "multiple choice": the prediction's letters must be the gold letter.
- text counting: "regression" items score 1 - |n - gold| / gold for the prediction's first integer
  n (0 outside (0, 2 gold) or at 0.5 or less); other items: the gold contained in the prediction.
- formula recognition: the gold contained in the prediction, spaces removed (ZH: \\text{} unwrapped).
- text grounding: the IoU (the value itself, no threshold) of the prediction's last [x1,y1,x2,y2]
  (integers in 0..1000) with the gold box; VQA with position: half the VQA score of its "answer",
  half the IoU of its "bbox".
- text spotting: greedy one-to-one matching of predicted [x1,y1,x2,y2,text] boxes to the gold boxes
  at IoU > 0.5, a match correct when the texts agree (case and surrounding punctuation ignored);
  the score is the F1 (hmean) of precision and recall over correct matches. DEPARTS from the
  official (which runs the ICDAR E2E script) only in leaving out its don't-care rules beyond
  dropping "###" golds.
- key information extraction / mapping: per key of the union of predicted and gold keys, 1 when
  both give the same value (case and spaces ignored; a gold key with several accepted values
  takes its best), else 0; the mean over keys. The prediction is read as JSON, else a Python
  literal, else `key: value` pairs; nothing readable scores 0.
- handwritten answer extraction (ZH): short answers (choice letters) must appear, their characters
  joined by any of the official separators; "简答" (essay) items score like full-page OCR.
- table parsing (EN, ZH) and chart parsing: TEDS with apted and lxml (evaluation/teds.py), as the
  official. An HTML answer ("table parsing cn", or an EN question naming HTML) is cut from its
  first "<body"/"<table" and wrapped, and one with neither scores 0; for an EN question naming
  markdown both markdown tables become HTML tables; a chart's parsed dict and the gold's become
  two-column (key, value) tables, as the official's dict_to_html. None uses structure-only TEDS.

DEPARTURES, said here because they change the numbers:
- full-page OCR, fine-grained text recognition, text translation and essay answers score the
  normalised edit-distance similarity 1 - d / max(len) (rapidfuzz) only; the official averages it
  with BLEU, METEOR and a token-set F-measure (nltk and jieba, not installed here).
- document parsing scores the normalised edit-distance similarity of the raw texts; the official
  uses a tree edit distance (zss, not installed) over a tree of the markdown headings, not TEDS.
- items the official marks "ignore" (a translation with an empty gold) are scored, not dropped.

The prediction is the response's final answer (`rules.final_text`: its last \\boxed{}, else what
follows </think>). `buckets` and `bucket_mean` give the official report: each type belongs to one
bucket (8 for EN, 5 for ZH); a language's score is the mean over its non-empty buckets of the
bucket means (OCRBench_v2/eval_scripts/get_score.py).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping, Sequence
from itertools import product

from rapidfuzz.distance import Levenshtein

from megatron_zppo.core.records import Question
from megatron_zppo.core.scores import anls
from megatron_zppo.evaluation import teds
from megatron_zppo.evaluation.rules import final_text

METRIC_NAME = "ocrbench_v2"

# ---------------------------------------------------------------- text matching


def _flat(s: str) -> str:
    return str(s).strip().replace("\n", " ")


def vqa(pred: str, golds: Sequence[str], case_sensitive: bool = False) -> float:
    """Short golds (< 5 words) contained in the prediction; long ones by ANLS."""
    p = _flat(pred) if case_sensitive else _flat(pred).lower()
    best = 0.0
    for gold in golds:
        g = _flat(gold) if case_sensitive else _flat(gold).lower()
        if not g:
            continue
        best = max(best, float(g in p) if len(g.split()) < 5 else anls(pred, [gold]))
    return best


def vqa_zh(pred: str, golds: Sequence[str]) -> float:
    """Chinese VQA: spaces removed; golds of fewer than 4 comma parts contained, else ANLS."""
    p = _flat(pred).lower().replace(" ", "")
    best = 0.0
    for gold in golds:
        g = _flat(gold).lower().replace(" ", "")
        if not g:
            continue
        best = max(best, float(g in p) if len(g.split(",")) < 4 else anls(p, [g]))
    return best


def choice(pred: str, gold: str) -> float:
    """The prediction's letters are the gold letter ("B", "(B)"), or it opens with it ("B. text")."""
    letters = "".join(c for c in pred if c.isalpha())
    lead = re.match(r"\s*\(?([A-Za-z])\)?(?:[.:)]|\s|$)", pred)
    return float(letters == gold.strip() or bool(lead) and lead.group(1).upper() == gold.strip().upper())


def counting(pred: str, golds: Sequence[str], method: str) -> float:
    if method != "regression":
        return float(any(_flat(g).lower() in _flat(pred).lower() for g in golds if _flat(g)))
    m = re.search(r"\d+", pred)
    best = 0.0
    for gold in golds:
        try:
            want = int(_flat(gold))
        except ValueError:
            continue
        n = int(m.group()) if m else 0
        if 0 < n < 2 * want:
            closeness = 1 - abs(n - want) / want
            best = max(best, closeness if closeness > 0.5 else 0.0)
    return best


def formula(pred: str, golds: Sequence[str], unwrap_text: bool = False) -> float:
    def squash(s: str) -> str:
        s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s) if unwrap_text else s
        return re.sub(r"\s+", "", s)
    return float(any(squash(g) in squash(pred) for g in golds if squash(g)))


def similarity(pred: str, gold: str) -> float:
    """1 - normalised Levenshtein distance of the raw texts; an empty prediction scores 0."""
    return Levenshtein.normalized_similarity(pred, gold) if pred and gold else 0.0


def handwritten(pred: str, golds: Sequence[str], question: str) -> float:
    if "简答" in question:
        return similarity(pred, golds[0])
    gold = golds[0]
    joins = ["", ".", ". ", ",", ", ", "、", ";", "; ", " ", "和"] if len(gold) > 1 else [""]
    return float(any(sep.join(gold) in pred for sep in joins))

# ---------------------------------------------------------------- boxes


def iou(a: Sequence, b: Sequence) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0 when either is unreadable)."""
    try:
        a, b = [int(float(v)) for v in a][:4], [int(float(v)) for v in b][:4]
    except (TypeError, ValueError):
        return 0.0
    if len(a) < 4 or len(b) < 4:
        return 0.0
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


_BOX = re.compile(r"[(\[]\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*[)\]]")


def last_box(text: str) -> list[int] | None:
    boxes = [[int(v) for v in m.groups()] for m in _BOX.finditer(text)]
    boxes = [b for b in boxes if all(0 <= v <= 1000 for v in b)]
    return boxes[-1] if boxes else None


def grounding(pred: str, q: Question) -> float:
    box = last_box(pred)
    golds = q.metadata.get("answers") or []
    gold = golds if len(golds) == 4 else q.metadata.get("bbox")  # the release keeps the box in answers
    return iou(box, gold) if box and gold else 0.0


def vqa_with_position(pred: str, q: Question) -> float:
    d = read_dict(pred)
    content = vqa(str(d["answer"]), _golds(q)) if "answer" in d else 0.0
    box = d.get("bbox")
    if isinstance(box, str):
        box = last_box(box)
    place = iou(box, q.metadata["bbox"]) if box and q.metadata.get("bbox") else 0.0
    return 0.5 * content + 0.5 * place


def _spotted(pred: str) -> list[tuple[list[int], str]]:
    try:
        items = ast.literal_eval(pred)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        items = [m.split(",", 4) for m in re.findall(r"[\[(]\s*([^\[\]()]*?)\s*[\])]", pred)]
    out = []
    for item in items if isinstance(items, (list, tuple)) else []:
        if not isinstance(item, (list, tuple)) or len(item) < 5:
            continue
        try:
            box = [int(str(v).strip()) for v in item[:4]]
        except ValueError:
            continue
        if all(0 <= v <= 1000 for v in box) and box[0] < box[2] and box[1] < box[3]:
            out.append((box, str(item[4]).strip().strip("'\"")))
    return out


_PUNCT = "!?.:,*\"()·[]/'"


def spotting(pred: str, q: Question) -> float:
    polys = q.metadata.get("bbox_list") or q.metadata.get("bbox") or []
    gold = [([min(p[0::2]), min(p[1::2]), max(p[0::2]), max(p[1::2])], str(t))
            for p, t in zip(polys, q.metadata.get("content") or []) if len(p) >= 4 and t != "###"]
    det = _spotted(pred)
    if not gold or not det:
        return 0.0
    used, correct = set(), 0
    for gbox, gtext in gold:
        for j, (dbox, dtext) in enumerate(det):
            if j not in used and iou(gbox, dbox) > 0.5:
                used.add(j)
                correct += gtext.upper().strip(_PUNCT) == dtext.upper().strip(_PUNCT)
                break
    precision, recall = correct / len(det), correct / len(gold)
    return 2 * precision * recall / (precision + recall) if correct else 0.0

# ---------------------------------------------------------------- structured answers


def read_dict(text: str, pairs: bool = True) -> dict:
    """A dict from the prediction: JSON, else a Python literal (code fences and text around the
    outermost braces ignored), else (`pairs`) `key: value` lines; {} when nothing can be read."""
    fenced = re.search(r"```(?:json|python)?\s*\n(.*?)\n?```", text, re.S | re.I)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    candidates = [body.strip()] + ([body[start:end + 1]] if 0 <= start < end else [])
    for cand in candidates:
        for parse in (json.loads, ast.literal_eval):
            try:
                data = parse(cand)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(data, dict):
                return data
    found = re.findall(r"[\"']?([\w ]+?)[\"']?\s*[:=]\s*[\"']?([^\n,\"'{}]+)", body) if pairs else []
    return {k.strip(): v.strip() for k, v in found if k.strip() and v.strip()}


def _kie_value(v) -> str:
    return str(v).lower().replace("\n", "").replace(" ", "")


def kie(pred: str, q: Question) -> float:
    """Mean over the union of keys of "same value" (a key's list of accepted values: any of them;
    this equals the official maximum over every combination of accepted values)."""
    gold = read_dict(_golds(q)[0])
    got = {str(k).strip(): v for k, v in read_dict(pred).items()}
    keys = set(got) | {str(k).strip() for k in gold}
    if not keys:
        return 0.0
    gold = {str(k).strip(): (v if isinstance(v, list) else [v]) for k, v in gold.items()}
    hits = sum(k in got and k in gold and _kie_value(got[k]) in {_kie_value(v) for v in gold[k]}
               for k in keys)
    return hits / len(keys)


def table(pred: str, q: Question, html_only: bool) -> float:
    """TEDS of the prediction's table and the gold's: HTML for "table parsing cn" and for questions
    naming HTML, markdown for those naming markdown (neither: as the gold is written)."""
    gold, ask = _golds(q)[0], q.text.lower()
    if not html_only and "html" not in ask and ("markdown" in ask or "<table" not in gold):
        return teds.teds(teds.markdown_html(pred), teds.markdown_html(gold))
    table_html = teds.html_table(pred)
    return teds.teds(table_html, teds.wrap(gold.replace("\n", ""))) if table_html else 0.0


def chart(pred: str, q: Question) -> float:
    """TEDS of the two dicts written as two-column tables (the official's dict_to_html)."""
    got, gold = read_dict(pred, pairs=False), read_dict(_golds(q)[0], pairs=False)
    return teds.teds(teds.dict_html(got), teds.dict_html(gold)) if got and gold else 0.0

# ---------------------------------------------------------------- dispatch


def _golds(q: Question) -> list[str]:
    return [str(a) for a in q.metadata.get("answers") or [q.answer]]


def _vqa_en(pred: str, q: Question) -> float:
    how = q.metadata.get("eval") or ""
    if how == "multiple choice":
        return choice(pred, _golds(q)[0])
    return vqa(pred, _golds(q), case_sensitive=how == "case sensitive")


def _vqa_cn(pred: str, q: Question) -> float:
    how = q.metadata.get("eval") or ""
    if how == "multiple choice":
        return choice(pred, _golds(q)[0])
    return vqa(pred, _golds(q), True) if how == "case sensitive" else vqa_zh(pred, _golds(q))


_Metric = Callable[[str, Question], float]
_EN_VQA = ("APP agent", "ASCII art classification", "math QA", "reasoning VQA", "science QA", "text recognition",
           "document classification", "cognition VQA", "diagram QA")
METRICS: dict[str, _Metric] = {
    **{f"{t} en": _vqa_en for t in _EN_VQA},
    "cognition VQA cn": _vqa_cn, "reasoning VQA cn": _vqa_cn,
    "handwritten answer extraction cn": lambda p, q: handwritten(p, _golds(q), q.text),
    "formula recognition en": lambda p, q: formula(p, _golds(q)),
    "formula recognition cn": lambda p, q: formula(p, _golds(q), unwrap_text=True),
    "text counting en": lambda p, q: counting(p, _golds(q), q.metadata.get("eval") or ""),
    "table parsing en": lambda p, q: table(p, q, html_only=False),
    "table parsing cn": lambda p, q: table(p, q, html_only=True),
    "chart parsing en": chart,
    **{f"{t} {lang}": (lambda p, q: similarity(p, _golds(q)[0]))
       for t, lang in product(("document parsing", "full-page OCR"), ("en", "cn"))},
    "fine-grained text recognition en": lambda p, q: similarity(p, _golds(q)[0]),
    "text translation cn": lambda p, q: similarity(p, _golds(q)[0]),
    "key information extraction en": kie, "key information mapping en": kie, "key information extraction cn": kie,
    "VQA with position en": vqa_with_position,
    "text grounding en": grounding,
    "text spotting en": spotting,
}


def score(response: str, q: Question) -> float:
    """The item's OCRBench v2 score in [0, 1] for the response's final answer."""
    task = q.metadata.get("task")
    if task not in METRICS:
        raise ValueError(f"OCRBench v2 question {q.id}: task type {task!r} unknown; expected one of {sorted(METRICS)}")
    return float(min(1.0, max(0.0, METRICS[task](final_text(response), q))))

# ---------------------------------------------------------------- the report


_BUCKETS = {
    "en": {"text recognition": ("text recognition", "fine-grained text recognition", "full-page OCR"),
           "text detection": ("text grounding", "VQA with position"),
           "text spotting": ("text spotting",),
           "relation extraction": ("key information extraction", "key information mapping"),
           "element parsing": ("document parsing", "chart parsing", "table parsing", "formula recognition"),
           "mathematical calculation": ("math QA", "text counting"),
           "visual text understanding": ("document classification", "cognition VQA", "diagram QA"),
           "knowledge reasoning": ("reasoning VQA", "science QA", "APP agent", "ASCII art classification")},
    "cn": {"text recognition": ("full-page OCR",),
           "relation extraction": ("key information extraction", "handwritten answer extraction"),
           "element parsing": ("document parsing", "table parsing", "formula recognition"),
           "visual text understanding": ("cognition VQA",),
           "knowledge reasoning": ("reasoning VQA", "text translation")},
}
_BUCKET_OF = {f"{t} {lang}": b for lang, bs in _BUCKETS.items() for b, ts in bs.items() for t in ts}


def buckets(task: str) -> str:
    """The official reporting bucket of a task type ("text detection" for "text grounding en")."""
    if task not in _BUCKET_OF:
        raise ValueError(f"OCRBench v2 task type {task!r} unknown; expected one of {sorted(_BUCKET_OF)}")
    return _BUCKET_OF[task]


def bucket_mean(scores_by_task: Mapping[str, Sequence[float]], lang: str) -> float:
    """The EN ("en") or ZH ("zh"/"cn") score: the mean over the language's non-empty buckets of
    each bucket's mean item score. Types of the other language are left out."""
    suffix = {"en": "en", "zh": "cn", "cn": "cn"}.get(lang)
    if suffix is None:
        raise ValueError(f"bucket_mean: language {lang!r} unknown; expected 'en' or 'zh'")
    pooled: dict[str, list[float]] = {}
    for task, scores in scores_by_task.items():
        if task.endswith(f" {suffix}"):
            pooled.setdefault(buckets(task), []).extend(scores)
    means = [sum(s) / len(s) for s in pooled.values() if s]
    if not means:
        raise ValueError(f"bucket_mean: no {lang} scores among {sorted(scores_by_task)}")
    return sum(means) / len(means)
