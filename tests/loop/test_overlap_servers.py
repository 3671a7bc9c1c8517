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
                             "rollouts": sorted([s.group_id, list(s.response_ids)] for s in samples),  # as JSON keeps it
                             "logprobs": sorted([s.group_id, list(s.logprobs)] for s in samples),
                             "spans": sorted([s.group_id, [list(v) for v in s.version_spans]] for s in samples)})
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


def _run(servers, model_dir, run_dir, overlap, steps=4, load="", students=(), trainer=None, extra=()):
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
        f"data.train=[{CHAIN}]", "data.eval={}", *extra])
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
def test_one_step_and_async_train_on_the_rollouts_a_synchronous_run_gets(servers, model_dir, tmp_path):
    sync_trained, sync_buffer, sync_metrics = _run(servers, model_dir, tmp_path / "none", "none")
    trained, buffer, metrics = _run(servers, model_dir, tmp_path / "one_step", "one_step")
    # run.overlap=async with max_staleness 0 is the synchronous loop: the same rollouts, versions and buffer.
    k0_trained, k0_buffer, k0_metrics = _run(servers, model_dir, tmp_path / "async0", "async",
                                             extra=["run.max_staleness=0"])
    assert [{k: t[k] for k in ("versions", "rollouts", "logprobs")} for t in k0_trained] == \
        [{k: t[k] for k in ("versions", "rollouts", "logprobs")} for t in sync_trained]
    assert [{k: m[k] for k in BUFFER} for m in k0_metrics] == [{k: m[k] for k in BUFFER} for m in sync_metrics]
    assert k0_buffer == sync_buffer
    assert all({k for k in m if k.startswith("samples_behind_")} == {"samples_behind_0"} for m in k0_metrics)
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


class TrainingWhileGenerating(RecordingTrainer):
    """Trains once the student server has a generation running that has made tokens (or after 3 s:
    in step 0 the batches ahead may all be done), so that the weight sync after it finds a partial
    generation to keep (run.overlap=async; from step 1 on, the batch admitted at the step's start
    is certainly generating)."""

    def __init__(self, server):
        super().__init__()
        self.server = server

    def update(self, minibatches, loss):
        end = time.monotonic() + 3
        while self.server.tokens_in_flight() == 0 and time.monotonic() < end:
            time.sleep(0.01)
        return super().update(minibatches, loss)


ASYNC = ["run.max_staleness=2", "rollout.max_new_tokens=30"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_async_keeps_generations_across_weight_syncs_and_resumes_with_them_exactly(servers, model_dir, tmp_path):
    """Generations 30 tokens long at 50 ms a token: every weight sync finds some in flight. They are
    continued with the new weights, token for token what an uncut generation makes (the stand-in
    continues an aborted generation's plan), and a run resumed from a checkpoint holding them
    trains on exactly what the uninterrupted run trains on."""
    student, teacher = servers
    # The stand-in's texts as the client decodes a continued generation's tokens: a text (graded, and
    # written into the BCQ/NCQ prompts) then does not depend on where a sync cut the generation.
    student.set_faults(token_delay_s=0.05, lengths={"median": 30, "sigma": 0.0, "cap": 30}, tokenizer=model_dir)
    try:
        straight, buffer, metrics = _run(servers, model_dir, tmp_path / "straight", "async", steps=6,
                                         trainer=TrainingWhileGenerating(student), extra=ASYNC)
        state = torch.load(tmp_path / "straight/checkpoints/step_000002/loop_state.pt", weights_only=False)
        resumed, resumed_buffer, _ = _run(servers, model_dir, tmp_path / "resumed", "async", steps=6,
                                          trainer=TrainingWhileGenerating(student), extra=ASYNC,
                                          load=str(tmp_path / "straight/checkpoints/step_000002"))
        aborts = student.update_aborts()
    finally:
        student.set_faults()
    # The checkpoint after step 1 holds steps 2 and 3's batches, and generations part-way made.
    assert [b.step for b in state["rollouts"]["batches"]] == [2, 3]
    assert any(p.ids for p in state["rollouts"]["parked"].values())
    # Every trained sample's oldest token is at most 2 versions behind its step; some span two versions,
    # and none was lost: every response is the stand-in's uncut 30 tokens.
    for step, t in enumerate(straight):
        assert all(step - int(v[5:]) in (0, 1, 2) for v in t["versions"])
        assert all(len(ids) == 30 for _, ids in t["rollouts"])
    assert sum(m["tokens_continued"] for m in metrics) > 0 and max(m["versions_spanned_max"] for m in metrics) >= 2
    assert all(len(spans) <= 3 for t in straight for _, spans in t["spans"])
    assert all(m["partial_generations_lost"] == 0.0 for m in metrics) and set(aborts) == {False}  # said explicitly
    # Resumed from step 2: the same tokens and log-probs, the same buffer (which weights sampled which
    # token depends on timing, in both runs).
    assert [{k: t[k] for k in ("rollouts", "logprobs")} for t in resumed] == \
        [{k: t[k] for k in ("rollouts", "logprobs")} for t in straight]
    assert resumed_buffer == buffer


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
