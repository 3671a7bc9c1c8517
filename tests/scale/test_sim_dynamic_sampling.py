"""The dynamic-sampling simulation (benchmarks/sim_dynamic_sampling.py): its invariants."""

import importlib.util
import random
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "sim_dynamic_sampling", Path(__file__).resolve().parents[2] / "benchmarks" / "sim_dynamic_sampling.py")
sim = importlib.util.module_from_spec(_spec)
sys.modules["sim_dynamic_sampling"] = sim
_spec.loader.exec_module(sim)

SMALL = sim.Cluster(questions=16, group=4, teacher_group=2, lanes=32, tok_s=10.0, teacher_tok_s=10.0, train_tok_s=400.0,
                    sync_s=3.0, median=50.0, sigma=0.5, cap=200)


def test_the_filter_trains_only_groups_with_a_gradient_and_stops_at_the_target_or_the_cap():
    w = sim.World(max_rounds=3)
    for seed in range(5):
        none, ds = (sim.step(SMALL, w, on, random.Random(seed)) for on in (False, True))
        assert none["rounds"] == 1 and none["trained_samples"] == none["samples"]
        assert ds["trained_samples"] == ds["informative_samples"] and ds["gradient"] == ds["trained"]
        assert 1 <= ds["rounds"] <= 3
        # the first round is the same draw in both (same seed): the filter only adds
        assert ds["generated"] >= none["generated"] and ds["informative_samples"] >= none["informative_samples"]
    # every question always solved: nothing is informative, so every round is drawn and nothing trained
    r = sim.step(SMALL, sim.World(beta_a=1.0, beta_b=1e-9, max_rounds=3), True, random.Random(0))
    assert r["rounds"] == 3 and r["trained_samples"] == 0


def test_the_last_lines_are_the_figures_the_docs_quote(capsys):
    sim.main(["--steps", "2", "--questions", "16", "--lanes", "32"])
    names = [line.split("=")[0] for line in capsys.readouterr().out.strip().splitlines()[-4:]]
    assert names == ["informative_fraction_before", "informative_fraction_after", "ds_step_time_vs_none",
                     "ds_gradient_tokens_per_s_vs_none"]
