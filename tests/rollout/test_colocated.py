"""A co-located SGLang student (student.release_memory): the server holds no GPU memory while the
trainer trains, takes its weights' memory back before the sync and its cache after it."""

import pytest
import torch

from megatron_zppo.config import load_config
from megatron_zppo.loop import Rollouts, UpdatePhase
from megatron_zppo.methods import build_objective
from megatron_zppo.core.records import Group, PromptKind, Question, Sample
from megatron_zppo.rollout.sync import WeightSyncConfig


class _Trainer:
    def __init__(self, server):
        self.server, self.seen = server, None

    def update(self, minibatches, loss):
        self.seen = self.server.released()  # what the server holds while the updates run
        return {"loss": 0.5}

    def export_hf(self):
        yield "model.embed_tokens.weight", torch.ones(4, 2)


class _NoRolloutsAhead:
    def ahead(self, step):
        pass

    def wait(self, times):
        pass


def test_memory_is_released_for_training_and_taken_back_around_the_sync(server, make_engine, tmp_path):
    cfg = load_config(None, ["student.hf_path=s", "run.algorithm=grpo", "student.engine=sglang",
                             f"student.url={server.url}", "student.release_memory=true", "run.updates_per_step=1"])
    engine = make_engine(server.url, weight_sync=WeightSyncConfig(strategy="disk", disk_dir=str(tmp_path)))
    q = Question("q", "1+1?", "2")
    group = Group("g", q, PromptKind.PLAIN, "1+1?", [Sample("q", "g", PromptKind.PLAIN, [1], [2], "2", [-0.1])])
    trainer, times = _Trainer(server), {}
    update = UpdatePhase(build_objective(cfg), trainer, engine, overlap="none", seed=cfg.run.seed,
                         colocated=cfg.student.release_memory, check_versions=False)
    update.sync("step-0")  # the run's first sync: the server holds all its memory, nothing to take back
    stats = update(Rollouts(0, [group], [], 1, 0, 0, 0.0, 0), _NoRolloutsAhead(), times)
    assert trainer.seen == ["cuda_graph", "kv_cache", "weights"] and stats == {"loss": 0.5}
    assert server.released() == [] and server.weight_version() == "step-1"  # the weights of the step after
    log = [p for p in server.log() if p.endswith("_memory_occupation") or p == "/update_weights_from_disk"]
    assert log == ["/update_weights_from_disk", "/release_memory_occupation", "/resume_memory_occupation",
                   "/update_weights_from_disk", "/resume_memory_occupation"]


def test_release_memory_needs_an_sglang_student():
    with pytest.raises(ValueError, match="release_memory is for a co-located SGLang server"):
        load_config(None, ["student.hf_path=s", "run.algorithm=grpo", "student.release_memory=true"])
