"""Accuracy of a policy on question sets, with a bootstrap confidence interval.

Evaluation uses the same prompt (plain + closer), engine and graders as training, so a reward
during training and a correct answer at evaluation mean the same thing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from megatron_zppo.core.prompts import PromptTemplates, encode_media
from megatron_zppo.core.records import Question
from megatron_zppo.grader_pool import GraderPool
from megatron_zppo.rollout.engine import GenerateRequest, RolloutEngine, SamplingParams


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    n: int
    ci_low: float
    ci_high: float
    correct: tuple[float, ...]  # per question: mean over its samples


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    if not values:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(n_boot))
    lo = means[int((1 - level) / 2 * n_boot)]
    hi = means[min(int((1 + level) / 2 * n_boot), n_boot - 1)]
    return lo, hi


def evaluate(engine: RolloutEngine, encode: Callable[..., list[int]], templates: PromptTemplates,
             questions: Sequence[Question], graders: GraderPool, params: SamplingParams,
             samples_per_question: int = 1) -> EvalResult:
    reqs = [GenerateRequest(encode_media(encode, templates.plain(q.text), q), samples_per_question, q.images,
                            f"eval:{q.id}", videos=q.videos) for q in questions]
    gens = engine.generate(reqs, params)
    flat_q = [q for q, gs in zip(questions, gens) for _ in gs]
    scores = graders.grade([g.text for gs in gens for g in gs], flat_q)
    per_q, k = [], 0
    for gs in gens:
        per_q.append(sum(scores[k:k + len(gs)]) / len(gs))
        k += len(gs)
    acc = sum(per_q) / len(per_q) if per_q else float("nan")
    lo, hi = bootstrap_ci(per_q)
    return EvalResult(acc, len(per_q), lo, hi, tuple(per_q))
