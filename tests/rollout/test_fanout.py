"""One weight sync into several SGLang servers (stand-ins in their own processes, real gloo groups).

The sender runs unmocked in this process; each stand-in server joins the group from its own
process at the rank SGLang would take (`rank_offset + tp_rank`) and receives in its HTTP handler,
as SGLang does, so "bit-exact on every server" is checked on what really crossed the sockets.
"""

import weakref
from contextlib import ExitStack

import pytest
import torch

from megatron_zppo.rollout.engine import GenerateRequest, SamplingParams
from megatron_zppo.rollout.engine import StudentEngine
from megatron_zppo.rollout.sglang_engine import WeightSyncError
from megatron_zppo.rollout.sync import WeightSyncConfig, bucketed, policy_engine
from megatron_zppo.rollout.sync.groups import rank_offsets
from tests.rollout.fake_sglang import FakeSGLang, tensor_digest
from tests.rollout.test_weight_sync import MB, mixed_weights

pytestmark = pytest.mark.timeout(200)  # every collective and HTTP call below is bounded by timeout_s too

PARAMS = SamplingParams(max_new_tokens=4)


@pytest.fixture
def fakes():
    """fakes(n): n stand-in servers, all stopped at the end of the test."""
    with ExitStack() as stack:
        yield lambda n: [stack.enter_context(FakeSGLang()) for _ in range(n)]


def make_pool(make_engine, servers, **sync) -> StudentEngine:
    """The student over `servers` as build.make_engine makes it: a pool of several, or the one server."""
    cfg = WeightSyncConfig(**{"backend": "gloo", "bucket_bytes": MB, "timeout_s": 60} | sync)  # 60: a loaded machine
    engines = [make_engine(s.url, weight_version="v0", name=f"student{i}") for i, s in enumerate(servers)]
    return policy_engine(engines, "student", cfg)


def test_rank_offsets_follow_each_servers_world_size():
    assert rank_offsets([1, 1, 1]) == (4, [1, 2, 3])
    assert rank_offsets([2, 4]) == (7, [1, 3])
    with pytest.raises(ValueError, match="world size must be >= 1"):
        rank_offsets([2, 0])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_one_group_broadcast_leaves_every_server_bit_exact(n, fakes, make_engine):
    servers = fakes(n)
    pool = make_pool(make_engine, servers)
    try:
        for version, seed in (("v1", 1), ("v2", 2)):  # the second sync reuses the group
            weights = mixed_weights(seed)
            pool.update_weights(iter(weights), version)
            want = {name: tensor_digest(t) for name, t in weights}
            assert [s.weights() for s in servers] == [want] * n
            assert [s.weight_version() for s in servers] == [version] * n and pool.weight_version == version
        buckets = len(list(bucketed(weights, MB)))
        for i, s in enumerate(servers):
            assert (s.group()["rank_offset"], s.group()["world_size"]) == (1 + i, 1 + n)  # one group for all
            log = s.log()
            assert log.count("/init_weights_update_group") == 1
            assert log.count("/update_weights_from_distributed") == 2 * buckets  # each bucket once per sync
        total = sum(t.numel() * t.element_size() for _, t in weights)
        metrics = pool.sync_metrics()
        assert (metrics["sync_bytes"], metrics["sync_servers"]) == (total, n) and metrics["sync_gb_per_s"] > 0
        assert pool.generate([GenerateRequest([1], n=1)] * n, PARAMS)[0][0].weight_version == "v2"
    finally:
        pool.shutdown()


def test_a_restarted_trainer_joins_servers_that_still_hold_the_last_ones_group(fakes, make_engine):
    # A resume against servers still up: the first trainer never left its group (it was killed).
    servers = fakes(2)
    first, second = make_pool(make_engine, servers), make_pool(make_engine, servers)
    try:
        first.update_weights(iter(mixed_weights(2)), "v1")
        weights = mixed_weights(3)
        second.update_weights(iter(weights), "v2")
        want = {name: tensor_digest(t) for name, t in weights}
        assert [s.weights() for s in servers] == [want, want] and first.sync.prefix != second.sync.prefix
    finally:
        second.shutdown()
        first.shutdown()


@pytest.mark.timeout(60)  # far below weight_sync.timeout_s: waiting it out would fail here
def test_a_server_refusing_to_join_the_group_fails_the_sync_at_once_naming_it(fakes, make_engine):
    servers = fakes(2)
    first = make_pool(make_engine, servers[:1])
    second = make_pool(make_engine, servers, timeout_s=150)
    try:
        first.update_weights(iter(mixed_weights(1)), "v1")
        second.sync.prefix = first.sync.prefix  # server 0 still holds a group of this name: it refuses
        with pytest.raises(WeightSyncError) as info:
            second.update_weights(iter(mixed_weights(1)), "v2")
        assert f"student0 server {servers[0].url}" in str(info.value)
        assert "already been used" in str(info.value)
    finally:
        second.shutdown()
        first.shutdown()


