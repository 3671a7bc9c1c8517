"""tools/compare.py: the comparison table from finished runs (aggregation only; the runs
themselves are pretrain_zppo.py, tested elsewhere)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import compare  # noqa: E402


def _fake_run(d: Path, before: dict, after: dict, metrics: list[dict], **summary):
    d.mkdir(parents=True)
    ev = {name: {"family": fam, "n": len(b), "correct_before": b, "correct_after": after[name]}
          for name, (fam, b) in before.items()}
    (d / "summary.json").write_text(json.dumps({"eval": ev, **summary}))
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
               "t_step": 2.0, "tokens_generated": 300, "informative_fraction_before": 0.25,
               "informative_fraction_after": 1.0, "ds_rounds": 3},
              {"buffer_admitted": 4, "buffer_graduated": 1, "buffer_admitted_at_zero": 2,
               "buffer_graduated_from_zero": 1, "acc_bcq": 0.5, "acc_ncq": None, "ncq_repeats_listed_answer": 0.2,
               "t_step": 2.0, "tokens_generated": 100, "informative_fraction_before": 0.75,
               "informative_fraction_after": 1.0, "ds_rounds": 1}]
    m_grpo = [{"buffer_admitted": 5, "buffer_graduated": 0, "buffer_admitted_at_zero": 0,
               "buffer_graduated_from_zero": 0, "acc_bcq": None, "acc_ncq": None, "ncq_repeats_listed_answer": None,
               "t_step": 1.0, "tokens_generated": 50, "informative_fraction_before": 0.5,
               "informative_fraction_after": 0.5}]
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
    # generation: steps, tokens summed over a run's steps, the fractions and rounds averaged over them
    assert "| s | zppo | 2.0 | 400 | 50.0 | 100.0 | 2.00 |" in table and "| s | grpo_buffer | 1.0 | 50 | 50.0 | 50.0 | - |" in table


_ZERO = {"graduated": 0, "improved": 0, "never_improved": 0, "in_buffer": 0}
_FATE = {  # one seed's: 0% -> 1 graduated, 2 evicted, 1 held; 12.5% -> 1 graduated
    "by_entry_accuracy": {"0.125": {"graduated": 1, "evicted": 0, "in_buffer": 0},
                          "0.0": {"graduated": 1, "evicted": 2, "in_buffer": 1}},
    "by_resamples": {"0": {**_ZERO, "never_improved": 1, "in_buffer": 1}, "1": {**_ZERO, "graduated": 2},
                     "2": {**_ZERO, "improved": 1}, **{k: _ZERO for k in ("3", "4", "5", "6+")}}}
_AUDIT_STEPS = [  # 2 correct BCQ rollouts, all match the teacher; 4 NCQ, the teacher never ran (null rates)
    {"bcq_match_pos_correct": 1.0, "bcq_match_neg_correct": 0.0, "bcq_other_correct": 0.0, "bcq_audit_n_correct": 2,
     "bcq_match_pos_wrong": None, "bcq_match_neg_wrong": None, "bcq_other_wrong": None, "bcq_audit_n_wrong": 0,
     "ncq_match_neg": 0.5, "ncq_match_pos": None, "ncq_other": 0.5, "ncq_audit_n": 4, "ncq_audit_n_teacher": 0, "ncq_audit_n_pos": 0,
     "t_rollout": 1.0, "t_train": 0.5, "t_step": 2.0},
    {"bcq_match_pos_correct": 0.5, "bcq_match_neg_correct": 0.25, "bcq_other_correct": 0.25, "bcq_audit_n_correct": 4,
     "bcq_match_pos_wrong": 0.0, "bcq_match_neg_wrong": 0.75, "bcq_other_wrong": 0.25, "bcq_audit_n_wrong": 4,
     "ncq_match_neg": 0.25, "ncq_match_pos": 0.5, "ncq_other": 0.5, "ncq_audit_n": 4, "ncq_audit_n_teacher": 2, "ncq_audit_n_pos": 4,
     "t_rollout": 3.0, "t_train": 0.5, "t_step": 4.0}]


def test_fate_tables_sum_over_seeds_the_audit_pools_over_steps_and_phase_times_average(tmp_path):
    plan = compare.Plan(config="x.yaml", methods=["grpo_buffer", "zppo"], students=[compare.Student("s", "p")],
                        seeds=[0, 1])
    sets = {"a": ("in_corpus", [0.0, 1.0])}
    for seed in (0, 1):
        _fake_run(compare.run_dir(tmp_path, "s", "zppo", seed), sets, {"a": [1.0, 1.0]}, _AUDIT_STEPS,
                  buffer_fate=_FATE)
        _fake_run(compare.run_dir(tmp_path, "s", "grpo_buffer", seed), sets, {"a": [1.0, 0.0]},  # a run from before
                  [{"t_rollout": 1.0, "t_train": 1.0, "t_step": 2.0}])  # the fate tables and the audit
    res = compare.aggregate(plan, tmp_path)
    z = res["s"]["zppo"]
    assert z["fate"]["by_entry_accuracy"] == {"0.0": {"graduated": 2, "evicted": 4, "in_buffer": 2},
                                              "0.125": {"graduated": 2, "evicted": 0, "in_buffer": 0}}
    assert z["fate"]["by_resamples"]["2"] == {**_ZERO, "improved": 2}
    g = z["graduation"]  # graduated / admitted, entries still in the buffer not graduated
    assert (g["from_zero"]["admitted"], g["from_zero"]["mean"], g["all"]["mean"]) == (8, 0.25, 0.4)
    assert g["from_zero"]["lo"] < 0.25 < g["from_zero"]["hi"] and res["s"]["grpo_buffer"]["graduation"] == {}
    assert z["audit"]["bcq_match_pos_correct"] == pytest.approx(4 / 6) and z["audit"]["ncq_match_pos"] == 0.5
    assert z["audit"]["ncq_match_neg"] == pytest.approx(3 / 8) and z["audit"]["bcq_audit_n_wrong"] == 8
    assert z["times"] == {"t_rollout": 2.0, "t_train": 0.5, "t_step": 3.0} and res["s"]["grpo_buffer"]["fate"] == {}
    table = compare.markdown(res, plan)
    assert "| s | zppo | 8 | 25.0 [" in table and "| 10 | 40.0 [" in table
    for line in ["| s | zppo | 0% | 8 | 2 | 4 | 2 | 33.3 | 66.7 |", "| s | zppo | 12.5% | 2 | 2 | 0 | 0 | 100.0 | 0.0 |",
                 "| s | zppo | all | 10 | 4 | 4 | 2 | 50.0 | 50.0 |",
                 "| s | zppo | 0 | 0 (0.0) | 0 (0.0) | 2 (100.0) | 2 |", "| s | zppo | 1 | 4 (100.0) | 0 (0.0) | 0 (0.0) | 0 |",
                 "| s | zppo | 2 | 0 (0.0) | 2 (100.0) | 0 (0.0) | 0 |",
                 "| s | zppo | 12 | 66.7 | 16.7 | 16.7 | 8 | 0.0 | 75.0 | 25.0 | 16 | 37.5 | 50.0 | 50.0 |",
                 "| student | method | rollout | train | step |", "| s | grpo_buffer | 1.00 | 1.00 | 2.00 |",
                 "| s | zppo | 2.00 | 0.50 | 3.00 |"]:
        assert line in table, line
    assert "| s | zppo | 3 |" not in table and "| s | grpo_buffer | 0% |" not in table  # empty rows left out
    assert json.loads(json.dumps(res))["s"]["zppo"]["fate"] == z["fate"]


def test_a_plan_naming_an_unknown_method_is_refused(tmp_path):
    from megatron_zppo.config_io import ConfigError

    p = tmp_path / "plan.yaml"
    p.write_text("config: c.yaml\nmethods: [zppo, dpo]\nstudents: [{name: s, hf_path: p}]\n")
    with pytest.raises(ConfigError, match=r"methods \['dpo'\] unknown"):
        compare.load_plan(str(p))


def test_the_checked_in_plans_and_their_configs_load():
    from megatron_zppo.config import load_config

    plans = sorted(ROOT.glob("examples/*/compare/plan*.yaml"))
    assert len(plans) == 3  # the chain-sum comparison, the pair-sum effect experiment, its dynamic-sampling plan
    for path in plans:
        plan = compare.load_plan(str(path))
        cfg = load_config(str(ROOT / plan.config), [])
        assert cfg.data.held_out and set(cfg.data.held_out) < set(cfg.data.eval), path
