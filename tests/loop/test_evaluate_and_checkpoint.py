import os
import signal
import subprocess
import sys
import textwrap

import pytest

from megatron_zppo import checkpoint
from megatron_zppo.evaluate import bootstrap_ci, evaluate
from megatron_zppo.records import Question
from megatron_zppo.grader_pool import GraderPool
from megatron_zppo.rollout.engine import Generation, SamplingParams


def test_bootstrap_interval_contains_the_mean_and_narrows_with_n():
    small = [1.0, 0.0] * 10
    large = [1.0, 0.0] * 500
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= 0.5 <= hi_s and lo_l <= 0.5 <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3
    assert bootstrap_ci([1.0] * 5) == (1.0, 1.0)


class FixedEngine:
    """Answers each question with a fixed response, to test the evaluator's arithmetic."""

    weight_version = "x"

    def __init__(self, answers):
        self.answers = answers

    def generate(self, requests, params):
        return [[Generation([1], [-1.0], self.answers[r.request_id][i % len(self.answers[r.request_id])], "stop")
                 for i in range(r.n)] for r in requests]


def test_evaluator_accuracy_on_fixed_responses(toy_world):
    qs = [Question(f"q{i}", f"{i}+1=", str(i + 1)) for i in range(4)]
    answers = {"eval:q0": ["\\boxed{1}"], "eval:q1": ["\\boxed{9}"], "eval:q2": ["\\boxed{3}", "\\boxed{0}"],
               "eval:q3": ["no box"]}
    pool = GraderPool("math", workers=1)
    try:
        r = evaluate(FixedEngine(answers), lambda t, n_images=0: [1], toy_world["templates"], qs, pool, SamplingParams(), 2)
    finally:
        pool.close()
    assert r.correct == (1.0, 0.0, 0.5, 0.0) and r.accuracy == pytest.approx(0.375) and r.n == 4
    assert r.ci_low <= r.accuracy <= r.ci_high


class DirTrainer:
    """Stands in for the Megatron trainer's save/load (that side has its own tests)."""

    def __init__(self, value=0):
        self.value = value

    def save(self, directory):
        os.makedirs(directory)
        with open(os.path.join(directory, "w.txt"), "w") as f:
            f.write(str(self.value))

    def load(self, directory):
        with open(os.path.join(directory, "w.txt")) as f:
            self.value = int(f.read())


def test_checkpoint_round_trip_and_latest_pointer(tmp_path):
    checkpoint.save(tmp_path, 2, DirTrainer(7), {"step": 2, "buffer": {"a": 1}})
    checkpoint.save(tmp_path, 4, DirTrainer(9), {"step": 4})
    assert checkpoint.latest(tmp_path).name == "step_000004"
    t = DirTrainer()
    state = checkpoint.load(checkpoint.resolve("auto", tmp_path), t)
    assert state == {"step": 4} and t.value == 9
    assert checkpoint.load(checkpoint.resolve(str(tmp_path / "checkpoints" / "step_000002"), tmp_path), t)["step"] == 2
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.resolve(str(tmp_path), tmp_path)
    assert checkpoint.resolve("", tmp_path) is None


@pytest.mark.timeout(60)
def test_a_run_killed_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    checkpoint.save(tmp_path, 1, DirTrainer(1), {"step": 1})
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from megatron_zppo import checkpoint
        from tests.loop.test_evaluate_and_checkpoint import DirTrainer

        class Slow(DirTrainer):
            def save(self, directory):
                super().save(directory)
                print("saving", flush=True)
                time.sleep(60)  # killed here, half-way through the checkpoint

        checkpoint.save({str(tmp_path)!r}, 2, Slow(2), {{"step": 2}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    t = DirTrainer()
    state = checkpoint.load(checkpoint.latest(tmp_path), t)
    assert state == {"step": 1} and t.value == 1
    # the next save cleans up the half-written directory and completes
    checkpoint.save(tmp_path, 2, DirTrainer(2), {"step": 2})
    assert checkpoint.latest(tmp_path).name == "step_000002"
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())
