"""Run a tests/train worker script under torchrun and collect what each rank saved."""

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def run_worker(worker: str, hf_dir: str, out: Path, nproc: int, *args: str) -> list[dict]:
    """`torchrun --standalone` of tests/train/<worker> with --hf-dir/--out; returns rank{r}.pt files."""
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "tests" / "train" / worker), "--hf-dir", hf_dir, "--out", str(out), *args]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
