"""The lent GPU machine's run of the GPU check, rehearsed on CPU (tools/gpu_rehearsal.sh): a venv holding
only what that machine holds (transformers 5.17, no Megatron, no project install), the wheels of
tools/gpu_wheels.sh installed as tools/gpu_check.sh installs them there, from a copy of the tree of at
most 64 MiB. This proves the install recipe and every import before a lease is spent.

Needs a package registry (the venv and the wheels are fetched once, then cached in
~/.cache/megatron_zppo/gpu-rehearsal): CI has one, as scripts/install.sh does.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.scale.test_gpu_check import check_smoke_report

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_check_runs_with_the_devices_packages_and_the_carried_wheels_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run(["bash", str(REPO / "tools/gpu_rehearsal.sh"), "--steps", "1", "--warmup", "1"],
                         env={**env, "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=880)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    # The carried-wheel path was the one taken, under the device's transformers, not the project's.
    assert re.search(r"gpu_check.sh: installed \d+ carried wheels into /tmp/", log), log[-3000:]
    assert re.search(r"gpu_check.sh: \S*/venv-\w+/bin/python3?: torch [\d.]+\S*, transformers 5\.17\.0, "
                     r"CUDA False", log), log[-3000:]
    kib = int(re.search(r"tree as the device tool would send it: (\d+) KiB", log).group(1))
    assert kib < 64 * 1024
    report = (tmp_path / "gpu_check.md").read_text()
    assert "megatron-core 0.19.2, megatron-bridge 0.6.2, transformers 5.17.0" in report
    check_smoke_report(report)
