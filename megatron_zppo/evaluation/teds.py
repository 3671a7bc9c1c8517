"""TEDS (Tree-Edit-Distance-based Similarity, PubTabNet's table metric) as OCRBench v2 scores it.

Following the official evaluator (Yuliang-Liu/MultimodalOCR, OCRBench_v2/eval_scripts:
TEDS_metric.py and eval.py, read, not copied), with the `apted` and `lxml` libraries:

- `html_table` takes an answer's HTML from its first "<body" (else "<table") on, newlines removed,
  and closes or wraps it in <table>, <body> and <html> where those are missing; an answer with
  neither scores 0.
- `teds` parses both documents with lxml (comments dropped) and compares the <table> that is a
  child of <body> (none in either: 0). The tree holds every element below the table with its tag;
  a <td> is a leaf carrying its colspan, rowspan (default 1) and its content as tokens: the
  characters of its text, and "<b>", ..., "</b>" around the content of an element inside it.
  Other cells (<th>) are compared by tag only, as in the official. APTED's costs: insert and
  delete 1; rename 1 when tag, colspan or rowspan differ, else for two <td> the normalised
  Levenshtein distance of their tokens (rapidfuzz), else 0. TEDS = 1 - distance / n, n the larger
  count of elements below the two tables (the official count: <table> left out, elements inside
  cells included), at least 0. The official never uses structure-only TEDS for OCRBench v2.
- `markdown_html` and `dict_html` build the HTML tables the official builds from a markdown table
  (table parsing questions asking for markdown) and from a chart's dict (chart parsing: a row per
  key, the key and its value with the value's characters joined by spaces, as the official's
  dict_to_html does). Two small differences: cell text is HTML-escaped here (the official pastes
  it raw), and markdown rows are the lines holding "|" other than the |---| separator (the official
  takes the first line and every line after the second).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from apted import APTED, Config
from lxml import etree
from lxml import html as lxml_html
from rapidfuzz.distance import Levenshtein


@dataclass
class Node:
    tag: str
    colspan: int | None = None
    rowspan: int | None = None
    tokens: list[str] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)


class _Costs(Config):
    """Insert and delete cost 1 (apted's defaults); rename compares tag, spans and cell tokens."""

    def rename(self, node1: Node, node2: Node) -> float:
        if (node1.tag, node1.colspan, node1.rowspan) != (node2.tag, node2.colspan, node2.rowspan):
            return 1.0
        if node1.tag == "td" and (node1.tokens or node2.tokens):
            return Levenshtein.normalized_distance(node1.tokens, node2.tokens)
        return 0.0


def _cell_tokens(el) -> list[str]:
    """The characters of an element's text, each child element's tokens between "<tag>" and
    "</tag>", and the characters of each child's tail."""
    out = list(el.text or "")
    for child in el:
        out += [f"<{child.tag}>", *_cell_tokens(child), f"</{child.tag}>", *(child.tail or "")]
    return out


def _tree(el) -> Node:
    if el.tag == "td":
        return Node("td", int(el.get("colspan", "1")), int(el.get("rowspan", "1")), _cell_tokens(el))
    return Node(str(el.tag), children=[_tree(child) for child in el])


def html_table(answer: str) -> str | None:
    """The answer's table as a whole HTML document (the official's cut and wrap); None without
    "<body" or "<table"."""
    text = answer.replace("\n", "")
    start = text.find("<body") if "<body" in text else text.find("<table")
    return None if start < 0 else wrap(text[start:])


def wrap(text: str) -> str:
    """Add whichever of <table>, </table>, <body> and <html> the (newline-free) text lacks."""
    opened, closed = "<table" in text, "</table>" in text
    if not (opened and closed):
        text = ("" if opened else "<table>") + text + ("" if closed else "</table>")
    text = text if "<body>" in text else f"<body>{text}</body>"
    return text if "<html>" in text else f"<html>{text}</html>"


def rows_html(rows: Iterable[Sequence[str]]) -> str:
    cells = ("".join(f"<td>{html.escape(str(c), quote=False)}</td>" for c in row) for row in rows)
    return "<html><body><table>" + "".join(f"<tr>{r}</tr>" for r in cells) + "</table></body></html>"


def markdown_html(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "|" in ln and not re.fullmatch(r"[\s|:\-]+", ln)]
    return rows_html([c.strip() for c in ln.removeprefix("|").removesuffix("|").split("|")] for ln in lines)


def dict_html(d: Mapping) -> str:
    return rows_html([str(k), " ".join(str(v))] for k, v in d.items())


def teds(pred_html: str, gold_html: str) -> float:
    """TEDS in [0, 1] of two HTML documents' tables; 0 when either has none or cannot be read."""
    if not pred_html or not gold_html:
        return 0.0
    parser = lxml_html.HTMLParser(remove_comments=True)
    try:
        tables = [lxml_html.fromstring(s, parser=parser).xpath("body/table") for s in (pred_html, gold_html)]
        if not all(tables):
            return 0.0
        pred, gold = tables[0][0], tables[1][0]
        n = max(len(pred.xpath(".//*")), len(gold.xpath(".//*")))
        distance = APTED(_tree(pred), _tree(gold), _Costs()).compute_edit_distance() if n else 0.0
    except (ValueError, etree.LxmlError):  # an unreadable document or a span that is not a number
        return 0.0
    return max(0.0, 1.0 - distance / n) if n else 0.0
