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
    f1 = [res["benchmarks"][k]["score"] for k in ("a", "b")]
    assert res["families"]["f1"]["mean"] == pytest.approx(sum(f1) / 2)
    for r in res["benchmarks"].values():
        assert r["ci95"][0] <= r["score"] <= r["ci95"][1]
        assert r["decided"]["rule"] + r["decided"]["undecided"] == r["n"]  # no judge in this suite
    md = (out / "results.md").read_text()
    assert "| model | a | b | Avg |" in md and "### f2" in md and (out / "families.png").stat().st_size > 0


def test_suite_without_sources_is_rejected(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("benchmarks:\n  a: {family: x, grader: exact}\n")
    proc = subprocess.run([sys.executable, "tools/evaluate.py", "--model", "x", "--suite", str(suite), "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "benchmark 'a' has no sources" in proc.stderr


@pytest.mark.timeout(400)
def test_the_language_family_of_the_paper_suite_through_the_tool_with_a_real_student_and_judge(toy_world, tmp_path):
    """The paper's llm.yaml on fixture releases, the toy student answering and the toy teacher judging
    in process (HLE left out: its fixture has an image and this student reads text only); then the
    table tool lays two results out with a Δ row."""
    import yaml

    from tests.evaluation.paper_fixtures import write_paper_data

    root = tmp_path / "benchmarks"
    counts = write_paper_data(root)
    paper = yaml.safe_load((ROOT / "examples/paper/eval/llm.yaml").read_text())
    del paper["benchmarks"]["hle"]
    paper.update(decoding={"temperature": 0.0, "top_p": 1.0, "top_k": -1, "presence_penalty": 0.0,
                           "max_new_tokens": 6}, judge_max_new_tokens=8, n_boot=200, data_root=str(root))
    suite = tmp_path / "llm.yaml"
    suite.write_text(yaml.safe_dump(paper))
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "tools/evaluate.py", "--model", toy_world["student"], "--suite",
                               str(suite), "--judge-model", toy_world["teacher"], "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=380)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(out)
    res = json.loads((outs[0] / "results.json").read_text())
    assert {k: v["n"] for k, v in res["benchmarks"].items()} == {
        k: counts[k] for k in ("aime25", "aime26", "ceval", "gpqa_diamond", "imo_answerbench", "mmlu", "mmlu_pro",
                               "mmlu_redux", "multichallenge")}
    decided = [v["decided"] for v in res["benchmarks"].values()]
    judged = sum(d["judge"] for d in decided)
    assert judged > 0 and res["judge_calls"] == judged  # the untrained student rarely boxes an answer
    assert res["judge_malformed"] == sum(d["judge_malformed"] for d in decided)  # counted, each scored 0
    assert all(d["undecided"] == 0 for d in decided)
    proc = subprocess.run([sys.executable, "tools/eval_table.py", f"base={outs[0]}", f"zppo={outs[1]}",
                           "--delta-of", "zppo", "--n-boot", "200", "--out", str(tmp_path / "table")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (tmp_path / "table" / "table.md").read_text()
    assert "| model | AIME25 | AIME26 | CEval | GPQA-D | IMO-AB | MMLU | MMLU-Pro | MMLU-Rd | MultiCh | Avg |" in md
    assert "| Δ | +0.0 |" in md  # greedy decoding: the two runs agree, column by column
    assert json.loads((tmp_path / "table" / "table.json").read_text())["llm"]["deltas"][0]["wins"] == 0
