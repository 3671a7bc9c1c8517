"""Evaluation scores that are not 0/1, and the intervals of family averages (pure functions).

Training rewards stay binary (rewards.py). Evaluation also reports benchmarks scored by their own
deterministic metric (ANLS for InfoVQA, OCRBench v2's per-task metrics) or by a judge's 0-1 score
(MM-Vet), so a question's score here is any number in [0, 1].

A family's score is the macro average of its benchmarks. Its uncertainty has two sources, and the
intervals say which one they cover:
- questions: each benchmark is a sample of its questions (benchmarks fixed, questions resampled);
- benchmarks: the family is a sample of benchmarks (clusters resampled, each at its mean);
- both: benchmarks resampled, and each drawn benchmark at one of its question-resampled means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BOOT_CHUNK = 256  # bootstrap replicates drawn at once: keeps a 14k-question benchmark's draw small


def normalize_text(s: str) -> str:
    """Lower case, surrounding and repeated white space removed: how ANLS compares strings."""
    return " ".join(s.strip().lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one prediction (DocVQA/InfoVQA's metric): the
    best over the gold answers of 1 - d/max(len), where a normalised distance d/max(len) of
    `threshold` or more counts as 0 (an answer that far off is wrong, not half right)."""
    from rapidfuzz.distance import Levenshtein

    if not answers:
        raise ValueError("anls: a question needs at least one gold answer")
    best = 0.0
    for gold in answers:
        dist = Levenshtein.normalized_distance(normalize_text(prediction), normalize_text(gold))
        best = max(best, 0.0 if dist >= threshold else 1.0 - dist)
    return best


@dataclass(frozen=True)
class FamilyScore:
    mean: float  # the macro average over benchmarks
    questions: tuple[float, float]  # interval over questions (benchmarks fixed)
    benchmarks: tuple[float, float]  # interval over benchmarks (clusters)
    both: tuple[float, float]  # benchmarks, then questions within each


def question_bootstrap(scores: Sequence[float], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` means of `scores` resampled with replacement."""
    x = np.asarray(scores, dtype=np.float64)
    out = np.empty(n_boot)
    for start in range(0, n_boot, BOOT_CHUNK):
        k = min(BOOT_CHUNK, n_boot - start)
        out[start:start + k] = x[rng.integers(0, len(x), size=(k, len(x)))].mean(axis=1)
    return out


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def benchmark_mean(parts: Sequence[Sequence[float]]) -> float:
    """A benchmark's score: the mean of its parts' means (MMMU-Pro's three settings, CharXiv's two
    halves); a benchmark of one part is the mean of its questions."""
    return float(np.mean([np.mean(p) for p in parts]))


def family_score(per_benchmark: Mapping[str, Sequence[Sequence[float]]], n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> FamilyScore:
    """Macro average of the benchmarks' scores (each: its parts' per-question scores), with
    percentile bootstrap intervals over questions, over benchmarks and over both (module docstring)."""
    empty = [name for name, parts in per_benchmark.items() if not parts or any(len(p) == 0 for p in parts)]
    if not per_benchmark or empty:
        raise ValueError(f"family_score: every benchmark needs scored questions; empty: {empty or 'all'}")
    rng = np.random.default_rng(seed)
    means = np.array([benchmark_mean(parts) for parts in per_benchmark.values()])
    q_draws = np.stack([np.mean([question_bootstrap(p, n_boot, rng) for p in parts], axis=0)
                        for parts in per_benchmark.values()])  # (benchmarks, n_boot)
    k = len(means)
    picks = rng.integers(0, k, size=(n_boot, k))  # benchmarks drawn for each replicate
    over_benchmarks = means[picks].mean(axis=1)
    over_both = q_draws[picks, np.arange(n_boot)[:, None]].mean(axis=1)
    return FamilyScore(float(means.mean()), _interval(q_draws.mean(axis=0), level),
                       _interval(over_benchmarks, level), _interval(over_both, level))


@dataclass(frozen=True)
class Delta:
    delta: float  # macro average of (a - b) over the benchmarks both have
    interval: tuple[float, float]  # benchmarks resampled (the paper's cluster bootstrap)
    wins: int  # benchmarks where a scores higher than b
    n: int


def paired_delta(a: Mapping[str, float], b: Mapping[str, float], n_boot: int = 10000, level: float = 0.95,
                 seed: int = 0) -> Delta:
    """How much `a` beats `b` on a family: the macro-average difference over their shared
    benchmarks, with an interval from resampling benchmarks (each replicate draws the same
    benchmarks for both, and the same `seed` draws the same replicates for every comparison of a
    family, so columns of one table share their resamples)."""
    names = [n for n in a if n in b]
    if not names:
        raise ValueError("paired_delta: the two have no benchmark in common")
    d = np.array([a[n] - b[n] for n in names])
    picks = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    return Delta(float(d.mean()), _interval(d[picks].mean(axis=1), level), int((d > 0).sum()), len(d))
