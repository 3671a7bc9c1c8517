"""A suite: benchmarks in families, how they are decoded and graded, and what running one gives.

    decoding: {temperature: 0.6, ...}   # EvalConfig: the main job's eval settings, same defaults
    pixels: {min_pixels: 262144, max_pixels: 1310720}   # images scaled into these bounds (0: none)
    include: [vlm.yaml, llm.yaml]       # other suites whose benchmarks this one also has
    data_root: /data/benchmarks         # relative source paths are under it (tools/evaluate --data-root)
    benchmarks:
      MathVista:
        family: vlm
        grader: rule+judge              # the protocol (evaluation/protocols.py); a source's grader wins
        sources: [{kind: benchmark, task: mathvista, path: MathVista/data}]

A benchmark of several sources (MMMU-Pro's three settings, CharXiv's two halves) scores the mean
of its sources' scores. A run gives, per benchmark, its score, its sources' scores, n, a 95%
interval over its questions and how each grade was decided; per family, the macro average with
intervals over questions, over benchmarks and over both (core/scores.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from megatron_zppo.config import EvalConfig
from megatron_zppo.config_io import Range, from_dict, load_tree
from megatron_zppo.core.records import Question
from megatron_zppo.core.scores import benchmark_mean, family_score, question_bootstrap
from megatron_zppo.errors import RunError


class SuiteError(RunError, ValueError):
    pass


@dataclass(frozen=True)
class Benchmark:
    family: str = "default"
    grader: str = "math"  # the grading protocol (evaluation/protocols.py)
    label: str = ""  # the column's name in tables (the paper's abbreviation); empty: the benchmark's name
    sources: list = field(default_factory=list)
    # A metadata key: the score is the mean over the groups of questions it names (OCRBench v2's
    # task buckets) instead of over the sources; empty: over the sources.
    parts_by: str = ""


@dataclass(frozen=True)
class PixelBounds:
    min_pixels: Annotated[int, Range(ge=0)] = 0
    max_pixels: Annotated[int, Range(ge=0)] = 0


@dataclass(frozen=True)
class Suite:
    benchmarks: dict[str, Benchmark] = field(default_factory=dict)
    decoding: EvalConfig = field(default_factory=EvalConfig)
    templates: str = ""  # prompt templates' folder; empty: the package's (the closer every prompt ends with)
    seed: int = 0
    include: list[str] = field(default_factory=list)
    data_root: str = ""
    pixels: PixelBounds = field(default_factory=PixelBounds)
    judge_max_new_tokens: Annotated[int, Range(ge=1)] = 512
    n_boot: Annotated[int, Range(ge=100)] = 10000  # bootstrap replicates of every interval


def load_suite(path: str | Path, data_root: str = "") -> Suite:
    """The suite at `path` with its includes' benchmarks; relative source paths resolved under
    `data_root` (else the suite's own, else the working directory)."""
    from megatron_zppo.data import SourceConfig

    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {path} does not exist")
    suite = from_dict(Suite, load_tree(str(path), []))
    benchmarks: dict[str, Benchmark] = {}
    for inc in suite.include:
        for name, b in load_suite(path.parent / inc, data_root or suite.data_root).benchmarks.items():
            if name in benchmarks:
                raise SuiteError(f"{path}: benchmark {name!r} comes twice through include {inc}")
            benchmarks[name] = b
    root = Path(data_root or suite.data_root or ".")
    for name, b in suite.benchmarks.items():
        if not b.sources:
            raise SuiteError(f"{path}: benchmark {name!r} has no sources")
        if name in benchmarks:
            raise SuiteError(f"{path}: benchmark {name!r} is also in an included suite")
        sources = [from_dict(SourceConfig, s, f"benchmarks.{name}.sources[{i}]") for i, s in enumerate(b.sources)]
        sources = [dataclasses.replace(s, path=str(root / s.path)) if s.path and not Path(s.path).is_absolute()
                   and s.kind != "hf" else s for s in sources]
        benchmarks[name] = Benchmark(b.family, b.grader, b.label or name, sources, b.parts_by)
    for name, b in benchmarks.items():
        check_benchmark(path, name, b)
    if suite.pixels.max_pixels and suite.pixels.min_pixels > suite.pixels.max_pixels:
        raise SuiteError(f"{path}: pixels.min_pixels={suite.pixels.min_pixels} > max_pixels={suite.pixels.max_pixels}")
    return dataclasses.replace(suite, benchmarks=benchmarks)


def check_benchmark(path: Path, name: str, b: Benchmark) -> None:
    """What can be refused before anything runs: a protocol, a converter or a file that is not there."""
    import megatron_zppo.evaluation.benchmarks  # noqa: F401  (registers every converter)
    from megatron_zppo.evaluation.benchmarks.registry import CONVERTERS
    from megatron_zppo.evaluation.protocols import Protocol

    for i, s in enumerate(b.sources):
        Protocol.parse(s.grader or b.grader)
        where = f"{path}: benchmark {name!r}, source {i}"
        if s.kind == "benchmark" and s.task not in CONVERTERS:
            raise SuiteError(f"{where}: converter {s.task!r} unknown; expected one of {sorted(CONVERTERS)}")
        if s.kind in ("benchmark", "jsonl", "parquet") and not Path(s.path).exists():
            raise SuiteError(f"{where}: {s.path} does not exist (point data_root or --data-root at the folder "
                             "the benchmarks were downloaded to)")


def bounded(questions: list[Question], pixels: PixelBounds) -> list[Question]:
    """Questions with their images scaled into the suite's pixel bounds."""
    from megatron_zppo.images import fit_pixels

    if not (pixels.min_pixels or pixels.max_pixels):
        return questions
    return [dataclasses.replace(q, images=tuple(fit_pixels(i, pixels.min_pixels, pixels.max_pixels) for i in q.images))
            if q.images else q for q in questions]


def run_suite(suite: Suite, engine, encode, judge=None, log=print, loaded: dict | None = None) -> dict:
    """Every benchmark of `suite` through `engine` (the student), graded by its protocol with
    `judge` (evaluation/judge.EvalJudge, or None: what needs a judge is counted undecided, 0).
    `loaded` keeps the converted questions between calls (the main job evaluates several times;
    converting and checking 31 releases' images each time would cost minutes)."""
    from megatron_zppo import build
    from megatron_zppo.core.prompts import DEFAULT_DIR, PromptTemplates
    from megatron_zppo.data import load_questions
    from megatron_zppo.evaluate import evaluate
    from megatron_zppo.evaluation.protocols import BenchmarkGrader, evaluation_pool

    params = build.eval_sampling(suite.decoding, suite.seed)
    templates = PromptTemplates.load(suite.templates or DEFAULT_DIR)
    if judge is not None:  # the suite says how long a judge's reply may be
        judge.sampling = dataclasses.replace(judge.sampling, max_new_tokens=suite.judge_max_new_tokens)
    results = {}
    with evaluation_pool() as pool:
        for name, b in suite.benchmarks.items():
            grader, parts = BenchmarkGrader(b.grader, judge, pool), []
            for i, src in enumerate(b.sources):
                key = (name, i)
                qs = loaded.get(key) if loaded is not None else None
                if qs is None:
                    qs = bounded(load_questions([src], log=lambda *_: None), suite.pixels)
                    if loaded is not None:
                        loaded[key] = qs
                r = evaluate(engine, encode, templates, qs, grader, params, suite.decoding.samples_per_question)
                parts += split_parts(src.task or src.path, qs, list(r.correct), b.parts_by)
            results[name] = benchmark_entry(b, parts, grader, suite.n_boot, suite.seed)
            log(progress_line(name, results[name]))
    return {"benchmarks": results, "families": families(results, suite.n_boot, suite.seed)}


def progress_line(name: str, e: dict) -> str:
    d = e["decided"]
    return (f"{name}: {100 * e['score']:.1f} (n={e['n']}, 95% CI {100 * e['ci95'][0]:.1f}-{100 * e['ci95'][1]:.1f}; "
            f"decided by rule {d['rule']}, metric {d['metric']}, judge {d['judge']} ({d['judge_malformed']} malformed), "
            f"undecided {d['undecided']})")


def split_parts(source: str, questions: list[Question], scores: list[float], key: str) -> list[dict]:
    """One part per source, or per value of metadata[`key`] (named `source/value`)."""
    groups: dict[str, list[float]] = {}
    for q, s in zip(questions, scores, strict=True):
        if key and key not in q.metadata:
            raise SuiteError(f"benchmark source {source}: question {q.id!r} has no metadata[{key!r}] (parts_by)")
        groups.setdefault(f"{source}/{q.metadata[key]}" if key else source, []).append(s)
    return [{"source": name, "n": len(v), "score": sum(v) / len(v), "scores": v} for name, v in groups.items()]


def benchmark_entry(b: Benchmark, parts: list[dict], grader, n_boot: int, seed: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    draws = np.mean([question_bootstrap(p["scores"], n_boot, rng) for p in parts], axis=0)
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return {"family": b.family, "label": b.label, "score": benchmark_mean([p["scores"] for p in parts]),
            "n": sum(p["n"] for p in parts), "ci95": [float(lo), float(hi)], "parts": parts,
            "decided": grader.counts.as_dict(), "grader_failures": grader.grader_failures()}


def families(results: dict, n_boot: int, seed: int) -> dict:
    """Per family: the macro average and its intervals (questions, benchmarks, both)."""
    grouped: dict[str, dict] = {}
    for name, e in results.items():
        grouped.setdefault(e["family"], {})[name] = [p["scores"] for p in e["parts"]]
    out = {}
    for fam, per in grouped.items():
        f = family_score(per, n_boot=n_boot, seed=seed)
        out[fam] = {"mean": f.mean, "benchmarks": list(per), "ci95_questions": list(f.questions),
                    "ci95_benchmarks": list(f.benchmarks), "ci95_both": list(f.both)}
    return out
