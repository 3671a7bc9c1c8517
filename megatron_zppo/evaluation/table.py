"""Results laid out as the paper's tables: per family, a row per model, a column per benchmark
and the family's average, scores in percent with one decimal; a Δ row (one model minus the
strongest other in each column); intervals from resampling benchmarks, with win counts.

Input is what `suite.run_suite` returns (results.json of tools/evaluate.py), one per model.
"""

from __future__ import annotations

from pathlib import Path

from megatron_zppo.core.scores import paired_delta


def _columns(runs: dict[str, dict], family: str) -> list[tuple[str, str]]:
    """(benchmark, label) of `family`, in the first run's order, then any the others add."""
    cols: dict[str, str] = {}
    for r in runs.values():
        for name, e in r["benchmarks"].items():
            if e["family"] == family:
                cols.setdefault(name, e.get("label") or name)
    return list(cols.items())


def family_names(runs: dict[str, dict]) -> list[str]:
    return list(dict.fromkeys(e["family"] for r in runs.values() for e in r["benchmarks"].values()))


def _cell(r: dict, name: str) -> float | None:
    e = r["benchmarks"].get(name)
    return None if e is None else 100 * e["score"]


def family_table(runs: dict[str, dict], family: str, delta_of: str = "") -> tuple[str, dict]:
    """The Markdown table of one family and the same as data."""
    cols = _columns(runs, family)
    head = ["model", *[label for _, label in cols], "Avg"]
    rows, data = [], {}
    for model, r in runs.items():
        cells = [_cell(r, name) for name, _ in cols]
        avg = r["families"].get(family, {}).get("mean")
        data[model] = {"scores": dict(zip([n for n, _ in cols], cells)), "avg": None if avg is None else 100 * avg}
        rows.append([model, *cells, data[model]["avg"]])
    if delta_of and delta_of in runs and len(runs) > 1:
        others = [m for m in runs if m != delta_of]
        delta = ["Δ"]
        for j in range(1, len(head)):
            mine = rows[list(runs).index(delta_of)][j]
            best = max((row[j] for row in rows if row[0] in others and row[j] is not None), default=None)
            delta.append(None if mine is None or best is None else mine - best)
        data["Δ"] = dict(zip(head[1:], delta[1:]))
        rows.append(delta)
    fmt = lambda v, signed=False: "–" if v is None else (f"{v:+.1f}" if signed else f"{v:.1f}")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([row[0], *(fmt(v, row[0] == "Δ") for v in row[1:])]) + " |" for row in rows]
    return "\n".join(lines), data


def delta_intervals(runs: dict[str, dict], family: str, delta_of: str, n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """`delta_of` against every other model on `family`: the macro-average difference with its
    interval from resampling benchmarks (the same resamples for every comparison) and win counts."""
    mine = {n: e["score"] for n, e in runs[delta_of]["benchmarks"].items() if e["family"] == family}
    out = []
    for model, r in runs.items():
        theirs = {n: e["score"] for n, e in r["benchmarks"].items() if e["family"] == family}
        if model == delta_of or not set(mine) & set(theirs):
            continue
        d = paired_delta(mine, theirs, n_boot=n_boot, seed=seed)
        out.append({"against": model, "delta": 100 * d.delta, "ci95": [100 * d.interval[0], 100 * d.interval[1]],
                    "wins": d.wins, "n": d.n})
    return out


def report(runs: dict[str, dict], delta_of: str = "", n_boot: int = 10000) -> tuple[str, dict]:
    """Markdown for every family (table, family intervals, Δ intervals) and the same as data."""
    parts, data = [], {}
    for fam in family_names(runs):
        md, table = family_table(runs, fam, delta_of)
        parts += [f"### {fam}", "", md, ""]
        intervals = {m: r["families"][fam] for m, r in runs.items() if fam in r["families"]}
        parts += ["| model | Avg | 95% CI over questions | over benchmarks | over both |", "|---|---|---|---|---|"]
        parts += [f"| {m} | {100 * f['mean']:.1f} | " + " | ".join(
            f"{100 * f[k][0]:.1f}–{100 * f[k][1]:.1f}" for k in ("ci95_questions", "ci95_benchmarks", "ci95_both"))
            + " |" for m, f in intervals.items()]
        deltas = delta_intervals(runs, fam, delta_of, n_boot) if delta_of in runs else []
        if deltas:
            parts += ["", f"| {delta_of} minus | Δ Avg | 95% CI (benchmarks resampled) | wins |", "|---|---|---|---|"]
            parts += [f"| {d['against']} | {d['delta']:+.1f} | {d['ci95'][0]:+.1f} to {d['ci95'][1]:+.1f} | "
                      f"{d['wins']}/{d['n']} |" for d in deltas]
        parts.append("")
        data[fam] = {"table": table, "intervals": intervals, "deltas": deltas}
    return "\n".join(parts), data


def plot(runs: dict[str, dict], path: str | Path) -> None:
    """Family averages per model, with the interval over benchmarks as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams, models = family_names(runs), list(runs)
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(fams), 3.5))
    for i, m in enumerate(models):
        f = runs[m]["families"]
        xs = [k + i * width for k, fam in enumerate(fams) if fam in f]
        means = [100 * f[fam]["mean"] for fam in fams if fam in f]
        err = [[100 * (f[fam]["mean"] - f[fam]["ci95_benchmarks"][0]) for fam in fams if fam in f],
               [100 * (f[fam]["ci95_benchmarks"][1] - f[fam]["mean"]) for fam in fams if fam in f]]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=m)
    ax.set_xticks([k + width * (len(models) - 1) / 2 for k in range(len(fams))], fams)
    ax.set_ylabel("family average (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
