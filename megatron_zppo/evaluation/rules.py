"""What decides an evaluation grade before (or instead of) a judge.

A rule returns 1.0 (correct), 0.0 (wrong) or None: it cannot decide, and the benchmark's judge
does when its protocol has one (evaluation/protocols.py; without one, None scores 0). A rule only
says "wrong" where that is certain (a multiple-choice letter that is not the gold one); an answer
that does not match the reference may still mean the same, so exact and mathematical matching
decide "correct" only. A metric returns a score in [0, 1] and never defers.

These run in the grader pool's worker processes, like the training rewards, each under its time
limit (GraderPool(fractional=True)). The gold answer is `q.answer`; `q.metadata` may add
"options" (the choices' texts, in letter order) and "answers" (every accepted answer).
"""

from __future__ import annotations

import re
import string

from megatron_zppo.core.answers import last_boxed
from megatron_zppo.core.records import Question
from megatron_zppo.core.scores import anls as anls_score, normalize_text

_LETTER = re.compile(r"\s*\(?([A-Za-z])\)?(?:[.:)]\s*.*|\s*)", re.S)
_THINK_END = "</think>"


def final_text(response: str) -> str:
    """The response's final answer: its last box, else what follows the reasoning (`</think>`)."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    return response.rsplit(_THINK_END, 1)[-1].strip()


def gold_answers(q: Question) -> list[str]:
    return [str(a) for a in q.metadata.get("answers") or [q.answer]]


def choice(response: str, q: Question) -> float | None:
    """Multiple choice: a boxed letter decides (`B`, `(B)`, `B. text`), and so does a boxed text equal
    to one option's; no box, or a box naming no option, is for the judge."""
    given = last_boxed(response)
    if given is None:
        return None
    options = [str(o) for o in q.metadata.get("options", [])]
    letters = string.ascii_uppercase[:len(options)] if options else string.ascii_uppercase
    gold = q.answer.strip().strip("()").upper()
    m = _LETTER.fullmatch(given)
    if m and m.group(1).upper() in letters:
        return float(m.group(1).upper() == gold)
    matches = [letters[i] for i, o in enumerate(options) if normalize_text(o) == normalize_text(given)]
    return float(matches[0] == gold) if len(matches) == 1 else None


def exact(response: str, q: Question) -> float | None:
    """The boxed answer equals an accepted answer (case and spacing ignored): correct; else undecided."""
    given = last_boxed(response)
    if given is not None and normalize_text(given) in {normalize_text(a) for a in gold_answers(q)}:
        return 1.0
    return None


def math(response: str, q: Question) -> float | None:
    """Training's mathematical equivalence (mathruler, units retried) deciding "correct" only."""
    from megatron_zppo.rewards import grade_math

    return 1.0 if any(grade_math(response, Question(q.id, q.text, a)) for a in gold_answers(q)) else None


_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)")
_DECORATION = re.compile(r"\$|\\[!,;]|\\%|%|\^\s*\{?\\circ\}?|°|\\text\{[^}]*\}")


def _plain_number(text: str, unit: str) -> float | None:
    """`text` as a number when it is nothing else (signs, $, %, degrees and the question's unit aside)."""
    body = _DECORATION.sub("", text)
    if unit:
        body = body.replace(unit, "")
    body = body.strip()
    return float(body.replace(",", "")) if _NUMBER.fullmatch(body) else None


def number(response: str, q: Question) -> float | None:
    """A numeric answer compared with the gold at metadata["precision"] decimals (both rounded),
    else exactly. Only a plain number decides; an expression (a fraction in LaTeX, `1/12`) or words
    are for the judge."""
    given = _plain_number(final_text(response), str(q.metadata.get("unit") or ""))
    golds = [g for g in (_plain_number(a, "") for a in gold_answers(q)) if g is not None]
    if given is None or not golds:
        return None
    places = q.metadata.get("precision")
    same = (lambda a, b: round(a, int(places)) == round(b, int(places))) if places is not None else \
        (lambda a, b: a == b)
    return float(any(same(given, g) for g in golds))


def anls(response: str, q: Question) -> float:
    """ANLS of the final answer against every accepted answer (InfoVQA's metric)."""
    return anls_score(final_text(response), gold_answers(q))


RULES = {"choice": choice, "exact": exact, "math": math, "number": number}
METRICS = {"anls": anls}
