"""run.overlap=one_step against the SGLang stand-in servers (student and teacher each in their own
process), driven by the main job's own loop (`pretrain_zppo.train`) with a recording trainer.

The stand-ins generate deterministic functions of the request, not of the weights, so a
synchronous run and an overlapped one get the same rollouts: only the weight versions the samples
carry differ. That lets the test compare the buffer's admissions of both, fed the same rollouts.
"""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from megatron_zppo import build
from megatron_zppo.config import load_config
from megatron_zppo.metrics import read_metrics
from megatron_zppo.shutdown import StopRequest
from tests.rollout.fake_sglang import VOCAB, FakeSGLang

CHAIN = "{kind: reasoning_gym, task: chain_sum, seed: 0, size: 40, task_config: {max_digits: 1, max_terms: 2}}"


class RecordingTrainer:
    """What the loop needs of RLTrainer, recording what it is asked to train on."""

    is_main = True

    def __init__(self):
        self.trained: list[dict] = []

    def update(self, minibatches, loss):
        samples = [s for mb in minibatches for s in mb]
        self.trained.append({"versions": sorted({s.weight_version for s in samples}),
                             "rollouts": sorted([s.group_id, list(s.response_ids)] for s in samples)})  # as JSON keeps it
        return {"loss": 0.0}

    def export_hf(self):
        yield "w", torch.full((4,), float(len(self.trained)))

    def save(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "trained.json").write_text(json.dumps(self.trained))

    def load(self, directory):
        self.trained = json.loads((Path(directory) / "trained.json").read_text())

    def close(self):
        pass


@pytest.fixture(scope="module")
def servers():
    with FakeSGLang() as student, FakeSGLang() as teacher:
        yield student, teacher


@pytest.fixture
def model_dir(toy_world, tmp_path):
    """The toy student's tokenizer, with an embedding as wide as the stand-ins' vocabulary."""
    d = tmp_path / "model"
    shutil.copytree(toy_world["student"], d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "vocab_size": VOCAB}))
    return str(d)


def _run(servers, model_dir, run_dir, overlap, steps=4, load="", students=(), trainer=None):
    """`students`: several student servers (a pool, fault tolerant) instead of the one in `servers`."""
    from pretrain_zppo import train

    student, teacher = servers
    pool = [f"student.urls=[{', '.join(s.url for s in students)}]", "student.fault_tolerance.min_servers=1",
            "student.fault_tolerance.health_interval_s=0.2", "student.fault_tolerance.first_wait_s=0"]
    cfg = load_config("examples/cpu_toy/zppo.yaml", [
        f"run.dir={run_dir}", f"run.steps={steps}", "run.save_every=2", "run.updates_per_step=2",
        f"run.overlap={overlap}", f"run.load={load}",
        f"student.hf_path={model_dir}", "student.engine=sglang", *(pool if students else [f"student.url={student.url}"]),
        "student.weight_sync.strategy=disk", f"student.weight_sync.disk_dir={run_dir}/weights",
        f"teacher.hf_path={model_dir}", "teacher.engine=sglang", f"teacher.url={teacher.url}",
        "rollout.n_new=4", "rollout.group_size=2", "rollout.teacher_group_size=2", "rollout.max_new_tokens=6",
        "method.rho_aug=0.5", "buffer.rho_replay=0.5", "reward.grader=task", "reward.workers=1",
        f"data.train=[{CHAIN}]", "data.eval={}"])
    trainer, ctx, stop = trainer or RecordingTrainer(), build.make_rollout_phase(cfg), StopRequest(60.0, cfg.run.dir)
    try:
        assert train(cfg, trainer, ctx, stop, Path(run_dir)) == 0
    finally:
        ctx.graders.close()
        ctx.student.shutdown()  # a pool's health monitor stops with it
        stop.restore()
    return trainer.trained, ctx.buffer.question_ids(), read_metrics(Path(run_dir) / "metrics.jsonl")


