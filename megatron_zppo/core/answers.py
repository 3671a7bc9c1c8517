"""Final-answer extraction from responses: the last `\\boxed{...}` (or `\\fbox`), with nested braces."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# The answer rule, the same one Math-Verify's extraction (latex2sympy2_extended) applies: `\\boxed`
# or `\\fbox`, optional white space (newlines too), then a balanced `{...}`; with no brace, the
# next white-space-delimited token (`\\boxed 5`), trailing `.`, `,`, `;`, `:` dropped.
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_TOKEN = re.compile(r"[^\s${}]+")


@dataclass(frozen=True)
class Box:
    start: int
    end: int  # past the closing brace; the end of the text for a box that is never closed
    content: str | None  # None: never closed (a response cut at the length limit)


def boxes(text: str) -> list[Box]:
    """Every final-answer box in `text`, in order (boxes inside a box are part of its content)."""
    out, i = [], 0
    for m in _BOX.finditer(text):
        if m.start() < i:
            continue
        j = m.end()
        if j < len(text) and text[j] == "{":
            content = _balanced(text, j + 1)
            end = len(text) if content is None else j + len(content) + 2
            out.append(Box(m.start(), end, content))
            i = end if content is not None else j  # a later complete box still counts
        elif t := _TOKEN.match(text, j):
            out.append(Box(m.start(), t.end(), t.group(0).rstrip(".,;:")))
            i = t.end()
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last complete answer box in `text` (see `boxes`), or None if there is none.

    Braces nest (`\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`). A final `\\boxed{` that is never
    closed (a response cut at the length limit) does not count, so an earlier complete one wins.
    """
    done = [b.content for b in boxes(text) if b.content is not None]
    return done[-1] if done else None


def _balanced(text: str, i: int) -> str | None:
    depth = 1
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def wrong_answer_list(responses: Iterable[str]) -> list[str]:
    """Final answers of wrong responses for the NCQ sentence: de-duplicated, first-seen order.

    Responses without a boxed answer contribute nothing. Answers are compared after stripping
    surrounding whitespace, so `\\boxed{ 5}` and `\\boxed{5}` are one answer.
    """
    seen: dict[str, None] = {}
    for r in responses:
        a = last_boxed(r)
        if a is not None and a.strip():
            seen.setdefault(a.strip(), None)
    return list(seen)
