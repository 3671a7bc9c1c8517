"""Final-answer extraction from responses: the last `\\boxed{...}`, with nested braces."""

from __future__ import annotations

from collections.abc import Iterable

_BOXED = "\\boxed{"


def last_boxed(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}` in `text`, or None if there is none.

    Braces nest (`\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`). A final `\\boxed{` that is never
    closed (a response cut at the length limit) does not count, so an earlier complete one wins.
    """
    start = text.rfind(_BOXED)
    while start != -1:
        content = _balanced(text, start + len(_BOXED))
        if content is not None:
            return content
        start = text.rfind(_BOXED, 0, start)
    return None


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
