"""Trainer-side pieces of a weight sync that need no SGLang: bucketing, the process group, the send.

A sync streams HF-named tensors to an inference server in size-bounded buckets so neither side
ever holds a second full copy of the model. Buckets are planned greedily in stream order (the
server receives tensors in exactly the order the trainer broadcasts them, so order is part of the
protocol) and a tensor is never split: SGLang loads whole named parameters.

The process group is a *custom* group (its own TCP rendezvous, outside the trainer's default
group) because the trainer's Megatron world and the server's ranks are unrelated. The store-key
prefix and rank layout match what SGLang's `/init_weights_update_group` does on its side, so both
ends meet: trainer rank 0 hosts the rendezvous store, server ranks are `rank_offset + tp_rank`.
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


def iter_buckets(items: Iterable[T], size_of: Callable[[T], int], max_bytes: int) -> Iterator[list[T]]:
    """Greedy, order-preserving buckets whose total size stays <= max_bytes.

    A single item larger than max_bytes gets a bucket of its own rather than an error: refusing
    would make one huge embedding table block the whole sync.
    """
    if max_bytes <= 0:
        raise ValueError(f"bucket size must be > 0 bytes, got {max_bytes!r}")
    bucket: list[T] = []
    used = 0
    for item in items:
        size = size_of(item)
        if bucket and used + size > max_bytes:
            yield bucket
            bucket, used = [], 0
        bucket.append(item)
        used += size
    if bucket:
        yield bucket


def plan_buckets(metas: Iterable[TensorMeta], max_bytes: int = DEFAULT_BUCKET_BYTES) -> list[list[TensorMeta]]:
    """The pure planner: list of (name, shape, dtype) -> buckets under max_bytes, in order."""
    return list(iter_buckets(metas, meta_nbytes, max_bytes))


def bucket_named_tensors(
    named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Streaming twin of `plan_buckets`: same bucket boundaries, but carries the tensors."""
    return iter_buckets(named_tensors, lambda nt: nt[1].numel() * nt[1].element_size(), max_bytes)


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


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A port free right now; the small race until the store binds it is accepted for simplicity."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def destroy_custom_process_group(group: dist.ProcessGroup) -> None:
    dist.destroy_process_group(group)  # also drops the rank map registered above


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
                     load_format: str | None = FLATTENED) -> None:
    """Sender side: broadcast a bucket from rank 0 as the server expects it for `load_format`.

    Tensors are made contiguous on the group's device first because gloo/NCCL send raw storage.
    One broadcast per bucket costs a copy into a flat buffer but saves a collective per tensor,
    which dominates for models with hundreds of small norm and bias tensors.
    """
    if load_format == FLATTENED:
        dist.broadcast(flatten_bucket(bucket, device), src=0, group=group)
        return
    for _, tensor in bucket:
        dist.broadcast(tensor.detach().to(device).contiguous(), src=0, group=group)


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
    for tensor in out.values():
        dist.broadcast(tensor, src=0, group=group)
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
    master_addr: str = "127.0.0.1"  # an address of the trainer that the server can reach
    master_port: Annotated[int, Range(ge=0, le=65535)] = 0  # 0: pick a free port when the group is first made
    server_world_size: Annotated[int, Range(ge=1)] = 1  # the server's tp_size: its ranks are 1..server_world_size
    group_name: str = "zppo_weight_sync"
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
