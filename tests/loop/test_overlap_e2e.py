"""The main job with run.overlap=one_step on the toy models: end to end, and resumed."""

import pytest

from megatron_zppo.metrics import read_metrics
from tests.loop.test_pretrain_e2e import TIMING, _check_contract, _overrides, _run

ONE_STEP = ["--config", "examples/cpu_toy/zppo.yaml", "run.overlap=one_step"]
TIMING_ONE_STEP = TIMING | {"t_overlap_wait"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_step_run_trains_one_version_behind_and_resumes_exactly(toy_world, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    _run(_overrides(toy_world, straight, 4, ONE_STEP))
    metrics = read_metrics(straight / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    _check_contract(metrics[:1])  # step 0's rollouts are made synchronously, by the trainer's own weights
    # From step 1 on, by the weights one update behind (made while the step before trained).
    assert [m["rollout_versions_behind"] for m in metrics] == [0, 1, 1, 1]
    for m in metrics:
        assert m["is_ratio_min"] <= m["is_ratio_mean"] <= m["is_ratio_max"] and 0 <= m["is_ratio_capped_frac"] <= 1
        assert m["t_overlap_wait"] >= 0
    assert abs(metrics[0]["is_ratio_mean"] - 1) < 1e-3 and metrics[0]["is_ratio_capped_frac"] == 0
    assert (straight / "checkpoints" / "latest").read_text() == "step_000004"

    # Stopped after step 2 (its checkpoint holds step 2's rollouts, made by step-1 weights), resumed.
    _run(_overrides(toy_world, split, 2, ONE_STEP))
    _run(_overrides(toy_world, split, 4, ONE_STEP + ["--load", "auto"]))
    resumed = read_metrics(split / "metrics.jsonl")
    assert len(resumed) == 4
    for x, y in zip(metrics, resumed):
        assert {k: v for k, v in x.items() if k not in TIMING_ONE_STEP} == \
            {k: v for k, v in y.items() if k not in TIMING_ONE_STEP}
