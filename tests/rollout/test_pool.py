"""Several SGLang servers of one policy as one engine (EnginePool): requests spread over them in
order, every weight update into each, and a partial update that stops generation."""

import pytest

from megatron_zppo import build
from megatron_zppo.config import load_config
from megatron_zppo.rollout.engine import GenerateRequest, SamplingParams
from megatron_zppo.rollout.pool import EnginePool, split_balanced
from megatron_zppo.rollout.sglang_engine import SGLangEngine, WeightSyncError
from megatron_zppo.rollout.sync import DistributedSync, ServerSync, WeightSyncConfig, policy_engine
from tests.rollout.fake_sglang import FakeSGLang, tensor_digest
from tests.rollout.test_weight_sync import MB, mixed_weights

pytestmark = pytest.mark.timeout(150)

PARAMS = SamplingParams(max_new_tokens=8)


@pytest.fixture
def servers():
    with FakeSGLang() as a, FakeSGLang() as b:
        yield a, b


@pytest.fixture
def make_pool(make_engine):
    """Pools over fake servers with one sync, shut down (leaving their group) before their engines."""
    pools = []

    def make(servers, **sync):
        cfg = WeightSyncConfig(backend="gloo", bucket_bytes=MB, timeout_s=60, **sync)
        engines = [make_engine(s.url, weight_version="v0", name=f"student{i}") for i, s in enumerate(servers)]
        pools.append(policy_engine(engines, "student", cfg))
        return pools[-1]

    yield make
    for pool in pools:
        pool.shutdown()


def test_split_balanced_keeps_order_and_evens_the_load():
    assert split_balanced([2, 2, 2, 2], 2) == [(0, 2), (2, 4)]
    assert split_balanced([8, 1, 1], 3) == [(0, 1), (1, 2), (2, 3)]
    assert split_balanced([1], 3) == [(0, 1)]
    assert split_balanced([], 2) == []


def test_requests_are_spread_over_the_servers_and_come_back_in_order(servers, make_engine, make_pool):
    pool = make_pool(servers)
    reqs = [GenerateRequest([i + 1, i + 2], n=2, request_id=f"r{i}") for i in range(6)]
    alone = make_engine(servers[0].url).generate(reqs, PARAMS)  # the fake is deterministic per prompt
    got = pool.generate(reqs, PARAMS)
    assert [[g.response_ids for g in gs] for gs in got] == [[g.response_ids for g in gs] for gs in alone]
    assert [s.log().count("/generate") for s in servers] == [3 + 6, 3]  # server 0 also served `alone`
    lps = pool.score([[1, 2]] * 4, [[3, 4]] * 4)
    assert len(lps) == 4 and lps[0] == lps[3]


def test_every_server_gets_every_weight_update(servers, make_engine, make_pool):
    pool = make_pool(servers)
    weights = mixed_weights(1)
    pool.update_weights(iter(weights), "v1")
    want = {n: tensor_digest(t) for n, t in weights}
    assert [s.weights() for s in servers] == [want, want] and pool.weight_version == "v1"
    assert [s.weight_version() for s in servers] == ["v1", "v1"]


def test_a_server_lost_mid_update_names_itself_and_the_pool_refuses_to_generate(servers, make_engine, make_pool):
    pool = make_pool(servers)
    servers[1].kill()
    with pytest.raises(WeightSyncError, match=f"student1 server {servers[1].url}"):
        pool.update_weights(iter(mixed_weights(1)), "v1")
    with pytest.raises(WeightSyncError, match="refuse"):  # one sync: the survivor is left unusable too
        pool.generate([GenerateRequest([1])], PARAMS)


def test_engines_left_on_different_versions_make_the_pool_refuse(servers, make_engine):
    pool = EnginePool([make_engine(s.url, weight_version="v0") for s in servers])
    pool.engines[1].weight_version = "v1"  # e.g. one engine updated on its own, outside the pool
    with pytest.raises(RuntimeError, match=r"different weight versions \['v0', 'v1'\]"):
        pool.generate([GenerateRequest([1])], PARAMS)


@pytest.mark.parametrize("fanout, layout", [
    ("one_group", [("", 29600, [1, 3], 5)]),
    ("per_server", [("_0", 29600, [1], 3), ("_1", 29601, [1], 3)])])
def test_make_engine_builds_a_pool_with_one_sync_over_its_servers(servers, fanout, layout):
    cfg = load_config(None, ["student.hf_path=s", "run.algorithm=grpo", "student.engine=sglang",
                             f"student.urls=[{servers[0].url}, {servers[1].url}]",
                             "student.weight_sync.master_port=29600", "student.weight_sync.server_world_size=2",
                             f"student.weight_sync.fanout={fanout}"])
    pool = build.make_engine(cfg.student, "student", 0)
    try:
        assert isinstance(pool, EnginePool) and isinstance(pool.sync, DistributedSync)
        assert pool.sync.prefix.startswith("zppo_weight_sync_")  # and unique to this trainer process
        assert [(name, port, [offset for _, offset in members], world)
                for name, port, members, world in pool.sync.layout()] == [
            (pool.sync.prefix + suffix, port, offsets, world) for suffix, port, offsets, world in layout]
    finally:
        pool.shutdown()


def test_a_student_gets_exactly_one_sync_and_reports_it_and_a_teacher_none(servers, monkeypatch):
    built = []  # how many servers each ServerSync made is over
    make = ServerSync.__init__

    def counted(self, cfg, engines):
        built.append(len(engines))
        make(self, cfg, engines)

    monkeypatch.setattr(ServerSync, "__init__", counted)
    urls = f"[{servers[0].url}, {servers[1].url}]"
    for student_urls, n in ((f"student.urls={urls}", 2), (f"student.url={servers[0].url}", 1)):
        cfg = load_config(None, ["student.hf_path=s", "run.algorithm=grpo", "student.engine=sglang", student_urls,
                                 "student.weight_sync.backend=gloo", "student.weight_sync.timeout_s=60",
                                 "teacher.engine=sglang", f"teacher.urls={urls}"])
        built.clear()
        student = build.make_engine(cfg.student, "student", 0)
        teacher = build.make_engine(cfg.teacher, "teacher", 1)
        try:
            assert built == [n]  # one sync over all of the student's servers; none per server, none for the teacher
            assert isinstance(student, EnginePool if n > 1 else SGLangEngine) and student.sync_metrics() == {}
            weights = mixed_weights(n)
            student.update_weights(iter(weights), "v1")
            metrics = student.sync_metrics()
            assert metrics["sync_bytes"] == sum(t.numel() * t.element_size() for _, t in weights)
            assert metrics["sync_servers"] == n and metrics["sync_s"] > 0 and metrics["sync_gb_per_s"] > 0
            assert teacher.sync is None and teacher.sync_metrics() == {}
            with pytest.raises(WeightSyncError, match="has no weight sync of its own"):
                teacher.update_weights(iter(weights), "v1")
        finally:
            teacher.shutdown()
            student.shutdown()


@pytest.mark.parametrize("override, key", [("teacher.weight_sync.backend=gloo", "teacher.weight_sync"),
                                           ("teacher.release_memory=true", "teacher.release_memory")])
def test_the_teachers_weight_sync_settings_are_refused_not_ignored(override, key):
    with pytest.raises(ValueError, match=f"{key} is unused"):
        load_config(None, ["student.hf_path=s", "run.algorithm=grpo", "teacher.engine=sglang",
                           "teacher.url=http://127.0.0.1:9", override])


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
