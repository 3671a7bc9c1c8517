import os
import signal
import subprocess
import sys
import textwrap

import pytest

from megatron_zppo import run_checkpoint
from megatron_zppo.evaluate import bootstrap_ci, evaluate
from megatron_zppo.core.records import Question
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
    run_checkpoint.save(tmp_path, 2, DirTrainer(7), {"step": 2, "buffer": {"a": 1}})
    run_checkpoint.save(tmp_path, 4, DirTrainer(9), {"step": 4})
    assert run_checkpoint.latest(tmp_path).name == "step_000004"
    t = DirTrainer()
    state = run_checkpoint.load(run_checkpoint.resolve("auto", tmp_path), t)
    assert state == {"step": 4} and t.value == 9
    assert run_checkpoint.load(run_checkpoint.resolve(str(tmp_path / "checkpoints" / "step_000002"), tmp_path), t)["step"] == 2
    with pytest.raises(run_checkpoint.CheckpointError, match="not a complete checkpoint"):
        run_checkpoint.resolve(str(tmp_path), tmp_path)
    assert run_checkpoint.resolve("", tmp_path) is None


@pytest.mark.timeout(60)
def test_a_run_killed_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    run_checkpoint.save(tmp_path, 1, DirTrainer(1), {"step": 1})
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from megatron_zppo import run_checkpoint
        from tests.loop.test_evaluate_and_checkpoint import DirTrainer

        class Slow(DirTrainer):
            def save(self, directory):
                super().save(directory)
                print("saving", flush=True)
                time.sleep(60)  # killed here, half-way through the checkpoint

        run_checkpoint.save({str(tmp_path)!r}, 2, Slow(2), {{"step": 2}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    t = DirTrainer()
    state = run_checkpoint.load(run_checkpoint.latest(tmp_path), t)
    assert state == {"step": 1} and t.value == 1
    # the next save cleans up the half-written directory and completes
    run_checkpoint.save(tmp_path, 2, DirTrainer(2), {"step": 2})
    assert run_checkpoint.latest(tmp_path).name == "step_000002"
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())


def _three_checkpoints(tmp_path):
    for step in (1, 2, 3):
        run_checkpoint.save(tmp_path, step, DirTrainer(step), {"step": step})
    return [tmp_path / "checkpoints" / f"step_{s:06d}" for s in (1, 2, 3)]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, found", [
    (lambda c: _truncate(c / "loop_state.pt"), r" is damaged: loop_state.pt is \d+ bytes, the save wrote \d+ "
                                                r"\(truncated or overwritten\)"),
    (lambda c: (c / "loop_state.pt").write_bytes(os.urandom((c / "loop_state.pt").stat().st_size)),
     r": loop_state.pt cannot be read \((UnpicklingError|RuntimeError|BadZipFile|EOFError)"),
    (lambda c: (c / "model" / "w.txt").unlink(), " is damaged: model/w.txt is missing"),
    (lambda c: (c / "MANIFEST.json").write_text("{not json"), " is damaged: MANIFEST.json is unreadable"),
], ids=["truncated loop state", "loop state of random bytes", "missing model file", "damaged manifest"])
def test_a_damaged_checkpoint_is_named_with_the_earlier_one_to_load_instead(tmp_path, damage, found):
    first, second, third = _three_checkpoints(tmp_path)
    damage(third)
    with pytest.raises(run_checkpoint.DamagedCheckpoint, match=f"checkpoint {third}{found}.*the earlier complete "
                                                           f"checkpoint {second} can be loaded instead"):
        run_checkpoint.load(run_checkpoint.resolve("auto", tmp_path), DirTrainer())
    # The suggestion skips checkpoints whose sizes are wrong too (an overwrite of the same size
    # shows only when it is read, so it is not looked for here).
    _truncate(second / "loop_state.pt")
    with pytest.raises(run_checkpoint.DamagedCheckpoint, match=f"checkpoint {first} can be loaded instead"):
        run_checkpoint.load(third, DirTrainer())
    (first / "model" / "w.txt").unlink()
    with pytest.raises(run_checkpoint.DamagedCheckpoint, match="no earlier complete checkpoint is left in"):
        run_checkpoint.load(third, DirTrainer())


def test_a_loop_state_that_is_no_loop_state_is_refused(tmp_path):
    import torch

    *_, third = _three_checkpoints(tmp_path)
    torch.save([1, 2], third / "loop_state.pt")
    (third / "MANIFEST.json").unlink()  # as a checkpoint from before manifests: no size check
    with pytest.raises(run_checkpoint.DamagedCheckpoint, match="loop_state.pt holds list, not a loop state"):
        run_checkpoint.load(third, DirTrainer())


def test_load_auto_takes_the_newest_complete_checkpoint_when_latest_points_nowhere(tmp_path):
    *_, second, third = _three_checkpoints(tmp_path)
    heard = []
    (tmp_path / "checkpoints" / "latest").unlink()
    assert run_checkpoint.resolve("auto", tmp_path, heard.append) == third
    assert "latest is missing; using the newest complete checkpoint" in heard[-1]
    (third / "COMPLETE").unlink()  # e.g. removed by hand: not complete any more
    (tmp_path / "checkpoints" / "latest").write_text(third.name)
    assert run_checkpoint.resolve("auto", tmp_path, heard.append) == second
    assert f"names {third}, which is not a complete checkpoint" in heard[-1]


def test_load_auto_with_nothing_to_resume_is_none_and_a_missing_path_is_named(tmp_path):
    heard = []
    assert run_checkpoint.resolve("auto", tmp_path / "run", heard.append) is None and heard == []
    with pytest.raises(run_checkpoint.CheckpointError, match=r"run.load='.*nope' does not exist; expected a directory"):
        run_checkpoint.resolve(str(tmp_path / "nope"), tmp_path)


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    run_checkpoint.save(tmp_path, 2, DirTrainer(2), {"step": 2})
    run_checkpoint.save(tmp_path, 4, DirTrainer(4), {"step": 4, "run": "first"})
    run_checkpoint.save(tmp_path, 4, DirTrainer(40), {"step": 4, "run": "resumed"})  # resumed from step 2
    t = DirTrainer()
    assert run_checkpoint.load(run_checkpoint.resolve("auto", tmp_path), t) == {"step": 4, "run": "resumed"} and t.value == 40
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000002", "step_000004"]
