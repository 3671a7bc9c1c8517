"""The Dockerfile's steps, run for real (tools/replay_dockerfile.py) against stand-ins for the NGC
image: the trainer venv as the image's preinstalled packages, this lane's SGLang venv for /opt/sglang."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_dockerfile_step_runs(tmp_path):
    proc = subprocess.run([sys.executable, "tools/replay_dockerfile.py", "--root", str(tmp_path / "root"),
                           "--sglang-env", str(REPO / ".venv-sglang")], cwd=REPO, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "every step of" in proc.stdout
    assert (tmp_path / "root" / "tmp" / "torch-version").read_text().strip()  # step 1 ran its torch check
    assert (tmp_path / "root" / "opt" / "megatron_zppo" / "pretrain_zppo.py").exists()  # step 3 copied the job
