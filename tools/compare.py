"""Train every method of the paper's comparison on the same data and budget, then tabulate them.

    python tools/compare.py --plan examples/cpu_toy/compare/plan.yaml --out runs/compare [--jobs 2]

The plan (YAML) names a base config, the methods (`run.algorithm` presets), the students, the seeds
and any overrides. Each (student, method, seed) is one `pretrain_zppo.py` run in its own directory;
runs that already finished (summary.json present) are not run again, so an interrupted comparison
resumes. Then it writes, to --out:

- results.md / results.json: accuracy after training per method x student, in-corpus and
  out-of-corpus (held-out families, macro average), with 95% bootstrap intervals over questions
  and seeds; the "base" row is the students before training. Plus the buffer statistics the paper
  reports: graduation rate of questions admitted at 0% accuracy, overall graduation rate, BCQ and
  NCQ accuracy, and how often NCQ rollouts repeat an answer their prompt listed as wrong. Then the
  paper's analyses (docs/analyses.md): the fate of buffered questions by accuracy at admission and
  by number of re-samples (summary.json `buffer_fate`, summed over seeds), the BCQ/NCQ
  candidate-match audit (pooled over steps and seeds) and the mean time per step of each phase.
- results.png: the same accuracies as bars.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Student:
    name: str
    hf_path: str


@dataclass(frozen=True)
class Plan:
    config: str  # base config of every run
    methods: list[str] = field(default_factory=list)
    students: list[Student] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)  # key=value, applied to every run
    method_overrides: dict[str, list[str]] = field(default_factory=dict)  # per method, after `overrides`


def load_plan(path: str) -> Plan:
    from megatron_zppo.config import PRESETS
    from megatron_zppo.config_io import ConfigError, from_dict, load_tree

    plan = from_dict(Plan, load_tree(path, []))
    unknown = [m for m in plan.methods if m not in PRESETS]
    if unknown or not plan.methods or not plan.students or not plan.seeds:
        raise ConfigError(f"{path}: methods {unknown} unknown (expected run.algorithm presets: {sorted(PRESETS)}), "
                          "or methods/students/seeds empty")
    return plan


def run_dir(out: Path, student: str, method: str, seed: int) -> Path:
    return out / student / method / f"seed{seed}"


def one_run(plan: Plan, out: Path, student: Student, method: str, seed: int) -> tuple[str, float]:
    d = run_dir(out, student.name, method, seed)
    if (d / "summary.json").exists():
        return f"{d} (already done)", 0.0
    args = [sys.executable, str(ROOT / "pretrain_zppo.py"), "--config", plan.config, f"run.dir={d}",
            f"run.algorithm={method}", f"run.seed={seed}", f"student.hf_path={student.hf_path}",
            *plan.overrides, *plan.method_overrides.get(method, [])]
    # One thread per run: runs go side by side (--jobs), which beats intra-op threads on toy models.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TORCHDYNAMO_DISABLE": "1",
           "PYTHONPATH": str(ROOT)}
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(d / "log.txt", "w") as log:
        rc = subprocess.run(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"run {d} failed with exit code {rc}; see {d / 'log.txt'}")
    return str(d), time.perf_counter() - t0


# -- aggregation ------------------------------------------------------------------------------
def macro(sets: list[list[float]]) -> float:
    """Macro average: every evaluation set of a family weighs the same, whatever its size."""
    return sum(sum(c) / len(c) for c in sets) / len(sets)


def bootstrap(per_seed: list[list[list[float]]], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over seeds of a family's macro average, and its 95% interval: resample seeds, then the
    questions of each set within each drawn seed (both are sources of variance here).
    `per_seed[seed][set]` is the per-question correctness of one evaluation set."""
    rng = random.Random(seed)
    mean = sum(macro(s) for s in per_seed) / len(per_seed)
    stats = []
    for _ in range(n_boot):
        draws = [per_seed[rng.randrange(len(per_seed))] for _ in per_seed]
        stats.append(sum(macro([rng.choices(c, k=len(c)) for c in sets]) for sets in draws) / len(draws))
    stats.sort()
    return mean, stats[int(0.025 * n_boot)], stats[int(0.975 * n_boot) - 1]


