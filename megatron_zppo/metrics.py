"""Where a run's numbers go: metrics.jsonl (one line per rollout step), TensorBoard, the console,
and at the end a summary table and a PNG of the main curves."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

REQUIRED = (
    "step", "n_new", "n_replay", "n_hard", "n_bcq", "n_ncq", "buffer_size", "buffer_admitted", "buffer_graduated",
    "buffer_evicted", "acc_plain", "acc_bcq", "acc_ncq", "teacher_acc_hard", "reward_mean", "loss", "clip_frac",
    "entropy", "grad_norm", "logprob_diff_mean", "tokens_generated", "t_rollout", "t_teacher", "t_zppo", "t_train",
    "t_sync", "t_step",
)
TRAIN_STATS = ("loss", "clip_frac", "entropy", "grad_norm", "logprob_diff_mean")  # absent in rollout_only
PLOTTED = ("acc_plain", "acc_bcq", "acc_ncq", "buffer_size", "loss", "logprob_diff_mean")


def _json_value(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


class MetricsLogger:
    def __init__(self, run_dir: str | Path, total_steps: int, start_step: int = 0, tensorboard: bool = True):
        self.dir = Path(run_dir)
        self.path = self.dir / "metrics.jsonl"
        self.total, self.start = total_steps, start_step
        self.t0 = time.perf_counter()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        self._truncate_after(start_step)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps after the checkpoint: they will be produced again."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] < step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def log(self, m: dict) -> None:
        missing = [k for k in REQUIRED if k not in m]
        if missing:
            raise KeyError(f"metrics of step {m.get('step')} lack {missing}")
        with self.path.open("a") as f:
            f.write(json.dumps({k: _json_value(v) for k, v in m.items()}) + "\n")
        if self._tb is not None:
            for k, v in m.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, m["step"])
            self._tb.flush()
        self._progress(m)

    def _progress(self, m: dict) -> None:
        done = m["step"] + 1 - self.start
        left = self.total - m["step"] - 1
        eta = (time.perf_counter() - self.t0) / max(done, 1) * left
        width = 24
        filled = int(width * (m["step"] + 1) / max(self.total, 1))
        print(f"[{'#' * filled}{'.' * (width - filled)}] step {m['step'] + 1}/{self.total}  "
              f"reward {m['reward_mean']:.3f}  acc plain/bcq/ncq {_f(m['acc_plain'])}/{_f(m['acc_bcq'])}/"
              f"{_f(m['acc_ncq'])}  buffer {m['buffer_size']}  {m['t_step']:.1f}s/step  eta {eta / 60:.1f} min",
              flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _f(x) -> str:
    return "  - " if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2f}"


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def plot(metrics: list[dict], out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    steps = [m["step"] + 1 for m in metrics]
    for ax, key in zip(axes.flat, PLOTTED):
        ys = [m.get(key) for m in metrics]
        ax.plot(steps, [float("nan") if y is None else y for y in ys], marker=".")
        ax.set_title(key)
        ax.set_xlabel("rollout step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def summary_table(summary: dict) -> str:
    """Accuracy before/after per evaluation set, as aligned text for the console."""
    rows = [("eval set", "family", "n", "before", "after")]
    for name, r in summary["eval"].items():
        rows.append((name, r["family"], str(r["n"]), _f(r["before"]), _f(r["after"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
