"""The candidate-match audit: does the student's answer to a BCQ or NCQ prompt repeat a candidate?

The paper checks whether a small student merely copies what the prompt shows. Every comparison is
on the final `\\boxed{}` string after `normalise`. BCQ rollouts are split by their grade: a correct
one should match the teacher's candidate ("match_pos"), a wrong one often matches the student's
wrong candidate ("match_neg"). NCQ rollouts: "match_neg" is an answer the prompt listed as wrong;
"match_pos" one of the teacher's correct answers to the question (not shown in an NCQ prompt),
counted only where the teacher ran and solved it. Definitions in docs/analyses.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

from megatron_zppo.core.answers import last_boxed
from megatron_zppo.core.records import Group, PromptKind, Sample
from megatron_zppo.core.reformulate import Reformulation, teacher_correct

# Formatting commands whose argument is the answer itself: `\text{cm}` is `cm`.
_WRAPPER = re.compile(r"\\(?:text|textrm|textbf|textit|textnormal|mathrm|mathbf|mathit|mathsf|mathtt|"
                      r"operatorname|mbox|boldsymbol)\s*\{")
_BCQ_CELLS = tuple(f"{grade}_{m}" for grade in ("correct", "wrong") for m in ("match_pos", "match_neg", "other"))


def normalise(answer: str) -> str:
    """Lower case, formatting wrappers (`\\text{...}`, `\\mathrm{...}`, `\\textbf{...}`, ...)
    replaced by their content, white space collapsed to single spaces."""
    while m := _WRAPPER.search(answer):
        end = _closing_brace(answer, m.end())
        if end is None:  # unbalanced: drop the command, keep the rest
            answer = answer[: m.start()] + answer[m.end():]
        else:
            answer = answer[: m.start()] + answer[m.end(): end] + answer[end + 1:]
    return " ".join(answer.lower().split())


def _closing_brace(text: str, i: int) -> int | None:
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return j
    return None


def final_answer(text: str) -> str | None:
    """The normalised last complete box of a response; None without one."""
    a = last_boxed(text)
    return None if a is None else normalise(a)


# -- what the prompts showed (recorded when they are built) ------------------------------------
def bcq_candidate_answers(plans: Iterable[Reformulation]) -> dict[str, list[str | None]]:
    """BCQ group id -> [teacher candidate's answer, student candidate's answer], raw final boxes
    of the uncompressed candidates (compression keeps the final answer verbatim)."""
    out = {}
    for p in plans:
        if p.kind is PromptKind.BCQ:
            pos = p.candidates[p.teacher_position]
            neg = p.candidates[1 - p.teacher_position]
            out[p.group_id] = [last_boxed(pos), last_boxed(neg)]
    return out


def ncq_teacher_answers(plans: Iterable[Reformulation], teacher: Mapping[str, Sequence[Sample]]
                        ) -> dict[str, list[str]]:
    """NCQ group id -> final answers of the teacher's correct rollouts of its question, for the
    questions the teacher ran on (an empty list: it ran and failed)."""
    out = {}
    for p in plans:
        if p.kind is PromptKind.NCQ and p.question.id in teacher:
            right = [s for s in teacher[p.question.id] if teacher_correct(s, p.question.id)]
            out[p.group_id] = list(dict.fromkeys(a for s in right if (a := last_boxed(s.response_text)) is not None))
    return out


# -- the audit ---------------------------------------------------------------------------------
def bcq_audit(groups: Iterable[Group], candidates: Mapping[str, Sequence[str | None]]) -> dict[str, int]:
    """Counts of BCQ rollouts by grade and match, e.g. "correct_match_pos", "wrong_match_neg".
    Groups without recorded candidates are skipped. Matching both candidates counts as match_pos."""
    counts = dict.fromkeys(_BCQ_CELLS, 0)
    for g in groups:
        if g.kind is not PromptKind.BCQ or g.id not in candidates:
            continue
        pos, neg = (None if c is None else normalise(c) for c in candidates[g.id])
        for s in g.samples:
            a = final_answer(s.response_text)
            match = ("other" if a is None else "match_pos" if a == pos else "match_neg" if a == neg else "other")
            grade = "correct" if s.reward is not None and s.reward >= 1.0 else "wrong"
            counts[f"{grade}_{match}"] += 1
    return counts


def ncq_audit(groups: Iterable[Group], listed: Mapping[str, Sequence[str]],
              teacher_answers: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Counts of NCQ rollouts: "n" audited (groups whose listed answers are known), "match_neg"
    (a listed answer), "n_teacher" (of those, with a correct teacher answer known), "match_pos"
    (not listed, a teacher answer), "other" (neither, as far as known)."""
    counts = dict.fromkeys(("n", "match_neg", "n_teacher", "match_pos", "other"), 0)
    for g in groups:
        if g.kind is not PromptKind.NCQ or g.id not in listed:
            continue
        wrong = {normalise(a) for a in listed[g.id]}
        right = {normalise(a) for a in teacher_answers.get(g.id, ())}
        for s in g.samples:
            a = final_answer(s.response_text)
            counts["n"] += 1
            counts["n_teacher"] += bool(right)
            hit = "other" if a is None else "match_neg" if a in wrong else "match_pos" if a in right else "other"
            counts[hit] += 1
    return counts


