"""A benchmark's grading protocol, as the paper grades: a rule or metric first, a judge where the
rule cannot decide, or the benchmark's own judge.

A protocol is named in a suite's `grader` (or a source's, which wins):

    choice+judge, exact+judge, math+judge, number+judge   the rule first; the shared judge decides
                                                           what the rule leaves undecided
    rule+judge                                             the same, each item's rule from its
                                                           metadata["rule"] (mixed benchmarks)
    choice, exact, math, number, rule                      the rule alone: undecided scores 0
    anls, ocrbench_v2                                      the benchmark's own metric, no judge
    judge                                                  the shared judge alone
    judge:<template>[:<output>]                            the benchmark's own judge: a package
                                                           template or a file (judge.py)
    math_verify, task, last_number, module:function        a training grader, 0 or 1 as in training

Every grade records the path that decided it (`DecisionCounts`), so a table can say how much of a
score a rule decided and how much the judge did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from megatron_zppo.core.records import Question
from megatron_zppo.evaluation.judge import EvalJudge, JudgeTemplate
from megatron_zppo.evaluation.rules import METRICS, RULES
from megatron_zppo.grader_pool import GraderPool
from megatron_zppo.rewards import GraderError, resolve_grader

RULE_MODULE = "megatron_zppo.evaluation.rules"
METRIC_PATHS = {**{m: f"{RULE_MODULE}:{m}" for m in METRICS}, "ocrbench_v2": "megatron_zppo.evaluation.ocrbench:score"}


@dataclass(frozen=True)
class Protocol:
    rule: str = ""  # RULES key, "rule" (per item), a METRIC_PATHS key, a training grader, or "" (judge only)
    judge: str = ""  # "": none; "answer": the shared judge; else a benchmark judge template (name or file)
    judge_output: str = ""  # a template file's reply form (judge.OUTPUTS)

    @classmethod
    def parse(cls, spec: str) -> Protocol:
        if spec == "judge":
            return cls(judge="answer")
        if spec.startswith("judge:"):
            body = spec[len("judge:"):]
            template, output = body.rsplit(":", 1) if ":" in body else (body, "")
            JudgeTemplate.load(template, output)  # a missing file or a bad form fails at start-up
            return cls(judge=template, judge_output=output)
        rule, plus, judge = spec.partition("+")
        if plus and judge != "judge":
            raise GraderError(f"grading protocol {spec!r}: only '+judge' may follow a rule")
        if rule not in RULES and rule != "rule" and rule not in METRIC_PATHS:
            resolve_grader(rule)  # a training grader (names what is allowed if not)
        if plus and rule in METRIC_PATHS:
            raise GraderError(f"grading protocol {spec!r}: a metric never defers to a judge")
        return cls(rule=rule, judge="answer" if plus else "")

    @property
    def kind(self) -> str:
        return "metric" if self.rule in METRIC_PATHS else "judge" if not self.rule else "rule"

    def grader_path(self, q: Question) -> str:
        """What the grader pool runs for `q`: the rule's, the metric's or the training grader's name."""
        if self.rule in METRIC_PATHS:
            return METRIC_PATHS[self.rule]
        name = q.metadata.get("rule", "") if self.rule == "rule" else self.rule
        if name not in RULES:
            if self.rule == "rule":
                raise GraderError(f"question {q.id!r}: protocol 'rule' needs metadata['rule'] in {sorted(RULES)}, "
                                  f"got {name!r}")
            return name
        return f"{RULE_MODULE}:{name}"


@dataclass
class DecisionCounts:
    """How each grade was decided."""

    rule: int = 0  # a rule decided (right or wrong)
    metric: int = 0  # the benchmark's metric scored it
    judge: int = 0  # a judge decided
    judge_malformed: int = 0  # the judge's reply had not its form: scored 0
    undecided: int = 0  # the rule could not decide and there was no judge: scored 0
    by_protocol: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluation_pool(workers: int = 2, timeout_s: float = 10.0) -> GraderPool:
    """The worker processes every benchmark's rules and metrics run in (started once per suite)."""
    return GraderPool("auto", workers, timeout_s, fractional=True)


class BenchmarkGrader:
    """Grades like GraderPool.grade (responses and their questions in, scores out), by each
    question's protocol: metadata["grader"] if a source set it, else `default`. `pool` is
    `evaluation_pool()`'s, shared by the benchmarks of a suite; the caller closes it."""

    def __init__(self, default: str, judge: EvalJudge | None, pool: GraderPool):
        self.default, self.judge, self.pool = default, judge, pool
        self.protocols = {default: Protocol.parse(default)}
        self.counts = DecisionCounts()
        self._failures_before = pool.stats.total()

    def grader_failures(self) -> int:
        """Grades of this benchmark that timed out, raised or crashed (each scored 0)."""
        return self.pool.stats.total() - self._failures_before

    def protocol(self, q: Question) -> tuple[str, Protocol]:
        spec = q.metadata.get("grader") or self.default
        if spec not in self.protocols:
            self.protocols[spec] = Protocol.parse(spec)
        return spec, self.protocols[spec]

    def grade(self, responses: Sequence[str], questions: Sequence[Question]) -> list[float]:
        chosen = [self.protocol(q) for q in questions]
        ruled = [i for i, (_, p) in enumerate(chosen) if p.rule]
        jobs = [dataclasses.replace(questions[i], metadata={**questions[i].metadata,
                                                            "grader": chosen[i][1].grader_path(questions[i])})
                for i in ruled]
        scores: list[float | None] = [None] * len(questions)
        for i, s in zip(ruled, self.pool.grade([responses[i] for i in ruled], jobs)):
            scores[i] = s
        for i, (spec, p) in enumerate(chosen):
            self.counts.by_protocol[spec] = self.counts.by_protocol.get(spec, 0) + 1
            if scores[i] is not None:
                setattr(self.counts, p.kind, getattr(self.counts, p.kind) + 1)
        self._judge_rest(responses, questions, chosen, scores)
        return [0.0 if s is None else s for s in scores]

    def _judge_rest(self, responses, questions, chosen, scores) -> None:
        """The judge grades what no rule decided, one call per template."""
        by_template: dict[tuple[str, str], list[int]] = {}
        for i, (_, p) in enumerate(chosen):
            if scores[i] is None and p.judge:
                by_template.setdefault((p.judge, p.judge_output), []).append(i)
            elif scores[i] is None:
                self.counts.undecided += 1
        for (template, output), idx in by_template.items():
            if self.judge is None:
                self.counts.undecided += len(idx)
                continue
            before = self.judge.malformed
            graded = self.judge.grade(JudgeTemplate.load(template, output), [questions[i] for i in idx],
                                      [responses[i] for i in idx])
            for i, s in zip(idx, graded):
                scores[i] = s
            self.counts.judge += len(idx)
            self.counts.judge_malformed += self.judge.malformed - before