def family_sets(summary: dict, when: str) -> dict[str, list[list[float]]]:
    """One run's per-question correctness (`when`: before/after training), grouped by family."""
    fam: dict[str, list[list[float]]] = {}
    for e in summary["eval"].values():
        if e.get(f"correct_{when}"):
            fam.setdefault(e["family"], []).append(e[f"correct_{when}"])
    return fam


def buffer_stats(metrics: list[dict]) -> dict[str, float]:
    last = metrics[-1]

    def rate(a, b):
        return last[a] / last[b] if last.get(b) else float("nan")

    def mean(key):
        vals = [m[key] for m in metrics if m.get(key) is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    return {"graduation_from_zero": rate("buffer_graduated_from_zero", "buffer_admitted_at_zero"),
            "graduation": rate("buffer_graduated", "buffer_admitted"), "admitted": last.get("buffer_admitted", 0),
            "acc_bcq": mean("acc_bcq"), "acc_ncq": mean("acc_ncq"), "acc_hint": mean("acc_hint"),
            "acc_prefix": mean("acc_prefix"),
            "ncq_repeats_listed_answer": mean("ncq_repeats_listed_answer"), "t_step": mean("t_step")}


EXTRAS = ("buffer", "generation", "fate", "graduation", "audit", "times")  # a row's keys that are not evaluation families


def phase_times(metrics: list[dict]) -> dict[str, float]:
    """Mean seconds per step of every `t_` metric, in the order the metrics lines have them."""
    keys = dict.fromkeys(k for m in metrics for k in m if k.startswith("t_"))
    return {k: _nanmean([m[k] for m in metrics if m.get(k) is not None]) for k in keys}


def fate_sum(tables: list[dict]) -> dict[str, dict[str, dict[str, int]]]:
    """Buffer fate tables (summary.json `buffer_fate`) added cell by cell, entry accuracies in order."""
    out: dict[str, dict[str, dict[str, int]]] = {"by_entry_accuracy": {}, "by_resamples": {}}
    for t in tables:
        for part, rows in t.items():
            for key, cells in rows.items():
                row = out[part].setdefault(key, {})
                for c, n in cells.items():
                    row[c] = row.get(c, 0) + n
    out["by_entry_accuracy"] = dict(sorted(out["by_entry_accuracy"].items(), key=lambda kv: float(kv[0])))
    return out


def graduation_intervals(fates: list[dict]) -> dict[str, dict]:
    """Graduation rate (graduated / admitted, entries still in the buffer count as not graduated) of
    the questions admitted at 0% accuracy and of all, with a 95% bootstrap interval over seeds and
    entries; `fates` are the seeds' summary.json `buffer_fate` tables. Seeds that admitted none are left out."""
    out = {}
    for name, keep in (("from_zero", lambda acc: float(acc) == 0.0), ("all", lambda acc: True)):
        per_seed = []
        for f in fates:
            cells = [c for acc, c in f.get("by_entry_accuracy", {}).items() if keep(acc)]
            n, g = sum(sum(c.values()) for c in cells), sum(c.get("graduated", 0) for c in cells)
            if n:
                per_seed.append([[1.0] * g + [0.0] * (n - g)])
        if per_seed:
            mean, lo, hi = bootstrap(per_seed)
            out[name] = {"mean": mean, "lo": lo, "hi": hi, "admitted": sum(len(s[0]) for s in per_seed)}
    return out


GENERATION = ("steps", "tokens_generated", "informative_fraction_before", "informative_fraction_after", "ds_rounds")


def generation_stats(metrics: list[dict]) -> dict[str, float]:
    """A run's steps and generated tokens, and its step means of the informative fractions and rounds."""
    def mean(key):
        return _nanmean([m[key] if m.get(key) is not None else float("nan") for m in metrics])

    return {"steps": len(metrics), "tokens_generated": sum(m.get("tokens_generated") or 0 for m in metrics),
            **{k: mean(k) for k in GENERATION[2:]}}


def method_extras(summaries: list[dict], metrics: list[list[dict]]) -> dict:
    """A method's buffer statistics, fate tables, audit and phase times over its seeds' runs."""
    from megatron_zppo.core.audit import audit_counts, audit_rates

    bufs = [buffer_stats(m) for m in metrics]
    counts = [audit_counts(m) for m in metrics]
    times = [phase_times(m) for m in metrics]
    phases = dict.fromkeys(k for t in times for k in t)
    fates = [s["buffer_fate"] for s in summaries if s.get("buffer_fate")]  # runs from before it: none
    return {"buffer": {k: _nanmean([b[k] for b in bufs]) for k in bufs[0]},
            "generation": {k: _nanmean([generation_stats(m)[k] for m in metrics]) for k in GENERATION},
            "fate": fate_sum(fates) if fates else {},
            "graduation": graduation_intervals(fates),
            "audit": audit_rates({k: sum(c[k] for c in counts) for k in counts[0]}),
            "times": {k: _nanmean([t.get(k, float("nan")) for t in times]) for k in phases}}


def aggregate(plan: Plan, out: Path) -> dict:
    from megatron_zppo.metrics import read_metrics

    results = {}
    for st in plan.students:
        rows = {}
        for method in ["base", *plan.methods]:
            src = plan.methods[0] if method == "base" else method
            when = "before" if method == "base" else "after"
            per_family: dict[str, list[list[list[float]]]] = {}
            summaries, metrics = [], []
            for seed in plan.seeds:
                d = run_dir(out, st.name, src, seed)
                summaries.append(json.loads((d / "summary.json").read_text()))
                for f, vals in family_sets(summaries[-1], when).items():
                    per_family.setdefault(f, []).append(vals)
                if method != "base":
                    metrics.append(read_metrics(d / "metrics.jsonl"))
            row = {f: dict(zip(("mean", "lo", "hi"), bootstrap(v))) for f, v in per_family.items()}
            if metrics:
                row.update(method_extras(summaries, metrics))
            rows[method] = row
        results[st.name] = rows
    return results


def _nanmean(xs):
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def markdown(results: dict, plan: Plan) -> str:
    fams = sorted({f for rows in results.values() for r in rows.values() for f in r if f not in EXTRAS})
    methods = list(next(iter(results.values())))
    lines = [f"Accuracy after training (%), mean over {len(plan.seeds)} seed(s) with a 95% bootstrap interval "
             "over seeds and questions; `base` is the student before training.", ""]
    for f in fams:
        lines += [f"**{f}**", "", "| method | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
        for m in methods:
            cells = []
            for rows in results.values():
                r = rows[m].get(f)
                cells.append(f"{100 * r['mean']:.1f} [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]" if r else "-")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["**Replay buffer and reformulated prompts** (mean over seeds; rates in %)", "",
              "| student | method | admitted | graduated (all) | graduated (admitted at 0%) | BCQ acc | NCQ acc | "
              "NCQ repeats a listed answer | Hint acc | Prefix acc | s/step |", "|---" * 11 + "|"]
    for st, rows in results.items():
        for m, r in rows.items():
            b = r.get("buffer")
            if b:
                lines.append(f"| {st} | {m} | {b['admitted']:.0f} | {_pct(b['graduation'])} | "
                             f"{_pct(b['graduation_from_zero'])} | {_pct(b['acc_bcq'])} | {_pct(b['acc_ncq'])} | "
                             f"{_pct(b['ncq_repeats_listed_answer'])} | {_pct(b['acc_hint'])} | "
                             f"{_pct(b['acc_prefix'])} | {b['t_step']:.2f} |")
    lines += generation_lines(results) + graduation_lines(results) + fate_lines(results) + resample_lines(results) + audit_lines(results) + time_lines(results)
    return "\n".join(lines) + "\n"


def _with_buffer(results: dict):
    """(student, method, fate tables) of the methods whose buffer admitted anything."""
    for st, rows in results.items():
        for m, r in rows.items():
            if any(sum(c.values()) for c in r.get("fate", {}).get("by_entry_accuracy", {}).values()):
                yield st, m, r["fate"]


def graduation_lines(results: dict) -> list[str]:
    rows = [(st, m, r["graduation"]) for st, rows in results.items() for m, r in rows.items() if r.get("graduation")]
    if not rows:
        return []
    lines = ["", "**Graduation rate with 95% intervals** (graduated / admitted, %; over seeds and buffer entries)", "",
             "| student | method | admitted at 0% | graduated | admitted, all | graduated |", "|---" * 6 + "|"]
    for st, m, g in rows:
        cells = [f"{g[k]['admitted']} | {100 * g[k]['mean']:.1f} [{100 * g[k]['lo']:.1f}, {100 * g[k]['hi']:.1f}]"
                 if k in g else "0 | -" for k in ("from_zero", "all")]
        lines.append(f"| {st} | {m} | " + " | ".join(cells) + " |")
    return lines


def fate_lines(results: dict) -> list[str]:
    lines = ["", "**Fate of buffered questions by accuracy at admission** (summed over seeds; % of the entries "
             "that left the buffer, graduated or evicted)", "",
             "| student | method | accuracy at admission | admitted | graduated | evicted | in buffer | graduated % | "
             "evicted % |", "|---" * 9 + "|"]
    for st, m, fate in _with_buffer(results):
        rows = fate["by_entry_accuracy"]
        total = {c: sum(r[c] for r in rows.values()) for c in ("graduated", "evicted", "in_buffer")}
        for key, r in [*((f"{100 * float(k):g}%", v) for k, v in rows.items()), ("all", total)]:
            done = r["graduated"] + r["evicted"]
            lines.append(f"| {st} | {m} | {key} | {done + r['in_buffer']} | {r['graduated']} | {r['evicted']} | "
                         f"{r['in_buffer']} | {_pct(_ratio(r['graduated'], done))} | "
                         f"{_pct(_ratio(r['evicted'], done))} |")
    return lines


def resample_lines(results: dict) -> list[str]:
    lines = ["", "**Fate of buffered questions by re-samples** (times a question was rolled out again after "
             "admission; summed over seeds; % of the entries that left the buffer after that many)", "",
             "| student | method | re-samples | graduated | improved, not graduated | never improved | in buffer |",
             "|---" * 7 + "|"]
    for st, m, fate in _with_buffer(results):
        for key, r in fate["by_resamples"].items():
            done = r["graduated"] + r["improved"] + r["never_improved"]
            if done + r["in_buffer"]:
                cells = [f"{r[c]} ({_pct(_ratio(r[c], done))})" for c in ("graduated", "improved", "never_improved")]
                lines.append(f"| {st} | {m} | {key} | " + " | ".join(cells) + f" | {r['in_buffer']} |")
    return lines


def audit_lines(results: dict) -> list[str]:
    from megatron_zppo.core.audit import AUDIT_N, MATCHES

    lines = ["", "**Candidate-match audit** (final answers against the candidates shown; pooled over steps and "
             "seeds; %; n = rollouts)", "",
             "| student | method | BCQ correct n | pos | neg | other | BCQ wrong n | pos | neg | other | NCQ n | "
             "listed (neg) | teacher's (pos) | other |", "|---" * 14 + "|"]
    for st, rows in results.items():
        for m, r in rows.items():
            a = r.get("audit")
            if a and any(a[n] for n in AUDIT_N):
                bcq = [f"{a[f'bcq_audit_n_{g}']:.0f} | " + " | ".join(_pct(a[f"bcq_{k}_{g}"]) for k in MATCHES)
                       for g in ("correct", "wrong")]
                ncq = " | ".join(_pct(a[k]) for k in ("ncq_match_neg", "ncq_match_pos", "ncq_other"))
                lines.append(f"| {st} | {m} | {' | '.join(bcq)} | {a['ncq_audit_n']:.0f} | {ncq} |")
    return lines


def generation_lines(results: dict) -> list[str]:
    lines = ["", "**Generation** (mean over seeds): steps run, student tokens generated, the share of samples "
             "in groups with a gradient, rolled out and trained (step means), rounds per step (dynamic sampling)",
             "", "| student | method | steps | tokens generated | informative, rolled out | informative, trained "
             "| rounds per step |", "|---" * 7 + "|"]
    for st, rows in results.items():
        for m, r in rows.items():
            if g := r.get("generation"):
                rounds = "-" if g["ds_rounds"] != g["ds_rounds"] else f"{g['ds_rounds']:.2f}"
                lines.append(f"| {st} | {m} | {g['steps']:.1f} | {g['tokens_generated']:,.0f} | "
                             f"{_pct(g['informative_fraction_before'])} | {_pct(g['informative_fraction_after'])} | "
                             f"{rounds} |")
    return lines


def time_lines(results: dict) -> list[str]:
    cols = list(dict.fromkeys(k for rows in results.values() for r in rows.values() for k in r.get("times", {})))
    lines = ["", "**Time per step by phase** (seconds, mean over steps and seeds)", "",
             "| student | method | " + " | ".join(c.removeprefix("t_") for c in cols) + " |",
             "|---" * (len(cols) + 2) + "|"]
    for st, rows in results.items():
        for m, r in rows.items():
            if r.get("times"):
                lines.append(f"| {st} | {m} | " + " | ".join(_secs(r["times"].get(c, float("nan"))) for c in cols)
                             + " |")
    return lines


def _ratio(k, n):
    return k / n if n else float("nan")


def _secs(x):
    return "-" if x != x else f"{x:.2f}"


def _pct(x):
    return "-" if x != x else f"{100 * x:.1f}"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = sorted({f for rows in results.values() for r in rows.values() for f in r if f not in EXTRAS})
    fig, axes = plt.subplots(len(results), len(fams), figsize=(5 * len(fams), 3.2 * len(results)), squeeze=False)
    for i, (st, rows) in enumerate(results.items()):
        for j, f in enumerate(fams):
            ax, names = axes[i][j], [m for m in rows if f in rows[m]]
            means = [100 * rows[m][f]["mean"] for m in names]
            err = [[100 * (rows[m][f]["mean"] - rows[m][f]["lo"]) for m in names],
                   [100 * (rows[m][f]["hi"] - rows[m][f]["mean"]) for m in names]]
            ax.bar(range(len(names)), means, yerr=err, capsize=3,
                   color=["tab:gray" if m == "base" else "tab:green" if m == "zppo" else "tab:blue" for m in names])
            ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
            ax.set_title(f"{st}: {f}", fontsize=9)
            ax.set_ylabel("accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (one thread each)")
    args = ap.parse_args(argv)
    plan, out = load_plan(args.plan), Path(args.out)
    jobs = [(st, m, s) for s in plan.seeds for st in plan.students for m in plan.methods]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for i, (d, secs) in enumerate(pool.map(lambda j: one_run(plan, out, *j), jobs)):
            print(f"[{i + 1}/{len(jobs)}] {d}  {secs:.0f}s  (elapsed {time.perf_counter() - t0:.0f}s)", flush=True)
    results = aggregate(plan, out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results, plan)
    (out / "results.md").write_text(table)
    plot(results, out / "results.png")
    print(table)
    print(f"{len(jobs)} runs in {time.perf_counter() - t0:.0f}s; tables in {out / 'results.md'}, "
          f"plot in {out / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
