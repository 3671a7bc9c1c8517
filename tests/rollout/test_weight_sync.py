"""Weight sync: bucketing properties, atomic disk writes, and a real gloo broadcast to a fake server.

The distributed tests run the trainer side unmocked in this process and the receiving rank inside
the fake server's process, exactly as SGLang would, and compare what arrived bit for bit.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from megatron_zppo.rollout.engine import GenerateRequest, SamplingParams
from megatron_zppo.rollout.sglang_engine import WeightSyncError
from megatron_zppo.rollout.sync import WeightSyncConfig, bucketed
from megatron_zppo.rollout.sync.buckets import meta_nbytes
from megatron_zppo.rollout.sync.disk import write_safetensors_dir
from megatron_zppo.rollout.sync.groups import bucket_payload, flatten_bucket
from megatron_zppo.rollout.sync.ipc import ipc_payloads, serialize_named_tensors
from tests.rollout.fake_sglang import tensor_digest

pytestmark = pytest.mark.timeout(90)

MB = 1024 * 1024
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64]
metas = st.lists(
    st.tuples(st.text("abcdef.", min_size=1, max_size=8), st.lists(st.integers(0, 40), max_size=3).map(tuple),
              st.sampled_from(DTYPES)),
    max_size=30,
)


@given(metas, st.integers(1, 20_000))
def test_buckets_keep_order_never_split_and_respect_the_limit(items, limit):
    marked = list(bucketed(items, limit, meta_nbytes))  # what a receiver plans, and the sender streams
    buckets = [b for b, _ in marked]
    assert [m for b in buckets for m in b] == items  # order kept, nothing dropped or split
    for bucket in buckets:
        assert bucket  # no empty buckets
        assert sum(map(meta_nbytes, bucket)) <= limit or len(bucket) == 1  # oversize tensors stand alone
    for bucket, following in zip(buckets, buckets[1:]):
        # greedy: a bucket closes only because the next tensor would not fit
        assert sum(map(meta_nbytes, bucket)) + meta_nbytes(following[0]) > limit
    assert [last for _, last in marked] == [False] * (len(buckets) - 1) + [True] * bool(buckets)


def test_tensor_larger_than_the_limit_gets_its_own_bucket():
    small, huge = ("s", (10,), torch.float32), ("h", (1000,), torch.float32)
    assert [b for b, _ in bucketed([small, huge, small], 100, meta_nbytes)] == [[small], [huge], [small]]
    with pytest.raises(ValueError, match="must be > 0"):
        list(bucketed([small], 0, meta_nbytes))


def test_streaming_buckets_match_the_pure_plan_and_describe_tensors_for_sglang():
    tensors = [(f"w{i}", torch.zeros(i + 1, 7, dtype=DTYPES[i % 4])) for i in range(12)]
    streamed = list(bucketed(iter(tensors), 300))
    planned = list(bucketed([(n, tuple(t.shape), t.dtype) for n, t in tensors], 300, meta_nbytes))
    assert [([n for n, _ in b], last) for b, last in streamed] == [([n for n, _, _ in b], last) for b, last in planned]
    assert bucket_payload(tensors[:2]) == {"names": ["w0", "w1"], "dtypes": ["float32", "bfloat16"],
                                           "shapes": [[1, 7], [2, 7]]}


def test_config_rejects_unknown_strategy_and_disk_without_directory():
    with pytest.raises(ValueError, match="strategy"):
        WeightSyncConfig(strategy="nfs")
    with pytest.raises(ValueError, match="disk_dir"):
        WeightSyncConfig(strategy="disk")


def mixed_weights(seed: int, megabytes: int = 4) -> list[tuple[str, torch.Tensor]]:
    """A few MB of fp32 and bf16 tensors, including one larger than the 1 MB test buckets."""
    gen = torch.Generator().manual_seed(seed)
    per = megabytes * MB // 4 // 6
    return [(f"model.layers.{i}.w", torch.randn(per // 64, 64, generator=gen, dtype=torch.float32).to(
        torch.bfloat16 if i % 2 else torch.float32)) for i in range(6)] + [
        ("model.embed_tokens.weight", torch.randn(1024, 320, generator=gen)),  # 1.25 MB > bucket
        ("model.norm.weight", torch.randn(64, generator=gen).to(torch.bfloat16)),
    ]


def test_disk_writes_are_complete_round_trips_and_leave_no_temporary_files(tmp_path):
    support = tmp_path / "hf"
    support.mkdir()
    (support / "config.json").write_text("{}")
    (support / "model.safetensors").write_text("old weights must not be copied")
    weights = mixed_weights(0, 2)
    path = write_safetensors_dir(iter(weights), tmp_path / "out", "v3", shard_bytes=MB, support_dir=support)
    loaded = {}
    for shard in sorted(path.glob("*.safetensors")):
        loaded.update(load_file(shard))
    assert {n: tensor_digest(t) for n, t in weights} == {n: tensor_digest(t) for n, t in loaded.items()}
    assert (path / "config.json").exists() and not (path / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v3"]


def test_disk_write_interrupted_mid_stream_leaves_nothing_behind(tmp_path):
    def broken():
        yield "a", torch.ones(300_000)
        raise RuntimeError("gather failed")

    with pytest.raises(RuntimeError, match="gather failed"):
        write_safetensors_dir(broken(), tmp_path, "v1", shard_bytes=MB)
    assert list(tmp_path.iterdir()) == []
    for bad in ("../escape", ".."):
        with pytest.raises(ValueError, match="plain file name"):
            write_safetensors_dir([], tmp_path, bad)


def gloo_engine(make_engine, server, **overrides):
    cfg = WeightSyncConfig(backend="gloo", bucket_bytes=MB, timeout_s=20, **overrides)
    return make_engine(server.url, weight_sync=cfg, weight_version="v0")


def test_distributed_sync_delivers_bit_exact_weights_in_the_protocol_order(server, make_engine):
    engine = gloo_engine(make_engine, server)
    weights = mixed_weights(1)
    assert engine.sync_metrics() == {}  # no sync yet
    engine.update_weights(iter(weights), "v1")

    assert server.weights() == {n: tensor_digest(t) for n, t in weights}
    assert engine.weight_version == "v1"
    assert engine.generate([GenerateRequest([1])], SamplingParams())[0][0].weight_version == "v1"
    log = [p for p in server.log() if p != "/generate"]
    updates = log.count("/update_weights_from_distributed")
    assert updates == len(list(bucketed(weights, MB))) > 2
    metrics = engine.sync_metrics()
    assert metrics["sync_bytes"] == sum(t.numel() * t.element_size() for _, t in weights)
    assert metrics["sync_servers"] == 1 and metrics["sync_s"] > 0 and metrics["sync_gb_per_s"] > 0
    assert log == (["/pause_generation", "/flush_cache", "/init_weights_update_group", "/begin_weight_update"]
                   + ["/update_weights_from_distributed"] * updates
                   + ["/end_weight_update", "/model_info", "/continue_generation"])
    assert server.update_aborts() == [False] * updates  # every bucket's request says it, not SGLang's default

    new = mixed_weights(2)
    engine.update_weights(iter(new), "v2")  # the group is reused, not re-joined
    assert server.weights() == {n: tensor_digest(t) for n, t in new}
    assert server.log().count("/init_weights_update_group") == 1 and engine.weight_version == "v2"


def test_sync_failing_mid_way_keeps_old_version_refuses_generation_then_recovers(server, make_engine):
    engine = gloo_engine(make_engine, server)
    server.set_faults(fail_at_update=1)
    with pytest.raises(WeightSyncError) as info:
        engine.update_weights(iter(mixed_weights(1)), "v1")
    message = str(info.value)
    assert "'v1'" in message and "stays on weight version 'v0'" in message and "bucket 1" in message
    assert "end_weight_update never ran" in message and server.url in message
    assert engine.weight_version == "v0" and "/end_weight_update" not in server.log()
    assert server.weight_version() == "default"  # the version rides only on the last bucket
    with pytest.raises(WeightSyncError, match="refuse"):
        engine.generate([GenerateRequest([1])], SamplingParams())

    weights = mixed_weights(3)
    engine.update_weights(iter(weights), "v1")  # a fresh group is joined after the failure
    assert server.weights() == {n: tensor_digest(t) for n, t in weights}
    assert engine.generate([GenerateRequest([1])], SamplingParams())[0][0].weight_version == "v1"


def test_server_dying_during_the_broadcast_raises_promptly_with_the_version(server, make_engine):
    engine = gloo_engine(make_engine, server)
    server.set_faults(die_at_update=1)
    with pytest.raises(WeightSyncError, match=r"to version 'v1' failed during update_weights_from_distributed"
                                              r" \(bucket 1\).*stays on weight version 'v0'"):
        engine.update_weights(iter(mixed_weights(1)), "v1")
    assert engine.weight_version == "v0"


def test_disk_sync_loads_weights_and_keeps_only_the_current_version_on_disk(server, make_engine, tmp_path):
    cfg = WeightSyncConfig(strategy="disk", disk_dir=str(tmp_path), bucket_bytes=MB)
    engine = make_engine(server.url, weight_sync=cfg, weight_version="v0")
    for version, seed in (("v1", 1), ("v2", 2)):
        weights = mixed_weights(seed, 2)
        engine.update_weights(iter(weights), version)
        assert server.weights() == {n: tensor_digest(t) for n, t in weights}
    assert engine.weight_version == "v2" and [p.name for p in tmp_path.iterdir()] == ["v2"]
    assert "/update_weights_from_disk" in server.log()
    assert server.update_aborts() == [False, False]  # said, never left to SGLang's default


def test_disk_sync_rejected_by_the_server_is_a_weight_sync_error(server, make_engine, tmp_path):
    cfg = WeightSyncConfig(strategy="disk", disk_dir=str(tmp_path))
    engine = make_engine(server.url, weight_sync=cfg, weight_version="v0")
    with pytest.raises(WeightSyncError, match="update_weights_from_disk.*no weights.*stays on weight version 'v0'"):
        engine.update_weights(iter([]), "v1")  # an empty state dict writes no shard; the server refuses


def test_flattened_bucket_is_the_bytes_of_each_tensor_in_order():
    """SGLang's flattened_bucket layout: reconstructing by (dtype, shape) in order gives the tensors back."""
    bucket = [("a", torch.arange(6, dtype=torch.float32).reshape(2, 3)),
              ("b", torch.tensor([1.5, -2.0], dtype=torch.bfloat16)), ("c", torch.arange(5, dtype=torch.int64))]
    flat = flatten_bucket(bucket, torch.device("cpu"))
    assert flat.dtype == torch.uint8 and flat.numel() == 24 + 4 + 40
    at = 0
    for _, t in bucket:
        n = t.numel() * t.element_size()
        assert torch.equal(flat[at:at + n].clone().view(t.dtype).reshape(t.shape), t)
        at += n
    again = flatten_bucket(bucket[:1], torch.device("cpu"))  # the staging buffer is reused
    assert torch.equal(again.view(torch.float32).reshape(2, 3), bucket[0][1])


