"""The ZPPO stage: find hard questions and rewrite them into BCQ and NCQ prompts.

Order of a step (docs/method.md, "One rollout step", phases 3-7):
    hard = select_hard(plain_groups, tau, cap)          # acc < tau, lowest first, pre-capped
    teacher = <teacher rollouts on hard, scored>        # the loop does this through an engine
    plans = plan_reformulations(hard, teacher, cap, ...) # BCQ/NCQ choice + post-cap
    prompts = render(plans, templates, compress)        # text, with optional compression

The pre-cap only looks at the student's accuracy, so applying it before the teacher runs gives the
same prompts as applying it after, and saves teacher rollouts on questions that would be dropped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from megatron_zppo.core.answers import wrong_answer_list
from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.config_io import Range
from megatron_zppo.core.records import TEACHER, Group, PromptKind, Question, Sample


@dataclass(frozen=True)
class ZppoConfig:
    """ZPPO's knobs (`method.zppo`); the zone it works in, tau and rho_aug, is every method's (`method`)."""

    bcq: bool = True  # a hard question the teacher solves becomes a BCQ prompt
    ncq: bool = True  # a hard question becomes an NCQ prompt (wrong answers listed)
    compression: bool = True  # the teacher summarises candidates before they enter a prompt
    summary_max_tokens: Annotated[int, Range(ge=1)] = 512  # compression: the summary's length limit (greedy)


def fraction_count(rho: float, n: int) -> int:
    """round(rho * n) with halves rounded up (Python's round() sends 2.5 to 2)."""
    return math.floor(rho * n + 0.5)


def select_hard(plain_groups: Sequence[Group], tau: float, cap: int) -> list[Group]:
    """Plain groups with acc < tau, lowest accuracy first (ties keep batch order), at most `cap`."""
    for g in plain_groups:
        if g.kind is not PromptKind.PLAIN:
            raise ValueError(f"select_hard takes plain groups only; group {g.id!r} is {g.kind.value}")
    hard = [g for g in plain_groups if g.accuracy < tau]
    hard.sort(key=lambda g: g.accuracy)  # stable: ties keep batch order
    return hard[:cap]


@dataclass
class Reformulation:
    """One BCQ or NCQ prompt before rendering. Candidate texts are raw (uncompressed)."""

    question: Question
    kind: PromptKind
    group_id: str
    source_accuracy: float
    candidates: list[str]  # in the order shown to the student
    wrong_answers: list[str]  # NCQ only: listed as wrong in the prompt
    teacher_position: int | None = None  # BCQ only; for metrics and tests, never rendered


def plan_reformulations(
    hard: Sequence[Group],
    teacher: Mapping[str, Sequence[Sample]],
    cap: int,
    cfg: ZppoConfig,
    rng: random.Random,
) -> list[Reformulation]:
    """Choose the BCQ/NCQ prompts for the (pre-capped, sorted) hard groups, post-capped at `cap`.

    Walks questions by increasing accuracy, BCQ before NCQ, so that when one slot is left the BCQ
    takes it. BCQ needs a correct teacher rollout and a wrong student rollout; NCQ a wrong
    student rollout. `teacher` maps question id to its scored teacher samples.
    """
    plans: list[Reformulation] = []
    for g in hard:
        if len(plans) >= cap:
            break
        wrong = g.wrong()
        if not wrong:
            continue
        acc = g.accuracy
        if cfg.bcq:
            right = [s for s in teacher.get(g.question.id, ()) if teacher_correct(s, g.question.id)]
            if right:
                plans.append(_bcq(g, rng.choice(right), rng.choice(wrong), acc, rng))
        if cfg.ncq and len(plans) < cap:
            texts = [s.response_text for s in wrong]
            plans.append(
                Reformulation(g.question, PromptKind.NCQ, f"{g.id}:ncq", acc, texts, wrong_answer_list(texts))
            )
    return plans


def teacher_correct(s: Sample, question_id: str) -> bool:
    """Whether a teacher rollout of `question_id` is right; refuses student or ungraded samples."""
    if s.sampled_by != TEACHER:
        raise ValueError(f"teacher rollouts for question {question_id!r} include a {s.sampled_by!r} sample")
    if s.reward is None:
        raise ValueError(f"teacher rollout for question {question_id!r} has not been scored")
    return s.reward >= 1.0


def _bcq(g: Group, right: Sample, wrong: Sample, acc: float, rng: random.Random) -> Reformulation:
    teacher_first = rng.random() < 0.5
    pair = [right.response_text, wrong.response_text]
    candidates = pair if teacher_first else pair[::-1]
    return Reformulation(g.question, PromptKind.BCQ, f"{g.id}:bcq", acc, candidates, [], 0 if teacher_first else 1)


Compressor = Callable[[list[str]], list[str]]


def render(
    plans: Sequence[Reformulation], templates: PromptTemplates, compress: Compressor | None = None
) -> list[str]:
    """Prompt text of each plan. `compress` maps raw candidate texts to summaries in one batch
    call (distinct texts only); None shows candidates as they are."""
    shown: dict[str, str] = {}
    if compress is not None:
        distinct = list(dict.fromkeys(c for p in plans for c in p.candidates))
        summaries = compress(distinct) if distinct else []
        if len(summaries) != len(distinct):
            raise ValueError(f"compressor returned {len(summaries)} summaries for {len(distinct)} candidates")
        shown = dict(zip(distinct, summaries))
    out = []
    for p in plans:
        cands = [shown.get(c, c) for c in p.candidates]
        if p.kind is PromptKind.BCQ:
            out.append(templates.bcq_prompt(p.question.text, cands))
        else:
            out.append(templates.ncq_prompt(p.question.text, cands, p.wrong_answers))
    return out
