"""Binary rewards: the student's final answer graded against the gold answer.

Every grader is a pure function `(response, question) -> float`, run in worker processes with a
time limit: a pathological answer (a huge expression sympy chokes on) can neither hang nor kill
training. A grade that times out or raises scores 0 and is counted.
"""

from __future__ import annotations

import multiprocessing as mp
import re
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_zppo.answers import last_boxed
from megatron_zppo.records import Question

_DEGREE_PERCENT = re.compile(r"\^\s*\{?\\circ\}?|°|\\%|%")


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
    from math_verify import parse, verify

    given = last_boxed(response)
    if given is None:
        return 0.0
    return float(verify(parse(f"${q.answer}$"), parse(f"${given}$")))


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


# Free-form answers: graded by the teacher as an LLM judge (teacher.Teacher.judge), not in a worker.
JUDGE = "judge"
GRADERS = {"math": grade_math, "math_verify": grade_math_verify, "exact": grade_exact,
           "choice": grade_choice, "task": grade_task, "last_number": grade_last_number}


def resolve_grader(name: str):
    """A built-in grader, or any importable `module:function` with the same signature."""
    if name in GRADERS:
        return GRADERS[name]
    if ":" in name:
        import importlib

        module, fn = name.split(":", 1)
        return getattr(importlib.import_module(module), fn)
    raise ValueError(f"grader {name!r} unknown; expected one of {sorted(GRADERS)} or 'module:function'")


def _grade_one(args):
    name, response, question = args
    return resolve_grader(name)(response, question)


@dataclass
class GradeStats:
    timeouts: int = 0
    errors: int = 0


class GraderPool:
    """Grades batches in worker processes, each item under `timeout_s`.

    A timed-out item scores 0; the pool is then replaced, since its worker may be stuck for good.
    `grader` names one of GRADERS, or "auto": the question's metadata["grader"], else "math".
    """

    def __init__(self, grader: str = "auto", workers: int = 2, timeout_s: float = 10.0):
        if grader not in ("auto", JUDGE):
            resolve_grader(grader)  # fail at start-up, not in a worker
        self.grader, self.workers, self.timeout_s = grader, workers, timeout_s
        self.stats = GradeStats()
        self._pool = None

    def wants_judge(self, q: Question) -> bool:
        return self.grader == JUDGE or (self.grader == "auto" and q.metadata.get("grader") == JUDGE)

    def _name(self, q: Question) -> str:
        name = self.grader if self.grader != "auto" else q.metadata.get("grader") or "math"
        if name not in GRADERS and ":" not in name:
            raise ValueError(f"question {q.id!r}: grader {name!r} unknown; expected one of {sorted(GRADERS)} "
                             "or 'module:function'")
        return name

    def grade(self, responses: Sequence[str], questions: Sequence[Question]) -> list[float]:
        if len(responses) != len(questions):
            raise ValueError(f"{len(responses)} responses for {len(questions)} questions")
        jobs = [(self._name(q), r, q) for r, q in zip(responses, questions)]
        scores: list[float] = [0.0] * len(jobs)
        todo = list(range(len(jobs)))
        while todo:  # each round settles at least one item, so this ends
            if self._pool is None:
                self._pool = mp.get_context("spawn").Pool(self.workers)
            pending = [(i, self._pool.apply_async(_grade_one, (jobs[i],))) for i in todo]
            todo, stuck = [], False
            for i, p in pending:
                if stuck and not p.ready():
                    todo.append(i)  # queued behind a stuck worker: retry in a fresh pool
                    continue
                try:
                    scores[i] = float(p.get(timeout=0 if stuck else self.timeout_s))
                except mp.TimeoutError:
                    self.stats.timeouts += 1
                    stuck = True
                except Exception:  # a grader crash on odd input is a wrong answer, not a dead run
                    self.stats.errors += 1
            if stuck:
                self._pool.terminate()
                self._pool = None
        return scores

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
