"""The CUDA-IPC transport's payloads: co-located servers map the trainer's GPU memory, not copies of it."""

from __future__ import annotations

import base64
import io
from multiprocessing.reduction import ForkingPickler

import torch.multiprocessing as _  # noqa: F401  (registers the tensor reductions ForkingPickler uses)

from megatron_zppo.rollout.sync.buckets import NamedTensor


def serialize_named_tensors(bucket: list[NamedTensor]) -> str:
    """SGLang's MultiprocessingSerializer format: base64 of a ForkingPickler dump, whose torch
    reductions turn CUDA tensors into IPC handles (the bytes name GPU memory, not carry it)."""
    buf = io.BytesIO()
    ForkingPickler(buf).dump(list(bucket))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def ipc_payloads(bucket: list[NamedTensor], tp_size: int) -> list[str]:
    """`serialized_named_tensors` for SGLang's `/update_weights_from_tensor` (co-located servers).

    Each server TP rank gets its own pickle (as SGLang's own client does), so every rank's
    CUDA-IPC handles are released independently after it loads; the caller keeps the tensors
    alive until the server has answered. CPU tensors are refused: a server given one crashes.
    """
    cpu = [name for name, t in bucket if not t.is_cuda]
    if cpu:
        raise ValueError(f"weight_sync.strategy 'ipc' needs CUDA tensors on the server's GPU; {cpu[0]!r} "
                         f"(and {len(cpu) - 1} more) are on the CPU")
    return [serialize_named_tensors(bucket) for _ in range(tp_size)]
