"""Trainer-side pieces of a weight sync that need no SGLang: bucketing, the process group, the send.

A sync streams HF-named tensors to inference servers in size-bounded buckets so neither side
ever holds a second full copy of the model (`stream_buckets`: bucket k on the wire while k+1 is
gathered). Buckets are planned greedily in stream order (the servers receive tensors in exactly
the order the trainer broadcasts them, so order is part of the protocol) and a tensor is never
split: SGLang loads whole named parameters.

The process group is a *custom* group (its own TCP rendezvous, outside the trainer's default
group) because the trainer's Megatron world and the servers' ranks are unrelated. The store-key
prefix and rank layout match what SGLang's `/init_weights_update_group` does on its side, so both
ends meet: trainer rank 0 hosts the rendezvous store, server ranks are `rank_offset + tp_rank`,
and one group can hold every server (`rank_offsets`), so one broadcast reaches them all.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed import distributed_c10d as c10d

from megatron_zppo.config_io import Range

DEFAULT_BUCKET_BYTES = 512 * 1024 * 1024

TensorMeta = tuple[str, tuple[int, ...], torch.dtype]
T = TypeVar("T")


def meta_nbytes(meta: TensorMeta) -> int:
    _, shape, dtype = meta
    numel = 1
    for dim in shape:
        numel *= int(dim)
    return numel * dtype.itemsize


def iter_marked_buckets(items: Iterable[T], size_of: Callable[[T], int],
                        max_bytes: int) -> Iterator[tuple[list[T], bool]]:
    """Greedy, order-preserving buckets whose total size stays <= max_bytes, each with `is_last`.

    A single item larger than max_bytes gets a bucket of its own rather than an error: refusing
    would make one huge embedding table block the whole sync. A bucket closes either because the
    next item did not fit (so more follow) or because the stream ended, so "last" is known without
    reading further: a sender can broadcast bucket k while it gathers bucket k+1, holding about
    two buckets (plus one item), never three.
    """
    if max_bytes <= 0:
        raise ValueError(f"bucket size must be > 0 bytes, got {max_bytes!r}")
    bucket: list[T] = []
    used = 0
    for item in items:
        size = size_of(item)
        if bucket and used + size > max_bytes:
            yield bucket, False
            bucket, used = [], 0
        bucket.append(item)
        used += size
    if bucket:
        yield bucket, True


def iter_buckets(items: Iterable[T], size_of: Callable[[T], int], max_bytes: int) -> Iterator[list[T]]:
    return (bucket for bucket, _ in iter_marked_buckets(items, size_of, max_bytes))


def _nbytes(named: tuple[str, torch.Tensor]) -> int:
    return named[1].numel() * named[1].element_size()


def marked_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[tuple[list[tuple[str, torch.Tensor]], bool]]:
    """The sender's stream: (bucket, is_last), with the same boundaries as `plan_buckets`."""
    return iter_marked_buckets(named_tensors, _nbytes, max_bytes)


def stream_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int,
                   start: Callable[[int, list[tuple[str, torch.Tensor]], bool], T], finish: Callable[[T], None]) -> int:
    """The sender's double-buffered loop; returns how many buckets were sent.

    `start(index, bucket, is_last)` puts a bucket on the wire without waiting (async broadcasts,
    HTTP calls in flight) and returns a handle that keeps it alive; the next bucket is gathered from
    the export meanwhile; then `finish(handle)` waits for it. So the sender holds about two buckets.
    """
    buckets = marked_buckets(named_tensors, max_bytes)
    current, index = next(buckets, None), 0
    while current is not None:
        handle = start(index, *current)
        try:
            current = None if current[1] else next(buckets)
        except BaseException:  # the export failed mid-way: settle what is on the wire, then report it
            try:
                finish(handle)
            except Exception:
                pass
            raise
        finish(handle)
        index += 1
    return index


