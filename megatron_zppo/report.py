"""What a run says and writes, on the rank that holds the engines (`Report`; `Silent` elsewhere):
the evaluations before, during and after training, one metrics line per step (metrics.py), the
problems of a step on the terminal, and at the end summary.json, the curves and the summary table.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from megatron_zppo import build
from megatron_zppo.config import Config
from megatron_zppo.evaluate import evaluate
from megatron_zppo.loop import RolloutPhase, Rollouts, rollout_metrics
from megatron_zppo.core.audit import AUDIT_N, audit_counts, audit_rates
from megatron_zppo.metrics import TRAIN_STATS, MetricsLogger, plot, read_metrics, summary_table
from megatron_zppo.overlap import staleness_metrics, versions_behind

TIMES = ("rollout", "reward", "teacher", "zppo", "train", "sync")


def make_report(cfg: Config, phase: RolloutPhase | None, run_dir: Path, start: int, summary: dict):
    """Rank 0's report (it holds the engines the evaluations use); a silent one elsewhere. Made
    after the first weight sync: the evaluation before training uses the synced weights."""
    return Report(cfg, phase, run_dir, start, summary) if phase is not None else Silent()


class Report:
    def __init__(self, cfg: Config, phase: RolloutPhase, run_dir: Path, start: int, summary: dict):
        self.cfg, self.phase, self.dir, self.summary = cfg, phase, run_dir, summary
        self.logger = MetricsLogger(run_dir, cfg.run.steps, start)
        self.families: dict[str, float] = {}  # the last suite evaluation's family averages
        self.suite_questions: dict = {}  # data.eval_suite's questions, converted once
        self.summary.setdefault("eval_families", {})
        if start == 0:
            self.summary["eval"] = {k: {"family": v["family"], "n": v["n"], "before": v["accuracy"],
                                        "ci95_before": v["ci95"], "correct_before": v["correct"]}
                                    for k, v in self.evals().items()}
            self.summary["eval_families"] = {f: {"before": m} for f, m in self.families.items()}

    def step(self, r: Rollouts, stats: dict[str, float], times: dict[str, float], t_start: float) -> None:
        p = self.phase
        m = {**dict.fromkeys(TRAIN_STATS, float("nan")), **rollout_metrics(r, p.buffer),
             **p.hard_prompts.metrics(r), **p.objective.metrics(r), **stats}
        m.update({f"t_{k}": times.get(k, 0.0) for k in TIMES})
        m.update(self.periodic_evals(r.step))
        m.update(p.student.sync_metrics())  # SGLang students: sync_s, sync_bytes, sync_gb_per_s, sync_servers
        # generations a server aborted unasked and that were made again from their prompt, so far (0: none lost)
        m["partial_generations_lost"] = p.student.stats.extra.get("partial_generations_lost", 0.0)
        if hasattr(p.student, "fault_metrics"):  # a pool of servers: losses, returns, resubmitted requests
            m.update({f"student_{k}": v for k, v in p.student.fault_metrics().items()})
        m["rollout_versions_behind"] = versions_behind(r, r.step)
        if "overlap_wait" in times:  # one_step: how long the trainer waited for the next rollouts; async: the pause
            m["t_overlap_wait"] = times["overlap_wait"]
        if "stream_wait" in times:  # async: how long the step waited for its batch, and its tokens' versions
            m["t_stream_wait"] = times["stream_wait"]
            m.update(staleness_metrics(r, r.step))
        m["t_step"] = time.perf_counter() - t_start
        m["tokens_per_s"] = m["tokens_generated"] / max(m["t_rollout"], 1e-9)
        self.logger.log(m)
        self.problems(r)

    def evals(self) -> dict[str, dict]:
        from megatron_zppo.data import load_questions

        cfg, p, out = self.cfg, self.phase, {}
        sampling = build.eval_sampling(cfg.eval, cfg.run.seed + 7)
        for name, sources in cfg.data.eval.items():
            qs = load_questions(sources, log=lambda *_: None)
            r = evaluate(p.student, p.encode, p.templates, qs, p.graders, sampling, cfg.eval.samples_per_question)
            out[name] = {"accuracy": r.accuracy, "n": r.n, "ci95": [r.ci_low, r.ci_high], "correct": list(r.correct),
                         "family": "held_out" if name in cfg.data.held_out else "in_corpus"}
        if cfg.data.eval_suite:  # the suite's benchmarks, graded by their protocols; the teacher judges
            from megatron_zppo.evaluation.suite import load_suite, run_suite

            result = run_suite(load_suite(cfg.data.eval_suite, cfg.data.eval_data_root), p.student, p.encode,
                               p.eval_judge, log=lambda *_: None, loaded=self.suite_questions)
            for name, e in result["benchmarks"].items():
                out[name] = {"accuracy": e["score"], "n": e["n"], "ci95": e["ci95"], "family": e["family"],
                             "correct": [s for part in e["parts"] for s in part["scores"]]}
            self.families = {f: v["mean"] for f, v in result["families"].items()}
        return out

    def periodic_evals(self, step: int) -> dict[str, float]:
        """Every `run.eval_every` steps (not after the last: the final evaluation follows), the eval
        sets' accuracies: into this step's metrics (and so TensorBoard) and the summary."""
        every = self.cfg.run.eval_every
        if not every or (step + 1) % every or step + 1 == self.cfg.run.steps:
            return {}
        out = {}
        for name, r in self.evals().items():
            out[f"eval_{name}"] = r["accuracy"]
            entry = self.summary["eval"].setdefault(name, {"family": r["family"], "n": r["n"], "before": None})
            entry.setdefault("during", []).append({"step": step + 1, "accuracy": r["accuracy"], "ci95": r["ci95"]})
        for fam, mean in self.families.items():  # a suite's family averages (the paper's Avg columns)
            out[f"eval_family_{fam}"] = mean
            self.summary["eval_families"].setdefault(fam, {"before": None}).setdefault("during", []).append(
                {"step": step + 1, "mean": mean})
        return out

    def problems(self, r: Rollouts) -> None:
        """Grades that failed (scored 0) and prompts that were dropped: counted in the summary and
        said on the terminal, every step they happen."""
        failed = {k: v for k, v in r.grade_failures.items() if v}
        totals = self.summary.setdefault("grader_failures", {})
        for k, v in failed.items():
            totals[k] = totals.get(k, 0) + v
        if failed:
            counts = ", ".join(f"{v} {k.removeprefix('grader_')}" for k, v in failed.items())
            print(f"  warning: step {r.step}: grades scored 0 after failing ({counts}); first: "
                  f"{self.phase.graders.stats.first_problem}", flush=True)
        for why in r.dropped:
            print(f"  warning: step {r.step}: dropped {why}", flush=True)
        for note in r.notes:
            print(f"  step {r.step}: {note}", flush=True)

    def stopped(self, signal_name: str, steps_done: int, checkpoint: Path) -> None:
        self.logger.close()
        print(f"pretrain_zppo: stopped by {signal_name} after step {steps_done} of {self.cfg.run.steps}; "
              f"checkpoint {checkpoint}; resume with --load auto", flush=True)

    def finish(self) -> None:
        """The evaluation after training, summary.json, the curves and the summary table."""
        for name, r in self.evals().items():
            entry = self.summary["eval"].setdefault(name, {"family": r["family"], "n": r["n"], "before": None})
            entry.update(after=r["accuracy"], ci95_after=r["ci95"], correct_after=r["correct"])  # per question
        for fam, mean in self.families.items():
            self.summary["eval_families"].setdefault(fam, {"before": None})["after"] = mean
        self.summary["buffer_fate"] = self.phase.buffer.fate_tables()  # docs/analyses.md
        metrics = read_metrics(self.dir / "metrics.jsonl") if (self.dir / "metrics.jsonl").exists() else []
        counts = audit_counts(metrics)
        if any(counts[n] for n in AUDIT_N):  # the candidate-match audit, over the run's steps (ZPPO)
            self.summary["candidate_audit"] = audit_rates(counts)
        self.summary["informative"] = informative_summary(metrics)
        (self.dir / "summary.json").write_text(json.dumps(finite(self.summary), indent=2))
        if metrics:
            plot(metrics, self.dir / "curves.png")
        print(summary_table(self.summary))
        print(f"run directory: {self.dir}\n  metrics: {self.dir / 'metrics.jsonl'}\n  plot: {self.dir / 'curves.png'}"
              f"\n  tensorboard: tensorboard --logdir {self.dir / 'tensorboard'}")
        print(" ".join(f"{k}={v:.3f}" for k, v in self.summary["informative"].items()))
        self.logger.close()


class Silent:
    """The report of a rank that holds no engines: the run's numbers are rank 0's to write."""

    def step(self, r, stats, times, t_start) -> None:
        pass

    def stopped(self, signal_name, steps_done, checkpoint) -> None:
        pass

    def finish(self) -> None:
        pass


def informative_summary(metrics: list[dict]) -> dict[str, float]:
    """The run's share of samples with a gradient, rolled out and trained (the step means), and
    under dynamic sampling its rounds per step and the tokens its further rounds added."""
    def mean(key):
        xs = [m[key] for m in metrics if m.get(key) is not None]  # NaN is written as null
        return sum(xs) / len(xs) if xs else float("nan")

    out = {k: mean(k) for k in ("informative_fraction_before", "informative_fraction_after")}
    if any("ds_rounds" in m for m in metrics):
        out["rounds_per_step"] = mean("ds_rounds")
        out["extra_tokens_fraction"] = sum(m["ds_extra_tokens"] for m in metrics) / max(
            sum(m["tokens_generated"] - m["ds_extra_tokens"] for m in metrics), 1)
    return out


def finite(x):
    """JSON has no NaN: an undefined figure (an empty eval set) is written as null."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x
