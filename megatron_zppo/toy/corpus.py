"""The supervised corpus that makes the toy teachers and students of a world (`WORLDS`): the CPU
demo's chain sums, or the effect experiment's pair sums (pair_sum.py, docs/toy-models.md).

A pretrained LLM already reads prompts with candidate answers in them; a model trained from
scratch on plain questions cannot, and a ZPPO run on it would show nothing. So the mix teaches, in
general, the formats ZPPO uses, on questions that are never training or evaluation questions of
the RL run (a disjoint range of generator seeds):

- plain questions of the RL task family (chain sums; pair sums) and of other families (one-digit
  products, counting a letter; and chain sums) that the RL run never trains on, so their accuracy
  measures transfer;
- BCQ-format prompts (one right, one wrong candidate, random order) answered with the right one;
- NCQ-format prompts (wrong candidates, their answers listed) answered correctly;
- compression prompts answered with a one-line `<summary>` that keeps the final answer.

Responses are `<think>steps</think>\\boxed{answer}`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from megatron_zppo.data import SourceConfig, load_source
from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import Question
from megatron_zppo.toy import pair_sum

CHAIN_SUM = SourceConfig(kind="reasoning_gym", task="chain_sum",
                         task_config={"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
PRODUCTS = SourceConfig(kind="reasoning_gym", task="products",
                        task_config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
LETTERS = SourceConfig(kind="reasoning_gym", task="letter_counting", task_config={"min_words": 2, "max_words": 3})


@dataclass(frozen=True)
class World:
    """A toy world: the family the RL run trains on and the families it never trains on (plain
    examples of both are in every model's supervised mix). A family is a reasoning-gym source or a
    question generator `(seed, size) -> questions`."""

    task: str  # the RL family's metadata["task"]
    rl_task: SourceConfig | Callable[[int, int], list[Question]]
    held_out: dict[str, SourceConfig]


WORLDS = {
    # The CPU demo: chain sums. A candidate is checked by redoing the sum, as hard as solving it.
    "chain_sum": World("chain_sum", CHAIN_SUM, {"products": PRODUCTS, "letter_counting": LETTERS}),
    # The effect experiment (docs/RESULTS.md): pair sums, easy to check and hard to find.
    "pair_sum": World("pair_sum", pair_sum.questions, {"chain_sum": CHAIN_SUM, "products": PRODUCTS, "letter_counting": LETTERS}),
}
# The CPU demo's world, by the names the tests and benchmarks use.
RL_TASK, HELD_OUT = WORLDS["chain_sum"].rl_task, WORLDS["chain_sum"].held_out
# Seeds below this are the RL run's (train + eval); the SFT corpus uses seeds from here up.
SFT_SEED_BASE = 10_000


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str


def questions(family: SourceConfig | Callable[[int, int], list[Question]], seed: int, size: int) -> list[Question]:
    from dataclasses import replace

    if not isinstance(family, SourceConfig):
        return family(seed, size)
    return load_source(replace(family, seed=seed, size=size))[0]


def solution(q: Question, answer: str | None = None) -> str:
    """A worked response; with `answer` given, a plausible-looking wrong one ending in it."""
    task = q.metadata.get("task")
    if task == "pair_sum" or q.metadata.get("grader") == pair_sum.GRADER:  # the latter: read from its data file
        return pair_sum.solution(q, answer)
    final = q.answer if answer is None else answer
    steps = ""
    if task == "chain_sum":
        steps = _chain_steps(q.metadata["entry"]["metadata"]["expression"], final)
    elif task == "products":
        steps = q.metadata["entry"]["metadata"]["expression"].replace(" ", "") + f"={final}"
    return f"<think>{steps}</think>\\boxed{{{final}}}"


def _chain_steps(expression: str, final: str) -> str:
    toks = expression.split()
    acc, parts = int(toks[0]), []
    for op, num in zip(toks[1::2], toks[2::2]):
        new = acc + int(num) if op == "+" else acc - int(num)
        parts.append(f"{acc}{op}{num}={new}")
        acc = new
    if parts:  # a wrong response's last step ends in its wrong answer
        parts[-1] = re.sub(r"=-?\d+$", f"={final}", parts[-1])
    return ",".join(parts)


def wrong_answer(q: Question, rng: random.Random) -> str:
    a = q.answer
    if re.fullmatch(r"-?\d+", a):
        return str(int(a) + rng.choice([-10, -2, -1, 1, 2, 10]))
    if len(a) > 1:
        i = rng.randrange(len(a) - 1)
        swapped = a[:i] + a[i + 1] + a[i] + a[i + 2:]
        return swapped if swapped != a else a[::-1] + "x"
    return a + "x"


def wrong_solution(q: Question, rng: random.Random) -> str:
    if q.metadata.get("task") == "pair_sum":
        return pair_sum.wrong_solution(q, rng)
    return solution(q, wrong_answer(q, rng))


def corpus(templates: PromptTemplates, size: int, seed: int = 0, candidate_share: float = 0.35,
           rl_share: float = 0.6, reserved: frozenset[str] = frozenset(),
           known: Sequence[Question] = (), world: World = WORLDS["chain_sum"]) -> list[Example]:
    """`size` examples: plain questions of every family (a share `rl_share` of them from the RL
    task's family), plus BCQ/NCQ/compression-format ones.

    Questions whose text is in `reserved` (the RL run's training and evaluation questions) never
    appear in candidate-format examples, nor as plain examples of the RL family. Plain examples of
    the held-out families may coincide with their evaluation questions (one-digit products has
    only 100 questions); the RL run never sees those families, so that cannot favour a method.

    `known` are questions to teach in plain form despite being reserved: the teacher's mix gets
    the RL run's training questions, so that, like the paper's 27B teacher, it is strong where
    the student is weak. No student is ever given them."""
    rng = random.Random(seed)
    fams = [world.rl_task, *world.held_out.values()]
    pool = [q for i, f in enumerate(fams) for q in questions(f, SFT_SEED_BASE + seed * 10 + i, size)]
    rl_pool = [q for q in pool if q.metadata["task"] == world.task and q.text not in reserved]
    other = [q for q in pool if q.metadata["task"] != world.task]
    other_free = [q for q in other if q.text not in reserved]
    out = []
    for _ in range(size):
        r = rng.random()
        if r >= candidate_share:
            if rng.random() < rl_share:
                q = rng.choice(known if known and rng.random() < 0.5 else rl_pool)
            else:
                q = rng.choice(other)
            out.append(Example(templates.plain(q.text), solution(q)))
            continue
        q = rng.choice(rl_pool if rng.random() < 0.7 or not other_free else other_free)
        wrong = [wrong_solution(q, rng) for _ in range(rng.randint(1, 4))]
        kind = r / candidate_share
        if kind < 0.5:
            pair = [solution(q), wrong[0]]
            rng.shuffle(pair)
            out.append(Example(templates.bcq_prompt(q.text, pair), solution(q)))
        elif kind < 0.85:
            listed = list(dict.fromkeys(w.split("\\boxed{")[-1][:-1] for w in wrong))
            out.append(Example(templates.ncq_prompt(q.text, wrong, listed), solution(q)))
        else:
            resp = rng.choice([solution(q)] + wrong)
            out.append(Example(templates.compress_prompt(resp), f"<summary>{resp.split('</think>')[-1]}</summary>"))
    return out
