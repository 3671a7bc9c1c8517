"""The effect experiment's one command at smoke size: `examples/pair_sum/compare/run.sh --smoke`
builds the pair_sum world's models (a few steps; they learn nothing), measures the BCQ premise and
runs its comparison plan end to end (2 steps of GRPO with buffer and of ZPPO), then writes the tables.
The full run's figures are docs/RESULTS.md's; this checks that the pipeline that makes them runs."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_the_effect_pipeline_runs_end_to_end_and_writes_its_tables(tmp_path):
    out = tmp_path / "effect"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "examples/pair_sum/compare/run.sh", "--smoke", "--out", str(out), "--jobs", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "models" / "MANIFEST.json").read_text())
    assert set(manifest["models"]) == {"teacher", "student_tiny"}
    assert set(manifest["models"]["teacher"]["accuracy"]) == {"pair_sum_train", "pair_sum", "chain_sum", "products",
                                                               "letter_counting"}
    figures = json.loads((out / "premise" / "premise.json").read_text())["figures"]
    assert figures["questions"] == 4 and 0 <= figures["hard_questions"] <= 4
    results = json.loads((out / "compare" / "results.json").read_text())["tiny"]
    assert list(results) == ["base", "grpo_buffer", "zppo"]
    for method in ("grpo_buffer", "zppo"):
        assert {"in_corpus", "held_out", "buffer"} <= set(results[method])
        steps = (out / "compare" / "tiny" / method / "seed0" / "metrics.jsonl").read_text().splitlines()
        assert len(steps) == 2
    table = (out / "compare" / "results.md").read_text()
    assert "| zppo |" in table and (out / "compare" / "results.png").stat().st_size > 0
    # A second call finds everything done: the models cached, no run repeated.
    again = subprocess.run(["bash", "examples/pair_sum/compare/run.sh", "--smoke", "--out", str(out), "--jobs", "1"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "cached" in again.stdout and again.stdout.count("(already done)") == 2
