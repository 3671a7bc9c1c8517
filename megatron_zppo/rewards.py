"""Binary rewards: the student's final answer graded against the gold answer.

Every grader is a pure function `(response, question) -> float` returning 0 or 1, run by
`grader_pool.GraderPool` in worker processes with a time limit: a pathological answer (a huge
expression sympy chokes on) can neither hang nor kill training.
"""

from __future__ import annotations

import re

from megatron_zppo.core.answers import last_boxed
from megatron_zppo.errors import RunError
from megatron_zppo.core.records import Question

# degree signs (^\circ, ^{\circ}, a bare \circ, \deg, °) and percent signs (\%, %)
_DEGREE_PERCENT = re.compile(r"\^\s*\{?\\circ\}?|\\circ(?![A-Za-z])|\\deg(?![A-Za-z])|°|\\%|%")


def _strip_units(s: str) -> str:
    return _DEGREE_PERCENT.sub("", s).strip()


def grade_math(response: str, q: Question) -> float:
    """The paper's grader: mathruler on the last boxed answer, retried once without degree/percent signs."""
    from mathruler.grader import grade_answer

    given = last_boxed(response)
    if given is None:
        return 0.0
    if grade_answer(given, q.answer):
        return 1.0
    return float(grade_answer(_strip_units(given), _strip_units(q.answer)))


def grade_math_verify(response: str, q: Question) -> float:
    """Math-Verify on the last boxed answer, handed to it boxed: its `$...$` form cannot span a
    line, so a multi-line answer (a matrix) fell back to a loose parse that could match by chance."""
    from math_verify import parse, verify

    given = last_boxed(response)
    if given is None:
        return 0.0
    return float(verify(parse(f"\\boxed{{{q.answer}}}"), parse(f"\\boxed{{{given}}}")))


def grade_exact(response: str, q: Question) -> float:
    given = last_boxed(response)
    return float(given is not None and given.strip() == q.answer.strip())


def grade_choice(response: str, q: Question) -> float:
    """Multiple choice: the boxed letter (`B`, `(B)`, `B.`) equals the gold letter."""
    given = last_boxed(response)
    if given is None:
        return 0.0
    letter = re.fullmatch(r"\s*\(?([A-Za-z])\)?[.:]?\s*(.*)", given)
    return float(letter is not None and letter.group(1).upper() == q.answer.strip().strip("()").upper())


def grade_task(response: str, q: Question) -> float:
    """A reasoning-gym task's own scorer; the question's metadata holds the generator's entry."""
    import reasoning_gym

    entry = q.metadata.get("entry")
    if entry is None:
        raise ValueError(f"question {q.id!r}: grader 'task' needs metadata['entry'] from reasoning-gym")
    given = last_boxed(response)
    if given is None:
        return 0.0
    score = reasoning_gym.get_score_answer_fn(entry["metadata"]["source_dataset"])(given, entry)
    return 1.0 if score >= 1.0 else 0.0  # binary reward: partial credit counts as wrong


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def grade_last_number(response: str, q: Question) -> float:
    """Numeric answers from models too small to follow the \\boxed{} format (SmolLM2-135M writes
    "4 - 1 = 3"): the boxed answer if there is one, else the response's last number, compared as a
    number with the gold answer. The "flexible extract" of GSM8K-style evaluations."""
    given = last_boxed(response)
    if given is None:
        numbers = _NUMBER.findall(response)
        given = numbers[-1] if numbers else None
    if given is None:
        return 0.0
    try:
        return float(float(given.strip()) == float(q.answer.strip()))
    except ValueError:
        return float(given.strip() == q.answer.strip())

GRADERS = {"math": grade_math, "math_verify": grade_math_verify, "exact": grade_exact,
           "choice": grade_choice, "task": grade_task, "last_number": grade_last_number}


class GraderError(RunError, ValueError):
    pass


def resolve_grader(name: str):
    """A built-in grader, or any importable `module:function` with the same signature."""
    if name in GRADERS:
        return GRADERS[name]
    if ":" in name:
        import importlib

        module, fn = name.split(":", 1)
        try:
            found = getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError) as e:
            raise GraderError(f"grader {name!r}: cannot import {fn!r} from module {module!r} ({e})") from None
        if not callable(found):
            raise GraderError(f"grader {name!r}: {module}.{fn} is not a function")
        return found
    raise GraderError(f"grader {name!r} unknown; expected one of {sorted(GRADERS)} or 'module:function'")
