"""The main job with a real pretrained student: examples/real_model/zppo.yaml for 2 steps, in process.

SmolLM2-135M-Instruct (tests/real_model.py) is the student and, drawing more samples, the teacher;
sizes are cut so that two steps fit in about a minute on 2 cores.
"""

import json

import pytest
import torch

from megatron_zppo.metrics import read_metrics
from tests.loop.test_pretrain_e2e import _check_contract, _run
from tests.loop.test_quiet_output import assert_quiet

CHAIN = "{kind: reasoning_gym, task: chain_sum, seed: %d, size: %d, task_config: {min_terms: 2, max_terms: 2, max_digits: 1}}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_zppo_steps_on_the_real_model_train_sync_and_evaluate(smollm2_dir, tmp_path):
    run = tmp_path / "run"
    proc = _run(["--config", "examples/real_model/zppo.yaml", f"run.dir={run}", "run.steps=2", "run.save_every=2",
                 "run.dump_rollouts=true", f"student.hf_path={smollm2_dir}", f"teacher.hf_path={smollm2_dir}",
                 "rollout.n_new=4", "rollout.group_size=2", "rollout.teacher_group_size=4", "rollout.max_new_tokens=12",
                 "train.micro_batch_size=4", "eval.max_new_tokens=12", f"data.train=[{CHAIN % (0, 40)}]",
                 f"data.eval={{chain_sum: [{CHAIN % (1, 4)}]}}"])  # fmt: skip
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1]
    _check_contract(metrics, n_new=4, rho_replay=0.25, rho_aug=0.5)  # engine and trainer log-probs agree (< 1e-3)
    assert all(m["loss"] is not None and m["t_sync"] > 0 for m in metrics)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval"]["chain_sum"]["n"] == 4 and summary["eval"]["chain_sum"]["after"] is not None
    assert (run / "checkpoints" / "latest").read_text() == "step_000002"
    # Real text: the student's answers are words and numbers from its 49k vocabulary, ended by <|im_end|>.
    rollouts = torch.load(run / "rollouts" / "step_000000.pt", weights_only=False)
    texts = [s.response_text for g in rollouts.groups for s in g.samples]
    assert texts and any(any(c.isdigit() for c in t) for t in texts), texts
    assert_quiet(proc, run, steps=2)  # quiet by default: upstream output is in run/upstream.log
