"""The one bucketing rule of every weight sync, disk shard and export: greedy, in order, never split.

Buckets are planned in stream order because the servers receive tensors in exactly the order the
trainer sends them (order is part of the protocol), and a tensor is never split: SGLang loads whole
named parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch

DEFAULT_BUCKET_BYTES = 512 * 1024 * 1024

NamedTensor = tuple[str, torch.Tensor]
TensorMeta = tuple[str, tuple[int, ...], torch.dtype]  # what a receiver knows before the bytes arrive
T = TypeVar("T")


def nbytes(named: NamedTensor) -> int:
    return named[1].numel() * named[1].element_size()


def meta_nbytes(meta: TensorMeta) -> int:
    _, shape, dtype = meta
    numel = 1
    for dim in shape:
        numel *= int(dim)
    return numel * dtype.itemsize


def bucketed(items: Iterable[T], max_bytes: int, size_of: Callable[[T], int] = nbytes
             ) -> Iterator[tuple[list[T], bool]]:
    """(bucket, is_last) in order; each bucket's total `size_of` stays <= max_bytes.

    `items` are (name, tensor) pairs, or anything `size_of` measures (a receiver plans with
    `meta_nbytes` on (name, shape, dtype) and gets the same boundaries). A single item larger than
    max_bytes gets a bucket of its own rather than an error: refusing would make one huge embedding
    table block the whole sync. A bucket closes either because the next item did not fit (so more
    follow) or because the stream ended, so "last" is known without reading further. Items are
    pulled only as a bucket fills: a sender that puts bucket k on the wire before asking for k+1
    holds about two buckets (plus one item), never the model.
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
