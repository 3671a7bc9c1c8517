"""The process groups that join the trainer's sending rank with the servers' ranks, and what crosses them.

The process group is a *custom* group (its own TCP rendezvous, outside the trainer's default
group) because the trainer's Megatron world and the servers' ranks are unrelated. The store-key
prefix and rank layout match what SGLang's `/init_weights_update_group` does on its side, so both
ends meet: trainer rank 0 hosts the rendezvous store, server ranks are `rank_offset + tp_rank`,
and one group can hold every server (`rank_offsets`), so one broadcast reaches them all.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

from megatron_zppo.rollout.sync.buckets import NamedTensor, meta_nbytes


def dtype_name(dtype: torch.dtype) -> str:
    """SGLang resolves dtypes with `getattr(torch, name)`, so send "bfloat16", not "torch.bfloat16"."""
    return str(dtype).removeprefix("torch.")


def bucket_payload(bucket: list[NamedTensor]) -> dict[str, list]:
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


def flatten_bucket(bucket: list[NamedTensor], device: torch.device) -> torch.Tensor:
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


def broadcast_bucket(group: dist.ProcessGroup, bucket: list[NamedTensor], device: torch.device,
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

