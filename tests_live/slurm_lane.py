"""The Slurm lane's checks (scripts/slurm_lane.sh runs them after its two jobs; not a pytest file).

    python tests_live/slurm_lane.py --lane runs/slurm_lane --straight JOB --preempted JOB

Job states come from slurmctld (`scontrol show job`) and the job-completion log, since the lane has no
accounting database for sacct. Every check names what it expected; the first that fails ends the run (exit 1).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megatron_zppo.metrics import read_metrics  # noqa: E402

STEPS = 4  # the lane's recipe: run.steps=4, run.save_every=1
TIMING = re.compile(r"^t_|^tokens_per_s$")  # wall-clock figures: the only keys allowed to differ


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"slurm_lane.py: FAILED: {what}")


def job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=15,
                         check=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def ended_as_completed(lane: Path, job_id: str, restarts: int) -> None:
    j = job(job_id)
    check(j["JobState"] == "COMPLETED" and j["ExitCode"] == "0:0", f"job {job_id} COMPLETED with exit code 0:0, "
          f"got {j['JobState']} {j['ExitCode']} (log {lane / (j['JobName'].removeprefix('lane-') + '.out')})")
    check(j["Restarts"] == str(restarts), f"job {job_id} ran {restarts + 1} time(s), got Restarts={j['Restarts']}")
    check(j["NumNodes"] == "2" and j["NodeList"] == "n[1-2]", f"job {job_id} on both nodes n[1-2], "
          f"got NumNodes={j['NumNodes']} NodeList={j['NodeList']}")
    records = [line for line in (lane / "log" / "jobcomp.txt").read_text().splitlines()
               if line.startswith(f"JobId={job_id} ")]
    check(bool(records) and "JobState=COMPLETED" in records[-1], f"job {job_id}'s last completion record says "
          f"COMPLETED, got {records[-1:]}")


def run_checks(lane: Path, name: str) -> tuple[str, list[dict]]:
    """(the job's output, its per-step metrics) after the checks every finished run must pass."""
    log = (lane / f"{name}.out").read_text()
    run = lane / name
    # torchrun reports a rank that exits 143 with a traceback of its own: only the trainer's would be a failure.
    check("pretrain_zppo.py\", line" not in log and "EOFError" not in log,
          f"no traceback from the trainer in {lane / name}.out")
    check(f"run directory: runs/slurm_lane/{name}" in log, f"the trainer's closing report in {lane / name}.out")
    # Two torchrun agents (one per Slurm node) made one world of two ranks: rank 1 logs beside rank 0.
    check((run / "upstream.rank1.log").exists(), f"rank 1 (the second node's trainer) ran: {run}/upstream.rank1.log")
    metrics = read_metrics(run / "metrics.jsonl")
    check([m["step"] for m in metrics] == list(range(STEPS)), f"{run}/metrics.jsonl holds steps 0..{STEPS - 1} "
          f"once each, got {[m['step'] for m in metrics]}")
    latest = (run / "checkpoints" / "latest").read_text().strip()
    check(latest == f"step_{STEPS:06d}", f"{run}'s latest checkpoint is step_{STEPS:06d}, got {latest}")
    return log, metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lane", type=Path, required=True)
    ap.add_argument("--straight", required=True)
    ap.add_argument("--preempted", required=True)
    a = ap.parse_args(argv)

    ended_as_completed(a.lane, a.straight, restarts=0)
    _, straight = run_checks(a.lane, "straight")

    ended_as_completed(a.lane, a.preempted, restarts=1)
    log, resumed = run_checks(a.lane, "preempted")
    # The first run: the batch script got Slurm's SIGTERM, the trainer stopped after step k with a checkpoint...
    check(log.count("zppo.sbatch: SIGTERM (time limit or preemption)") >= 1, "the batch script's TERM trap ran")
    stopped = re.findall(r"pretrain_zppo: stopped by SIGTERM after step (\d+)", log)
    check(len(stopped) == 1, f"the trainer stopped once on SIGTERM, got {stopped}")
    k = int(stopped[0])
    check(1 <= k < STEPS, f"it stopped mid-run (1 <= step {k} < {STEPS})")
    check((a.lane / "preempted" / "checkpoints" / f"step_{k:06d}").is_dir(), f"a checkpoint at step {k}")
    # ... and the requeued run (SLURM_RESTART_COUNT=1: run.load=auto) took up from that checkpoint.
    resumed_at = re.findall(r"resumed from (\S+) at step (\d+)", log)
    check(len(resumed_at) == 1 and resumed_at[0][1] == str(k) and resumed_at[0][0].endswith(f"step_{k:06d}"),
          f"the requeued run resumed once, from step_{k:06d}; got {resumed_at}")
    check(log.count("run.load=auto: no checkpoint") == 0, "the requeued run found the checkpoint")

    # Equal to the uninterrupted run, step by step, to the last bit of every figure but wall-clock times.
    for s, (m, r) in enumerate(zip(straight, resumed)):
        keys = {key for key in m.keys() | r.keys() if not TIMING.search(key)}
        diff = sorted(key for key in keys if m.get(key) != r.get(key))
        check(not diff, f"step {s}: the requeued job's metrics equal the straight job's; differ: "
              + ", ".join(f"{key} {m.get(key)!r} vs {r.get(key)!r}" for key in diff))
    print(f"slurm_lane.py: both jobs COMPLETED on n[1-2]; job {a.preempted} stopped after step {k}, was requeued, "
          f"resumed from step_{k:06d} and its {STEPS} steps' metrics equal job {a.straight}'s "
          f"({len(keys)} figures per step, wall-clock times aside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