def audit_metrics(bcq: Mapping[str, int], ncq: Mapping[str, int]) -> dict[str, float]:
    """A step's metrics from the two audits' counts: rates (NaN with nothing to count) and the
    denominators, so that a run's rates can be pooled over steps (tools/compare.py)."""
    n_correct = sum(bcq[f"correct_{m}"] for m in ("match_pos", "match_neg", "other"))
    n_wrong = sum(bcq[f"wrong_{m}"] for m in ("match_pos", "match_neg", "other"))
    out: dict[str, float] = {}
    for grade, n in (("correct", n_correct), ("wrong", n_wrong)):
        for m in ("match_pos", "match_neg", "other"):
            out[f"bcq_{m}_{grade}"] = _rate(bcq[f"{grade}_{m}"], n)
    # NCQ: every rate over all audited rollouts, so a row sums to 1 as the paper's does; match_pos
    # only in steps where some teacher answer is known (else NaN, and its pooling weight is 0)
    n_pos = ncq["n"] if ncq["n_teacher"] else 0
    out.update(bcq_audit_n_correct=n_correct, bcq_audit_n_wrong=n_wrong,
               ncq_match_neg=_rate(ncq["match_neg"], ncq["n"]), ncq_match_pos=_rate(ncq["match_pos"], n_pos),
               ncq_other=_rate(ncq["other"], ncq["n"]), ncq_audit_n=ncq["n"], ncq_audit_n_teacher=ncq["n_teacher"],
               ncq_audit_n_pos=n_pos)
    out["ncq_repeats_listed_answer"] = out["ncq_match_neg"]  # the metric's earlier name
    return out


def _rate(k: int, n: int) -> float:
    return k / n if n else math.nan


# -- a run's audit, pooled over its steps (summary.json, tools/compare.py) --------------------
# Each audit metric and the metric holding its denominator.
MATCHES = ("match_pos", "match_neg", "other")
AUDIT = {**{f"bcq_{m}_{g}": f"bcq_audit_n_{g}" for g in ("correct", "wrong") for m in MATCHES},
         "ncq_match_neg": "ncq_audit_n", "ncq_match_pos": "ncq_audit_n_pos", "ncq_other": "ncq_audit_n"}
AUDIT_N = tuple(dict.fromkeys(AUDIT.values()))


def audit_counts(metrics: list[dict]) -> dict[str, float]:
    """The audit's counts summed over a run's metrics lines: each step's rate times its denominator."""
    out = dict.fromkeys([*AUDIT, *AUDIT_N], 0.0)
    for m in metrics:
        for k, n in AUDIT.items():
            if m.get(n) and m.get(k) is not None:
                out[k] += m[k] * m[n]
        for n in AUDIT_N:
            out[n] += m.get(n) or 0
    return out


def audit_rates(counts: dict[str, float]) -> dict[str, float]:
    """Pooled rates (NaN where nothing was counted) and the denominators."""
    return {**{k: counts[k] / counts[n] if counts[n] else math.nan for k, n in AUDIT.items()},
            **{n: counts[n] for n in AUDIT_N}}
