"""tools/compare.py: the comparison table from finished runs (aggregation only; the runs
themselves are pretrain_zppo.py, tested elsewhere)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import compare  # noqa: E402


def _fake_run(d: Path, before: dict, after: dict, metrics: list[dict]):
    d.mkdir(parents=True)
    ev = {name: {"family": fam, "n": len(b), "correct_before": b, "correct_after": after[name]}
          for name, (fam, b) in before.items()}
    (d / "summary.json").write_text(json.dumps({"eval": ev}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def test_macro_average_weighs_sets_equally_and_the_interval_brackets_it():
    assert compare.macro([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0]]) == pytest.approx(0.75)
    mean, lo, hi = compare.bootstrap([[[1.0, 0.0] * 20, [1.0] * 10], [[0.0] * 40, [1.0, 0.0] * 5]])
    assert mean == pytest.approx((0.75 + 0.25) / 2) and lo <= mean <= hi
    narrow = compare.bootstrap([[[1.0, 0.0] * 500]] * 3)
    wide = compare.bootstrap([[[1.0, 0.0] * 5]] * 3)
    assert narrow[2] - narrow[1] < wide[2] - wide[1]


def test_aggregate_builds_the_method_by_student_table_with_buffer_statistics(tmp_path):
    plan = compare.Plan(config="x.yaml", methods=["grpo_buffer", "zppo"], students=[compare.Student("s", "p")],
                        seeds=[0, 1])
    m_zppo = [{"buffer_admitted": 4, "buffer_graduated": 1, "buffer_admitted_at_zero": 2,
               "buffer_graduated_from_zero": 1, "acc_bcq": 0.5, "acc_ncq": None, "ncq_repeats_listed_answer": 0.2,
               "t_step": 2.0}]
    m_grpo = [{"buffer_admitted": 5, "buffer_graduated": 0, "buffer_admitted_at_zero": 0,
               "buffer_graduated_from_zero": 0, "acc_bcq": None, "acc_ncq": None, "ncq_repeats_listed_answer": None,
               "t_step": 1.0}]
    before = {"a": ("in_corpus", [0.0, 0.0, 1.0, 1.0]), "b": ("held_out", [0.0, 1.0]), "c": ("held_out", [1.0])}
    for seed in (0, 1):
        _fake_run(compare.run_dir(tmp_path, "s", "zppo", seed), before,
                  {"a": [1.0, 1.0, 1.0, 1.0], "b": [1.0, 1.0], "c": [0.0]}, m_zppo)
        _fake_run(compare.run_dir(tmp_path, "s", "grpo_buffer", seed), before,
                  {"a": [0.0, 1.0, 1.0, 1.0], "b": [0.0, 0.0], "c": [1.0]}, m_grpo)
    res = compare.aggregate(plan, tmp_path)["s"]
    assert list(res) == ["base", "grpo_buffer", "zppo"]
    assert res["base"]["in_corpus"]["mean"] == pytest.approx(0.5)
    assert res["base"]["held_out"]["mean"] == pytest.approx((0.5 + 1.0) / 2)  # macro, not pooled (2/3)
    assert res["zppo"]["in_corpus"]["mean"] == 1.0 and res["grpo_buffer"]["in_corpus"]["mean"] == 0.75
    b = res["zppo"]["buffer"]
    assert (b["graduation"], b["graduation_from_zero"], b["acc_bcq"]) == (0.25, 0.5, 0.5)
    assert b["acc_ncq"] != b["acc_ncq"]  # no NCQ prompt in any step: undefined, not 0
    table = compare.markdown(compare.aggregate(plan, tmp_path), plan)
    assert "| zppo | 100.0 [100.0, 100.0] |" in table and "| s | zppo | 4 | 25.0 | 50.0 | 50.0 | - | 20.0 | - | - | 2.00 |" in table


def test_a_plan_naming_an_unknown_method_is_refused(tmp_path):
    from megatron_zppo.config_io import ConfigError

    p = tmp_path / "plan.yaml"
    p.write_text("config: c.yaml\nmethods: [zppo, dpo]\nstudents: [{name: s, hf_path: p}]\n")
    with pytest.raises(ConfigError, match=r"methods \['dpo'\] unknown"):
        compare.load_plan(str(p))
