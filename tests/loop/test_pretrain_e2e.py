"""The main job end to end, as a user runs it: `python pretrain_zppo.py` and `torchrun`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_zppo.metrics import REQUIRED, read_metrics
from megatron_zppo.core.reformulate import fraction_count

ROOT = Path(__file__).resolve().parents[2]
TIMING = {"t_rollout", "t_reward", "t_teacher", "t_zppo", "t_train", "t_sync", "t_step", "tokens_per_s"}


def _overrides(toy, run_dir, steps, extra=()):
    chain = "{kind: reasoning_gym, task: chain_sum, seed: %d, size: %d, task_config: {max_digits: 1, max_terms: 2}}"
    return [
        f"run.dir={run_dir}", f"run.steps={steps}", "run.save_every=2", "run.updates_per_step=2",
        f"student.hf_path={toy['student']}", f"teacher.hf_path={toy['teacher']}",
        "rollout.n_new=4", "rollout.group_size=4", "rollout.teacher_group_size=2", "rollout.max_new_tokens=12",
        "rollout.max_prompt_tokens=200", "rollout.max_reformulated_prompt_tokens=600",
        "method.rho_aug=0.5", "buffer.rho_replay=0.5", "train.micro_batch_size=8", "optimizer.lr=1e-3",
        "templates=examples/cpu_toy/templates", "reward.grader=task", "reward.workers=1",
        "eval.temperature=0", "eval.max_new_tokens=12", "eval.presence_penalty=0",
        f"data.train=[{chain % (0, 40)}]", f"data.eval={{chain_sum: [{chain % (1, 6)}]}}", *extra,
    ]


def _small_paper_suite(tmp_path):
    """MMLU (choice + judge) and MultiChallenge (its judge, conversations) of the paper's llm.yaml, on
    fixture releases, decoded short."""
    import yaml

    from tests.evaluation.paper_fixtures import write_paper_data

    write_paper_data(tmp_path / "benchmarks")
    paper = yaml.safe_load((ROOT / "examples/paper/eval/llm.yaml").read_text())
    paper["benchmarks"] = {k: paper["benchmarks"][k] for k in ("mmlu", "multichallenge")}
    paper.update(decoding={"temperature": 0.0, "max_new_tokens": 6}, judge_max_new_tokens=8, n_boot=200,
                 data_root=str(tmp_path / "benchmarks"))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(paper))
    return tmp_path / "suite.yaml"


def _run(args, torchrun=0, timeout=600):
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "pretrain_zppo.py"] if not torchrun else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun),
        "pretrain_zppo.py"]
    proc = subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _check_contract(metrics, n_new=4, rho_replay=0.5, rho_aug=0.5, capacity=10_000):
    prev_buffer = 0
    for m in metrics:
        assert set(REQUIRED) <= set(m), set(REQUIRED) - set(m)
        assert m["n_bcq"] + m["n_ncq"] <= fraction_count(rho_aug, n_new)
        assert m["buffer_size"] <= capacity
        assert m["n_replay"] == min(fraction_count(rho_replay, n_new), prev_buffer)
        assert 0 <= m["acc_plain"] <= 1 and m["tokens_generated"] > 0
        assert m["logprob_diff_mean"] < 1e-3  # engine and trainer agree on the sampled tokens
        prev_buffer = m["buffer_size"]


@pytest.fixture(scope="module")
def four_steps(toy_world, tmp_path_factory):
    """One uninterrupted 4-step run: the contract test reads it, and the resume test compares with it."""
    run = tmp_path_factory.mktemp("straight") / "run"
    proc = _run(["--config", "examples/cpu_toy/zppo.yaml"] + _overrides(toy_world, run, 4))
    return run, proc


@pytest.mark.timeout(900)
def test_single_process_run_writes_the_whole_contract(four_steps):
    run, proc = four_steps
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    _check_contract(metrics)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval"]["chain_sum"]["n"] == 6 and {"before", "after"} <= set(summary["eval"]["chain_sum"])
    fate = summary["buffer_fate"]  # the paper's buffer analyses (docs/analyses.md): every admission is counted
    assert sum(sum(c.values()) for c in fate["by_entry_accuracy"].values()) == metrics[-1]["buffer_admitted"]
    audit = summary["candidate_audit"]  # and its candidate-match audit, pooled over the steps
    assert audit["ncq_audit_n"] == sum(m["ncq_audit_n"] for m in metrics) > 0
    assert audit["ncq_match_neg"] + audit["ncq_other"] + (audit["ncq_match_pos"] or 0) == pytest.approx(1)
    assert (run / "curves.png").stat().st_size > 1000 and (run / "config.yaml").exists()
    assert any((run / "tensorboard").iterdir())
    assert (run / "checkpoints" / "latest").read_text() == "step_000004"
    assert "eval set" in proc.stdout and "tensorboard --logdir" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resumed_run_reproduces_the_uninterrupted_metrics(toy_world, four_steps, tmp_path):
    (straight, _), split = four_steps, tmp_path / "split"
    _run(_overrides(toy_world, split, 2, ["--config", "examples/cpu_toy/zppo.yaml"]))
    _run(_overrides(toy_world, split, 4, ["--config", "examples/cpu_toy/zppo.yaml", "--load", "auto"]))
    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(split / "metrics.jsonl")
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_torchrun_two_processes_tensor_parallel(toy_world, tmp_path):
    run = tmp_path / "tp2"
    _run(_overrides(toy_world, run, 2, ["--config", "examples/cpu_toy/zppo.yaml", "train.tensor_parallel=2"]),
         torchrun=2)
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1]
    _check_contract(metrics)


def test_bad_config_is_refused_before_anything_starts(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "pretrain_zppo.py", "--config", "examples/cpu_toy/zppo.yaml",
                           "run.stepz=3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown key(s) ['stepz']" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rollout_only_then_train_only_replays_the_dumped_rollouts(toy_world, tmp_path):
    gen, train = tmp_path / "gen", tmp_path / "train"
    _run(_overrides(toy_world, gen, 2, ["--config", "examples/cpu_toy/zppo.yaml", "run.mode=rollout_only"]))
    assert sorted(p.name for p in (gen / "rollouts").iterdir()) == ["step_000000.pt", "step_000001.pt"]
    rolled = read_metrics(gen / "metrics.jsonl")
    assert all(m["loss"] is None for m in rolled)  # nothing was trained
    _run(_overrides(toy_world, train, 2, ["--config", "examples/cpu_toy/zppo.yaml", "run.mode=train_only",
                                          f"run.rollouts_from={gen}"]))
    trained = read_metrics(train / "metrics.jsonl")
    for a, b in zip(rolled, trained):  # the same rollouts, now trained on
        assert (a["acc_plain"], a["n_hard"], a["tokens_generated"]) == (b["acc_plain"], b["n_hard"], b["tokens_generated"])
        assert b["loss"] is not None and b["grad_norm"] is not None  # trained (all-zero rewards: zero grad)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_with_packed_micro_batches_keeps_the_contract_and_logs_its_padding(toy_world, tmp_path):
    run = tmp_path / "run"
    _run(["--config", "examples/cpu_toy/zppo.yaml"]
         + _overrides(toy_world, run, 2, ["train.max_tokens_per_micro_batch=1024"]))
    metrics = read_metrics(run / "metrics.jsonl")
    _check_contract(metrics)
    for m in metrics:
        assert 0 < m["real_tokens"] <= m["computed_tokens"]
        # A mean over the step's updates of each one's real / computed (short prompts and responses
        # of similar lengths: sorted into micro-batches, next to no padding is left).
        assert 0.9 <= m["padding_efficiency"] <= 1.0
        assert m["dp_imbalance"] == pytest.approx(1.0)  # one rank


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dynamic_sampling_and_a_token_budget_through_the_main_job(toy_world, tmp_path):
    """The wiring: the untrained toy student answers nothing right, so every step draws all its rounds
    and trains unfiltered (which groups are kept is tests/loop/test_dynamic_sampling.py's)."""
    run, budget = tmp_path / "run", 900  # about two steps of two rounds
    suite = _small_paper_suite(tmp_path)
    proc = _run(["--config", "examples/cpu_toy/zppo.yaml"] + _overrides(toy_world, run, 4, [
        "rollout.dynamic_sampling.enabled=true", "rollout.dynamic_sampling.max_rounds=2",
        f"run.token_budget={budget}", f"data.eval_suite={suite}", "run.eval_every=1"]))
    metrics = read_metrics(run / "metrics.jsonl")
    spent = [sum(m["tokens_generated"] for m in metrics[:i + 1]) for i in range(len(metrics))]
    assert spent[-1] >= budget and len(spent) >= 2 and all(s < budget for s in spent[:-1])  # the step reaching it ends
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == len(metrics) < 4 and summary["tokens_generated"] == spent[-1]
    assert (run / "checkpoints" / "latest").read_text() == f"step_{len(metrics):06d}"
    for m in metrics:
        assert 1 <= m["ds_rounds"] <= 2 and m["ds_extra_tokens"] >= 0
        informative = m["informative_fraction_before"] > 0
        assert m["informative_fraction_after"] == (1.0 if informative else 0.0)
        assert m["ds_rounds"] == 2 or informative  # one round is enough only if it found a group with a gradient
    assert "step 0: dynamic sampling: no informative group in 2 rounds; training the step unfiltered" in proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("informative_fraction_before=") and "rounds_per_step=" in last
    # data.eval_suite: two of the paper's language benchmarks on fixture releases, the teacher judging
    fam = summary["eval_families"]["llm"]
    # every step evaluates (run.eval_every=1; the budget, not run.steps, ends the run), then the final one
    assert set(fam) == {"before", "during", "after"} and [d["step"] for d in fam["during"]] == list(range(1, len(metrics) + 1))
    assert all(m["eval_family_llm"] == d["mean"] for m, d in zip(metrics, fam["during"]))
    assert fam["after"] == pytest.approx((summary["eval"]["mmlu"]["after"] + summary["eval"]["multichallenge"]["after"]) / 2)
    assert summary["eval"]["multichallenge"]["family"] == "llm" and summary["eval"]["mmlu"]["n"] == 2