def test_per_server_fanout_gives_each_server_its_own_group(fakes, make_engine):
    servers = fakes(2)
    pool = make_pool(make_engine, servers, fanout="per_server", server_world_size=1)
    try:
        weights = mixed_weights(3)
        pool.update_weights(iter(weights), "v1")
        want = {name: tensor_digest(t) for name, t in weights}
        assert [s.weights() for s in servers] == [want, want]
        assert [(s.group()["group_name"], s.group()["rank_offset"], s.group()["world_size"]) for s in servers] == [
            (pool.sync.prefix + "_0", 1, 2), (pool.sync.prefix + "_1", 1, 2)]
    finally:
        pool.shutdown()


def test_a_server_killed_mid_broadcast_is_named_and_no_server_is_left_serving(fakes, make_engine):
    servers = fakes(3)
    pool = make_pool(make_engine, servers)
    try:
        servers[1].set_faults(die_at_update=1)  # exits on receiving the second bucket's request
        with pytest.raises(WeightSyncError) as info:
            pool.update_weights(iter(mixed_weights(1)), "v1")
        message = str(info.value)
        assert f"student1 server {servers[1].url}" in message and "stays on weight version 'v0'" in message
        assert "bucket 1" in message and "student0, student2" in message
        for engine in pool.engines:  # the survivors hold bucket 0 of v1 over v0: none may serve silently
            with pytest.raises(WeightSyncError, match="student1 server|refuse"):
                engine.generate([GenerateRequest([1])], PARAMS)
        with pytest.raises(WeightSyncError):
            pool.generate([GenerateRequest([1])], PARAMS)
        assert [servers[k].weight_version() for k in (0, 2)] == ["default", "default"]  # version rides last

        servers[1].restart()  # a supervisor brings it back; the next sync joins a fresh group
        weights = mixed_weights(4)
        pool.update_weights(iter(weights), "v2")
        want = {name: tensor_digest(t) for name, t in weights}
        assert [s.weights() for s in servers] == [want] * 3
        assert pool.generate([GenerateRequest([1])], PARAMS)[0][0].weight_version == "v2"
    finally:
        pool.shutdown()


def test_a_server_reporting_another_version_is_named(fakes, make_engine):
    servers = fakes(2)
    pool = make_pool(make_engine, servers)
    try:
        servers[1].set_faults(stale_version=1)
        with pytest.raises(WeightSyncError, match=f"student1 server {servers[1].url}.*verify weight_version.*"
                                                  r"reports weight_version 'default'"):
            pool.update_weights(iter(mixed_weights(1)), "v1")
        with pytest.raises(WeightSyncError):
            pool.generate([GenerateRequest([1])], PARAMS)
    finally:
        pool.shutdown()


def test_disk_sync_writes_the_directory_once_and_every_server_loads_it(fakes, make_engine, tmp_path):
    servers = fakes(2)
    pool = make_pool(make_engine, servers, strategy="disk", disk_dir=str(tmp_path))
    try:
        weights = mixed_weights(5, 2)
        pool.update_weights(iter(weights), "v1")
        want = {name: tensor_digest(t) for name, t in weights}
        assert [s.weights() for s in servers] == [want, want]
        assert [s.loaded_from() for s in servers] == [[str(tmp_path / "v1")]] * 2
        assert [p.name for p in tmp_path.iterdir()] == ["v1"]
    finally:
        pool.shutdown()


def test_the_export_is_streamed_holding_about_two_buckets(fakes, make_engine):
    """The sender never holds the model: every tensor the export yields is fresh (as a gather's
    output is) and is freed once its bucket is on every server."""
    servers = fakes(2)
    pool = make_pool(make_engine, servers)
    source = [(f"w{i}", torch.full((MB // 8,), float(i))) for i in range(24)]  # 24 x 0.5 MB, buckets of 1 MB
    live, peak = [0], [0]

    def export():
        for name, t in source:
            fresh = t.clone()
            live[0] += fresh.numel() * 4
            peak[0] = max(peak[0], live[0])
            weakref.finalize(fresh, lambda: live.__setitem__(0, live[0] - MB // 2))
            yield name, fresh

    try:
        pool.update_weights(export(), "v1")
        assert [s.weights() for s in servers] == [{n: tensor_digest(t) for n, t in source}] * 2
        assert peak[0] <= 2 * MB + MB // 2 < 12 * MB  # two buckets and the tensor that closed one, not the model
    finally:
        pool.shutdown()