BUFFER = ("buffer_size", "buffer_admitted", "buffer_graduated", "buffer_evicted", "n_replay", "n_hard")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_step_trains_one_version_behind_on_the_rollouts_a_synchronous_run_gets(servers, model_dir, tmp_path):
    sync_trained, sync_buffer, sync_metrics = _run(servers, model_dir, tmp_path / "none", "none")
    trained, buffer, metrics = _run(servers, model_dir, tmp_path / "one_step", "one_step")
    # The synchronous loop trains on its own weights; one_step on the weights one update behind,
    # every sample of a step on the same version (the next rollouts finish before the weight sync).
    assert [t["versions"] for t in sync_trained] == [["step-0"], ["step-1"], ["step-2"], ["step-3"]]
    assert [t["versions"] for t in trained] == [["step-0"], ["step-0"], ["step-1"], ["step-2"]]
    assert [m["rollout_versions_behind"] for m in metrics] == [0, 1, 1, 1]
    assert [m["partial_generations_lost"] for m in metrics + sync_metrics] == [0.0] * 8  # no abort nobody asked for
    # Fed the same rollouts, the buffer admits, graduates and replays the same questions.
    assert [t["rollouts"] for t in trained] == [t["rollouts"] for t in sync_trained]
    assert sync_metrics[-1]["buffer_admitted"] > 0 and sum(m["n_replay"] for m in sync_metrics) > 0
    assert [{k: m[k] for k in BUFFER} for m in metrics] == [{k: m[k] for k in BUFFER} for m in sync_metrics]
    assert buffer == sync_buffer


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_resumed_one_step_run_trains_on_the_rollouts_in_flight_at_the_checkpoint(servers, model_dir, tmp_path):
    straight, *_ = _run(servers, model_dir, tmp_path / "straight", "one_step")
    _run(servers, model_dir, tmp_path / "split", "one_step", steps=2)
    resumed, *_ = _run(servers, model_dir, tmp_path / "split", "one_step", load="auto")
    assert resumed == straight  # step 2's rollouts, made by step-1 weights before the stop, trained on after it


class RestartingTrainer(RecordingTrainer):
    """Brings `server` back during step 1's update, as its launcher would, and goes on once the
    pool's health monitor has seen it answer (its second health check comes after the first)."""

    def __init__(self, server):
        super().__init__()
        self.server = server

    def update(self, minibatches, loss):
        if len(self.trained) == 1:
            assert not self.server.process.is_alive()  # it died on its first request, in step 0
            self.server.restart()
            end = time.monotonic() + 60
            while self.server.log().count("/health_generate") < 2:
                assert time.monotonic() < end, "the pool's health monitor never asked the restarted server"
                time.sleep(0.05)
        return super().update(minibatches, loss)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_student_server_killed_mid_step_and_restarted_changes_nothing_the_run_trains_on(servers, model_dir,
                                                                                            tmp_path):
    with FakeSGLang() as a, FakeSGLang() as b, FakeSGLang() as c:
        clean, clean_buffer, _ = _run(servers, model_dir, tmp_path / "clean", "none", students=(a, b, c), steps=6)
    with FakeSGLang() as a, FakeSGLang() as b, FakeSGLang() as c:
        b.set_faults(die_after_generates=0)  # dies on its first request, in step 0's plain rollouts
        trained, buffer, metrics = _run(servers, model_dir, tmp_path / "faulty", "none", students=(a, b, c),
                                        steps=6, trainer=RestartingTrainer(b))
        log = b.log()  # the restarted server's own log
    # The same rollouts (the stand-ins are deterministic), each step on the trainer's current weights
    # (the loop refuses a sample of other weights): b's share of step 0 went to the others, and b
    # served again only after the update that followed its return.
    assert trained == clean and buffer == clean_buffer
    assert [t["versions"] for t in trained] == [[f"step-{k}"] for k in range(6)]
    last = metrics[-1]
    assert last["student_servers_lost"] == 1 and last["student_requests_resubmitted"] >= 1
    assert last["student_servers_back"] == 1 and last["student_servers_live"] == 3
    assert last["partial_generations_lost"] == 0.0  # b died: its requests were resubmitted, not aborted
    assert "/generate" in log and log.index("/update_weights_from_disk") < log.index("/generate")
