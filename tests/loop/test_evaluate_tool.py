import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_evaluate_tool_writes_per_benchmark_and_family_results(toy_world, tmp_path):
    data = tmp_path / "qs.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"q{i}", "question": f"{i}+0=", "answer": str(i)}) for i in range(5)))
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""
decoding: {{temperature: 0.0, top_p: 1.0, top_k: -1, presence_penalty: 0.0, max_new_tokens: 8}}
templates: examples/cpu_toy/templates
benchmarks:
  a: {{family: f1, grader: exact, sources: [{{kind: jsonl, path: {data}}}]}}
  b: {{family: f1, grader: math, sources: [{{kind: jsonl, path: {data}}}]}}
  c: {{family: f2, grader: exact, sources: [{{kind: reasoning_gym, task: chain_sum, seed: 1, size: 3}}]}}
""")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "tools/evaluate.py", "--model", toy_world["student"], "--suite", str(suite),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert {k: v["n"] for k, v in res["benchmarks"].items()} == {"a": 5, "b": 5, "c": 3}
    f1 = [res["benchmarks"][k]["accuracy"] for k in ("a", "b")]
    assert res["family_macro"]["f1"] == pytest.approx(sum(f1) / 2)
    for r in res["benchmarks"].values():
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
    assert "| family | macro average |" in (out / "results.md").read_text()


def test_suite_without_sources_is_rejected(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("benchmarks:\n  a: {family: x, grader: exact}\n")
    proc = subprocess.run([sys.executable, "tools/evaluate.py", "--model", "x", "--suite", str(suite), "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "benchmark 'a' has no sources" in proc.stderr
