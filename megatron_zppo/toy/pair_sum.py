"""Pair sums, the effect experiment's task family: which two of six one-digit numbers add up to the
target? Exactly one pair does.

Finding the pair is a search over fifteen pairs, which a toy model does badly; checking a candidate
pair is one one-digit addition and a comparison with the target in the question, which it does well.
That asymmetry (easy to check, hard to find) is what lets a student read a BCQ prompt with profit,
as instruction-tuned models do; the chain sums of the CPU demo lack it.

The questions are generated here (seeded), written to `examples/pair_sum/data/` by `python -m
megatron_zppo.toy.pair_sum`, and graded by `grade`, which accepts the pair in either order.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import sys
from pathlib import Path

from megatron_zppo.core.answers import last_boxed
from megatron_zppo.core.records import Question

GRADER = "megatron_zppo.toy.pair_sum:grade"
NUMBERS = 6
DATA = Path(__file__).resolve().parents[2] / "examples" / "pair_sum" / "data"
SPLITS = {"train": (0, 400), "eval": (1, 128)}  # name: (seed, size); the corpus uses seeds from 10,000 up
_QUESTION = re.compile(r"Which two of ([\d ]+) add up to (\d+)\?")


def questions(seed: int, size: int) -> list[Question]:
    """`size` distinct questions; the answer is the pair, smaller first ("3+9")."""
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < size:
        nums = rng.sample(range(1, 10), NUMBERS)
        sums: dict[int, list[tuple[int, int]]] = {}
        for a, b in itertools.combinations(nums, 2):
            sums.setdefault(a + b, []).append((min(a, b), max(a, b)))
        unique = [(t, p[0]) for t, p in sums.items() if len(p) == 1]
        if not unique:
            continue
        target, (a, b) = rng.choice(sorted(unique))
        text = f"Which two of {' '.join(map(str, nums))} add up to {target}?"
        if text in seen:
            continue
        seen.add(text)
        out.append(Question(f"pair_sum/{seed}/{len(out)}", text, f"{a}+{b}", source="pair_sum",
                            metadata={"task": "pair_sum", "grader": GRADER}))
    return out


def parse(text: str) -> tuple[list[int], int]:
    """(numbers, target) of a question's text."""
    m = _QUESTION.search(text)
    if m is None:
        raise ValueError(f"not a pair-sum question: {text!r:.80}")
    return [int(x) for x in m.group(1).split()], int(m.group(2))


def grade(response: str, q: Question) -> float:
    """1 if the last boxed answer is two different numbers of the question, joined by '+', that
    add up to the target; in either order."""
    given = last_boxed(response)
    m = re.fullmatch(r"\s*(\d)\s*\+\s*(\d)\s*", given or "")
    if m is None:
        return 0.0
    nums, target = parse(q.text)
    a, b = int(m.group(1)), int(m.group(2))
    return float(a != b and a in nums and b in nums and a + b == target)


def solution(q: Question, pair: str | None = None, claim_target: bool = False) -> str:
    """The worked response for the gold pair or for `pair`: its sum (or, `claim_target`, the
    target claimed as its sum), then the pair boxed."""
    a, b = (int(x) for x in (pair or q.answer).split("+"))
    total = parse(q.text)[1] if claim_target else a + b
    return f"<think>{a}+{b}={total}</think>\\boxed{{{a}+{b}}}"


def wrong_pair(q: Question, rng: random.Random) -> str:
    """A wrong pair of the kind a guessing student writes: half of the time a pair that adds up to
    the target but uses a number that is not in the list (when there is one), else two numbers of
    the list that do not add up to the target."""
    nums, target = parse(q.text)
    absent = [(a, target - a) for a in range(1, 10) if 1 <= target - a <= 9 and a != target - a
              and (a not in nums or target - a not in nums)]
    if absent and rng.random() < 0.5:
        a, b = sorted(rng.choice(absent))
        return f"{a}+{b}"
    return rng.choice([f"{a}+{b}" for a, b in itertools.combinations(nums, 2) if a + b != target])


def wrong_solution(q: Question, rng: random.Random) -> str:
    """A wrong worked response: a `wrong_pair` with its sum shown truly, except that two in five
    of the list's pairs claim the target as their sum; so a model must check both the addition and
    that the numbers are in the list, not only compare the sum with the target."""
    pair = wrong_pair(q, rng)
    a, b = (int(x) for x in pair.split("+"))
    return solution(q, pair, claim_target=a + b != parse(q.text)[1] and rng.random() < 0.4)


def write(directory: Path = DATA) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, (seed, size) in SPLITS.items():
        rows = [{"id": q.id, "question": q.text, "answer": q.answer} for q in questions(seed, size)]
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA)