def plan_buckets(metas: Iterable[TensorMeta], max_bytes: int = DEFAULT_BUCKET_BYTES) -> list[list[TensorMeta]]:
    """The pure planner: list of (name, shape, dtype) -> buckets under max_bytes, in order."""
    return list(iter_buckets(metas, meta_nbytes, max_bytes))


def bucket_named_tensors(
    named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Streaming twin of `plan_buckets`: same bucket boundaries, but carries the tensors."""
    return iter_buckets(named_tensors, _nbytes, max_bytes)


def dtype_name(dtype: torch.dtype) -> str:
    """SGLang resolves dtypes with `getattr(torch, name)`, so send "bfloat16", not "torch.bfloat16"."""
    return str(dtype).removeprefix("torch.")


def bucket_payload(bucket: list[tuple[str, torch.Tensor]]) -> dict[str, list]:
    return {
        "names": [name for name, _ in bucket],
        "dtypes": [dtype_name(t.dtype) for _, t in bucket],
        "shapes": [list(t.shape) for _, t in bucket],
    }


def init_custom_process_group(
    *,
    backend: str,
    init_method: str,
    world_size: int,
    rank: int,
    group_name: str,
    timeout_s: float = 300.0,
) -> dist.ProcessGroup:
    """Join a process group that lives beside (not inside) any default group this process has.

    Both the trainer (rank 0) and the fake/real server call this concurrently; it blocks until
    all `world_size` ranks have arrived or `timeout_s` passes.
    """
    timeout = timedelta(seconds=timeout_s)
    store, rank, world_size = next(c10d.rendezvous(init_method, rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    # The group name prefixes every store key, so two groups on one store never collide and the
    # server (which prefixes the same way) finds the trainer's keys.
    prefix_store = dist.PrefixStore(group_name, store)
    # An empty rank list tells torch this group is not carved out of the default group.
    group, _ = c10d._new_process_group_helper(
        world_size, rank, [], backend, prefix_store, group_name=group_name, timeout=timeout
    )
    # Collectives translate group ranks through this map; identity since the group is standalone.
    c10d._world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def rank_offsets(world_sizes: Iterable[int]) -> tuple[int, list[int]]:
    """(group world size, each server's rank_offset) for one group: the sender is rank 0 and server i's
    tp ranks follow the servers before it (SGLang joins tp rank r of a server as rank_offset + r)."""
    offsets, at = [], 1
    for size in world_sizes:
        if size < 1:
            raise ValueError(f"a server's world size must be >= 1, got {size!r}")
        offsets.append(at)
        at += size
    return at, offsets


def resolve_master_addr(addr: str) -> str:
    return socket.gethostname() if addr == "auto" else addr


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A port free right now; the small race until the store binds it is accepted for simplicity."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def destroy_custom_process_group(group: dist.ProcessGroup) -> None:
    """Also drops the rank map registered above. A global `destroy_process_group()` (Megatron's
    teardown, `parallel.destroy`) may have destroyed this group already: then there is nothing to do."""
    try:
        dist.destroy_process_group(group)
    except ValueError:  # torch's "Invalid process group specified": no longer registered
        pass


# SGLang's `load_format` for one broadcast per bucket: the tensors' bytes concatenated in bucket
# order (its FlattenedTensorBucket layout). None: one broadcast per tensor.
FLATTENED = "flattened_bucket"


_staging: dict[torch.device, torch.Tensor] = {}


def flatten_bucket(bucket: list[tuple[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
    """The bucket's bytes in one buffer. The buffer is kept and reused across buckets and syncs:
    allocating (and page-faulting) a fresh one each time costs as much as the copy itself."""
    sizes = [t.numel() * t.element_size() for _, t in bucket]
    total = sum(sizes)
    buf = _staging.get(device)
    if buf is None or buf.numel() < total:
        buf = _staging[device] = torch.empty(total, dtype=torch.uint8, device=device)
    at = 0
    for (_, t), n in zip(bucket, sizes):
        buf[at:at + n].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8))
        at += n
    return buf[:total]


def broadcast_bucket(group: dist.ProcessGroup, bucket: list[tuple[str, torch.Tensor]], device: torch.device,
                     load_format: str | None = FLATTENED, async_op: bool = False) -> list:
    """Sender side: broadcast a bucket from rank 0 as the server expects it for `load_format`.

    Tensors are made contiguous on the group's device first because gloo/NCCL send raw storage.
    One broadcast per bucket costs a copy into a flat buffer but saves a collective per tensor,
    which dominates for models with hundreds of small norm and bias tensors. With `async_op` the
    works are returned (they keep their tensors alive) and the caller waits on them, so the next
    bucket can be gathered while this one is on the wire.
    """
    if load_format == FLATTENED:
        tensors = [flatten_bucket(bucket, device)]
    else:
        tensors = [tensor.detach().to(device).contiguous() for _, tensor in bucket]
    works = [dist.broadcast(t, src=0, group=group, async_op=async_op) for t in tensors]
    return works if async_op else []


def receive_bucket(group: dist.ProcessGroup, payload: dict[str, list], device: torch.device) -> dict[str, torch.Tensor]:
    """Receiver side (what a server does per `/update_weights_from_distributed`); used by tests."""
    metas = [(name, getattr(torch, dtype), tuple(shape))
             for name, dtype, shape in zip(payload["names"], payload["dtypes"], payload["shapes"], strict=True)]
    if payload.get("load_format") == FLATTENED:
        sizes = [meta_nbytes((name, shape, dtype)) for name, dtype, shape in metas]
        flat = torch.empty(sum(sizes), dtype=torch.uint8, device=device)
        dist.broadcast(flat, src=0, group=group)
        out, at = {}, 0
        for (name, dtype, shape), n in zip(metas, sizes):
            chunk = flat[at:at + n]
            # A slice can only be viewed as a wider dtype at an aligned offset (mixed-dtype buckets).
            out[name] = (chunk if at % dtype.itemsize == 0 else chunk.clone()).view(dtype).reshape(shape)
            at += n
        return out
    out = {name: torch.empty(shape, dtype=dtype, device=device) for name, dtype, shape in metas}
    for work in [dist.broadcast(t, src=0, group=group, async_op=True) for t in out.values()]:
        work.wait()  # all posted first, then waited, as SGLang's receiver does
    return out


@dataclass(frozen=True)
class WeightSyncConfig:
    """How the trainer pushes new weights into an inference server (chosen once at start-up)."""

    # "distributed": process-group broadcast | "disk": safetensors files | "ipc": CUDA-IPC handles to a
    # server on the same GPUs (co-located; GPU only)
    strategy: str = "distributed"
    bucket_bytes: Annotated[int, Range(ge=1)] = DEFAULT_BUCKET_BYTES
    # distributed
    backend: str = "nccl"  # "gloo" for CPU servers and tests
    # an address of the trainer's sending rank that every server can reach; "auto": that rank's host
    # name (multi-node jobs, where which node holds rank 0 is decided at start-up)
    master_addr: str = "127.0.0.1"
    master_port: Annotated[int, Range(ge=0, le=65535)] = 0  # 0: pick a free port when the group is first made
    # each server's tp_size: server i's ranks start at 1 + i * server_world_size
    server_world_size: Annotated[int, Range(ge=1)] = 1
    group_name: str = "zppo_weight_sync"
    # Several servers (a pool): "one_group" joins the trainer and every server in one process group, so
    # each bucket is broadcast once for all of them; "per_server" gives each server its own group
    # (name suffixed _i, port + i when fixed) for setups where one group cannot span them.
    fanout: str = "one_group"
    # None: one broadcast per tensor; "flattened_bucket": one per bucket (SGLang's flat layout).
    # Per tensor is the default: on CPU/gloo it measured faster (benchmarks/bench_weight_sync.py),
    # since the flat path adds a copy on each side; with thousands of tensors on NCCL, try flat.
    load_format: str | None = None
    timeout_s: Annotated[float, Range(gt=0)] = 600.0  # bounds every rendezvous and broadcast, so a dead peer cannot hang us
    # disk
    disk_dir: str | None = None  # a directory the server can read; one sub-directory per version
    disk_support_dir: str | None = None  # HF model dir whose config/tokenizer files are copied along

    def __post_init__(self):
        if self.strategy not in ("distributed", "disk", "ipc"):
            raise ValueError(f"weight_sync.strategy must be 'distributed', 'disk' or 'ipc', got {self.strategy!r}")
        if self.strategy == "disk" and not self.disk_dir:
            raise ValueError("weight_sync.disk_dir is required when weight_sync.strategy is 'disk'")
        if self.fanout not in ("one_group", "per_server"):
            raise ValueError(f"weight_sync.fanout must be 'one_group' or 'per_server', got {self.fanout!r}")


@dataclass(frozen=True)
class SyncReport:
    """One weight update, as the run's metrics log it."""

    seconds: float
    bytes: int
    servers: int

    def metrics(self) -> dict[str, float]:
        return {"sync_s": self.seconds, "sync_bytes": float(self.bytes), "sync_servers": float(self.servers),
                "sync_gb_per_s": self.bytes / 1e9 / self.seconds if self.seconds > 0 else float("nan")}


_SAFE_VERSION = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # no leading dot: "..", and our temp dirs
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def write_safetensors_dir(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    root: str | Path,
    version: str,
    *,
    shard_bytes: int = DEFAULT_BUCKET_BYTES,
    support_dir: str | Path | None = None,
) -> Path:
    """Write `root/<version>/model-NNNNN.safetensors` so that a reader never sees a half-written dir.

    Files go into a hidden temporary directory that is renamed into place only once every shard is
    flushed to disk: a server told to load `root/<version>` either finds all of it or none.
    """
    if not _SAFE_VERSION.fullmatch(version):
        raise ValueError(f"weight version {version!r} must be a plain file name (letters, digits, ._-; no leading dot)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the server may run as another user
    try:
        if support_dir is not None:
            for src in Path(support_dir).iterdir():  # config.json, tokenizer files: SGLang reads them
                skip = src.name.endswith(_WEIGHT_SUFFIXES) or src.name.endswith(".index.json")
                if src.is_file() and not skip:
                    shutil.copy2(src, tmp / src.name)
        for index, shard in enumerate(bucket_named_tensors(named_tensors, shard_bytes)):
            path = tmp / f"model-{index + 1:05d}.safetensors"
            save_file({name: t.detach().cpu().contiguous() for name, t in shard}, str(path))
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # re-sending a version replaces it; only this narrow window is not atomic
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def serialize_named_tensors(bucket: list[tuple[str, torch.Tensor]]) -> str:
    """SGLang's MultiprocessingSerializer format: base64 of a ForkingPickler dump, whose torch
    reductions turn CUDA tensors into IPC handles (the bytes name GPU memory, not carry it)."""
    import base64
    import io
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing as _  # noqa: F401  (registers the tensor reductions)

    buf = io.BytesIO()
    ForkingPickler(buf).dump(list(bucket))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def ipc_payloads(bucket: list[tuple[str, torch.Tensor]], tp_size: int) -> list[str]:
    """`serialized_named_tensors` for SGLang's `/update_weights_from_tensor` (co-located servers).

    Each server TP rank gets its own pickle (as SGLang's own client does), so every rank's
    CUDA-IPC handles are released independently after it loads; the caller keeps the tensors
    alive until the server has answered. CPU tensors are refused: a server given one crashes
    (../shared/notes/sglang.md).
    """
    cpu = [name for name, t in bucket if not t.is_cuda]
    if cpu:
        raise ValueError(f"weight_sync.strategy 'ipc' needs CUDA tensors on the server's GPU; {cpu[0]!r} "
                         f"(and {len(cpu) - 1} more) are on the CPU")
    return [serialize_named_tensors(bucket) for _ in range(tp_size)]
