"""Quiet by default: a short run's terminal shows our progress and tables; upstream chatter goes to
<run.dir>/upstream.log (megatron_zppo/upstream_log.py)."""

import os
import re
import subprocess
import sys

from megatron_zppo import upstream_log
from tests.loop.test_pretrain_e2e import ROOT

# What upstream packages print on every run when nothing routes it.
UPSTREAM = re.compile(r"^(INFO|WARNING|DEBUG):|UserWarning|FutureWarning|DeprecationWarning|FP8GlobalStateManager|"
                      r"number of parameters|OptimizerConfig\(|Loading weights|Traceback")


def assert_quiet(proc, run_dir, steps: int) -> None:
    """A finished run's terminal: progress lines, the eval table, the run directory; nothing upstream.
    Called by the end-to-end tests of real runs (test_real_model_e2e.py), which pay for the run."""
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not [ln for ln in lines if UPSTREAM.search(ln)], "\n".join(lines)
    # A progress line per step, the eval table (header + one row per set), the run directory's 4 lines.
    assert len(lines) <= steps + 10, "\n".join(lines)
    assert sum(f"/{steps} " in ln and "step " in ln for ln in lines) == steps and "eval set" in proc.stdout
    logged = (run_dir / "upstream.log").read_text()
    assert "number of parameters" in logged  # Megatron's print() landed in the file ...
    assert "py.warnings" in logged  # ... and so did upstream warnings


def test_the_bridge_import_traceback_and_warnings_go_to_the_file_and_our_prints_to_the_terminal(tmp_path):
    script = ("import warnings; from megatron_zppo import upstream_log; upstream_log.route(%r)\n"
              "from megatron_zppo.train import cpu_compat; cpu_compat.enable()\n"
              "from megatron.bridge import AutoBridge\n"
              "warnings.warn('an upstream-style warning')\n"
              "print('ours')" % str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "TORCHDYNAMO_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "ours\n" and proc.stderr == ""
    logged = (tmp_path / "upstream.log").read_text()
    assert "FP8GlobalStateManager" in logged and "an upstream-style warning" in logged


def test_the_router_sends_upstream_writes_to_the_log_and_ours_to_the_terminal(tmp_path):
    import io

    terminal, log = io.StringIO(), io.StringIO()
    router = upstream_log._Router(terminal, log)
    upstream = {"__name__": "megatron.core.utils", "out": router}
    exec("print('> number of parameters: 3', file=out)", upstream)
    exec("print('step 1/2', file=out)", {"__name__": "megatron_zppo.metrics", "out": router})
    assert log.getvalue() == "> number of parameters: 3\n" and terminal.getvalue() == "step 1/2\n"
    assert upstream_log.log_path(tmp_path, 0).name == "upstream.log"
    assert upstream_log.log_path(tmp_path, 1).name == "upstream.rank1.log"
