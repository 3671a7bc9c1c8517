"""Several SGLang servers of one policy as one engine (EnginePool): requests spread over them in
order, every weight update into each, and a partial update that stops generation."""

import pytest

from megatron_zppo import build
from megatron_zppo.config import load_config
from megatron_zppo.rollout.engine import GenerateRequest, SamplingParams
from megatron_zppo.rollout.pool import EnginePool, split_balanced
from megatron_zppo.rollout.sglang_engine import WeightSyncError
from megatron_zppo.rollout.weight_sync import WeightSyncConfig
from tests.rollout.fake_sglang import FakeSGLang, tensor_digest
from tests.rollout.test_weight_sync import MB, mixed_weights

PARAMS = SamplingParams(max_new_tokens=8)


@pytest.fixture
def servers():
    with FakeSGLang() as a, FakeSGLang() as b:
        yield a, b


def _pool(make_engine, servers, **sync):
    cfg = WeightSyncConfig(backend="gloo", bucket_bytes=MB, timeout_s=20, **sync)
    return EnginePool([make_engine(s.url, weight_sync=WeightSyncConfig(**{**cfg.__dict__, "group_name": f"g{i}"}),
                                   weight_version="v0", name=f"student{i}") for i, s in enumerate(servers)])


def test_split_balanced_keeps_order_and_evens_the_load():
    assert split_balanced([2, 2, 2, 2], 2) == [(0, 2), (2, 4)]
    assert split_balanced([8, 1, 1], 3) == [(0, 1), (1, 2), (2, 3)]
    assert split_balanced([1], 3) == [(0, 1)]
    assert split_balanced([], 2) == []


def test_requests_are_spread_over_the_servers_and_come_back_in_order(servers, make_engine):
    pool = _pool(make_engine, servers)
    reqs = [GenerateRequest([i + 1, i + 2], n=2, request_id=f"r{i}") for i in range(6)]
    alone = make_engine(servers[0].url).generate(reqs, PARAMS)  # the fake is deterministic per prompt
    got = pool.generate(reqs, PARAMS)
    assert [[g.response_ids for g in gs] for gs in got] == [[g.response_ids for g in gs] for gs in alone]
    assert [s.log().count("/generate") for s in servers] == [3 + 6, 3]  # server 0 also served `alone`
    lps = pool.score([[1, 2]] * 4, [[3, 4]] * 4)
    assert len(lps) == 4 and lps[0] == lps[3]


def test_every_server_gets_every_weight_update(servers, make_engine):
    pool = _pool(make_engine, servers)
    weights = mixed_weights(1)
    pool.update_weights(iter(weights), "v1")
    want = {n: tensor_digest(t) for n, t in weights}
    assert [s.weights() for s in servers] == [want, want] and pool.weight_version == "v1"
    assert [s.weight_version() for s in servers] == ["v1", "v1"]


def test_a_server_lost_mid_update_names_itself_and_the_pool_refuses_to_generate(servers, make_engine):
    pool = _pool(make_engine, servers)
    servers[1].kill()
    with pytest.raises(WeightSyncError, match=f"student1 server {servers[1].url}"):
        pool.update_weights(iter(mixed_weights(1)), "v1")
    with pytest.raises(RuntimeError, match=r"different weight versions \['v0', 'v1'\]"):
        pool.generate([GenerateRequest([1])], PARAMS)


def test_make_engine_builds_a_pool_with_one_sync_group_per_server(servers):
    cfg = load_config(None, ["student.hf_path=s", "run.algorithm=grpo", "student.engine=sglang",
                             f"student.urls=[{servers[0].url}, {servers[1].url}]",
                             "student.weight_sync.master_port=29600"])
    pool = build.make_engine(cfg.student, "student", 0)
    try:
        assert isinstance(pool, EnginePool)
        assert [(e.sync_config.group_name, e.sync_config.master_port) for e in pool.engines] == [
            ("zppo_weight_sync_0", 29600), ("zppo_weight_sync_1", 29601)]
    finally:
        pool.shutdown()


class _Scorer:
    """An engine that scores each response token with the number of its prompt's images, + 10 x its own index."""

    weight_version = "v0"

    def __init__(self, index):
        self.index, self.calls = index, []

    def score(self, prompt_ids, response_ids, images=None):
        self.calls.append(images)
        return [[float(len(images[k]) if images else -1) + 10 * self.index] * len(r) for k, r in enumerate(response_ids)]


def test_scoring_sends_each_row_its_own_images_and_keeps_the_order():
    engines = [_Scorer(0), _Scorer(1)]
    pool = EnginePool(engines)
    images = [(b"a",), (), (b"b", b"c"), (b"d",)]
    got = pool.score([[1]] * 4, [[2, 3]] * 4, images)
    assert got == [[1.0] * 2, [0.0] * 2, [12.0] * 2, [11.0] * 2]  # rows 0-1 on engine 0, 2-3 on engine 1
    assert pool.score([[1]] * 2, [[2]] * 2) == [[-1.0], [9.0]] and engines[0].calls[-1] is None  # text: as before
