"""Fault tolerance of a pool of servers (rollout/pool.py): a server killed mid-generation, between
steps or mid-update is taken out and the rest carry on with the same results; one that comes back
serves only after it has the current weights; too few left stops the run with a clear error."""

import time
from types import SimpleNamespace

import pytest

from megatron_zppo.loop import UpdatePhase
from megatron_zppo.rollout.engine import GenerateRequest, SamplingParams
from megatron_zppo.rollout.pool import FaultToleranceConfig, ServersChanged, ServersLost
from megatron_zppo.rollout.sync import WeightSyncConfig, policy_engine
from tests.rollout.fake_sglang import FakeSGLang, tensor_digest
from tests.rollout.test_weight_sync import MB, mixed_weights

pytestmark = pytest.mark.timeout(150)

PARAMS = SamplingParams(max_new_tokens=8)
REQUESTS = [GenerateRequest([i + 1, i + 2], n=2, request_id=f"r{i}") for i in range(9)]
# The health monitor only where a test wants it: checks every 0.2 s, from the start.
WATCHED = FaultToleranceConfig(min_servers=1, health_interval_s=0.2, health_timeout_s=5.0, first_wait_s=0.0)
UNWATCHED = FaultToleranceConfig(min_servers=1, health_interval_s=3600.0, first_wait_s=3600.0)


@pytest.fixture
def three():
    with FakeSGLang() as a, FakeSGLang() as b, FakeSGLang() as c:
        yield a, b, c


@pytest.fixture
def make_pool(make_engine):
    pools = []

    def make(servers, tolerance):
        cfg = WeightSyncConfig(backend="gloo", bucket_bytes=MB, timeout_s=60)
        engines = [make_engine(s.url, weight_version="default", name=f"student{i}", retries=1)  # what a fake serves
                   for i, s in enumerate(servers)]
        pools.append(policy_engine(engines, "student", cfg, tolerance))
        return pools[-1]

    yield make
    for pool in pools:
        pool.shutdown()


def _ids(groups):
    return [[g.response_ids for g in gs] for gs in groups]


def _until(condition, limit_s=30.0):
    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end, "not within the limit"
        time.sleep(0.05)


def test_a_server_killed_mid_generation_gives_its_share_to_the_others_with_the_same_results(three, make_pool,
                                                                                            capsys):
    pool = make_pool(three, UNWATCHED)
    clean = _ids(pool.generate(REQUESTS, PARAMS))  # the fake's tokens depend on the prompt, not the server
    three[1].set_faults(die_after_generates=three[1].log().count("/generate") + 1)  # dies on its 2nd request
    assert _ids(pool.generate(REQUESTS, PARAMS)) == clean
    assert pool.counts == {"servers_lost": 1, "servers_back": 0, "requests_resubmitted": 3}
    assert [e.name for e in pool.live] == ["student0", "student2"] and pool.stats.extra["servers_live"] == 2
    assert f"student: server student1 {three[1].url} lost (" in capsys.readouterr().out
    assert _ids(pool.generate(REQUESTS, PARAMS)) == clean  # and on, with two


def test_a_lost_server_that_comes_back_serves_only_after_the_current_weights_reached_it(three, make_pool):
    pool = make_pool(three, WATCHED)
    pool.update_weights(iter(mixed_weights(1)), "v1")
    three[2].kill()  # between steps: the health monitor notices
    _until(lambda: pool.counts["servers_lost"] == 1)
    three[2].restart()  # same port, its initial weights: what its launcher's restart gives
    _until(lambda: pool.counts["servers_back"] == 1)
    assert three[2].weight_version() == "default" and three[2].weights() == {}
    pool.generate(REQUESTS, PARAMS)
    assert three[2].log().count("/generate") == 0  # stale weights are never served as current
    weights = mixed_weights(2)
    pool.update_weights(iter(weights), "v2")  # the returned server is in this update's group
    assert three[2].weights() == {n: tensor_digest(t) for n, t in weights} and three[2].weight_version() == "v2"
    assert len(pool.live) == 3 and pool.weight_version == "v2" and pool.sync_metrics()["sync_servers"] == 3
    pool.generate(REQUESTS, PARAMS)
    assert three[2].log().count("/generate") == 3


def test_a_server_killed_mid_update_is_dropped_and_the_update_sent_again_reaches_the_rest(three, make_pool):
    pool = make_pool(three, UNWATCHED)
    three[0].set_faults(die_at_update=1)  # during the second bucket's broadcast
    weights = mixed_weights(1)
    exports = []

    def export_hf():
        exports.append(1)
        return iter(weights)

    UpdatePhase.sync(SimpleNamespace(engine=pool, trainer=SimpleNamespace(export_hf=export_hf)), "v1")
    assert len(exports) == 2 and pool.counts["servers_lost"] == 1 and pool.weight_version == "v1"
    want = {n: tensor_digest(t) for n, t in weights}
    assert [s.weights() for s in three[1:]] == [want, want]
    assert [e.name for e in pool.live] == ["student1", "student2"]
    assert len(pool.generate(REQUESTS, PARAMS)) == len(REQUESTS)


def test_too_few_servers_left_stops_with_an_error_naming_the_setting_and_the_last_server(three, make_pool):
    pool = make_pool(three[:2], FaultToleranceConfig(min_servers=2, health_interval_s=3600, first_wait_s=3600))
    three[0].kill()
    with pytest.raises(ServersLost, match=r"student: 1 of 2 servers left, fewer than "
                                          r"student.fault_tolerance.min_servers=2; the last one lost was student0"):
        pool.generate(REQUESTS, PARAMS)
    with pytest.raises(ServersLost):  # and stays stopped
        pool.update_weights(iter(mixed_weights(1)), "v1")


def test_without_fault_tolerance_a_lost_server_still_stops_the_pool(three, make_pool):
    pool = make_pool(three[:2], FaultToleranceConfig())
    three[0].kill()
    with pytest.raises(Exception, match=three[0].url):
        pool.generate(REQUESTS, PARAMS)
    assert pool.counts["servers_lost"] == 0
    with pytest.raises(ValueError, match="min_servers=3 but the pool has 2 servers"):
        make_pool(three[:2], FaultToleranceConfig(min_servers=3))
    assert ServersChanged.__doc__  # what sync() catches: see the mid-update test


def test_a_server_restarted_between_health_checks_is_caught_by_the_weights_it_serves(three, make_pool):
    pool = make_pool(three, UNWATCHED)
    pool.update_weights(iter(mixed_weights(1)), "v1")
    clean = _ids(pool.generate(REQUESTS, PARAMS))
    three[2].restart()  # back before any health check: it answers, with its initial weights
    got = pool.generate(REQUESTS, PARAMS)
    assert _ids(got) == clean and {g.weight_version for gs in got for g in gs} == {"v1"}
    assert pool.counts == {"servers_lost": 1, "servers_back": 0, "requests_resubmitted": 3}