def test_ipc_payload_format_round_trips_and_cpu_tensors_are_refused():
    import base64
    from multiprocessing.reduction import ForkingPickler

    bucket = [("w", torch.arange(4.0)), ("b", torch.ones(2, dtype=torch.bfloat16))]
    with pytest.raises(ValueError, match="'ipc' needs CUDA tensors.*'w'"):
        ipc_payloads(bucket, 2)
    # The format itself, on CPU tensors (a CUDA tensor travels as an IPC handle in the same pickle):
    back = ForkingPickler.loads(base64.b64decode(serialize_named_tensors(bucket)))
    assert [n for n, _ in back] == ["w", "b"] and all(torch.equal(t, u) for (_, t), (_, u) in zip(back, bucket))


def test_ipc_sync_with_cpu_tensors_sends_nothing_and_keeps_the_version(server, make_engine):
    engine = make_engine(server.url, weight_sync=WeightSyncConfig(strategy="ipc"), weight_version="v0")
    with pytest.raises(WeightSyncError, match="during serialize.*stays on weight version 'v0'.*no weights were sent"):
        engine.update_weights([("w", torch.zeros(2))], "v1")
    assert engine.server_weight_version() != "v1"


def test_leaving_a_sync_group_that_megatrons_teardown_already_destroyed_is_quiet(tmp_path):
    # The trainer's parallel.destroy() (destroy_process_group(), every group) may run before the
    # engine's shutdown; leaving the sync group then raised torch's "Invalid process group specified".
    import subprocess
    import sys

    script = f"""
import torch.distributed as dist
from megatron_zppo.rollout.sync.groups import destroy_custom_process_group
dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
group = dist.new_group([0])
dist.destroy_process_group()
destroy_custom_process_group(group)
print("left")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "left", done.stderr[-2000:]
