"""Streamed, bucketed process-group weight sync to 1 and 4 receivers vs one raw broadcast, over gloo.

The sender runs the trainer side of a weight sync as `DistributedSync` does
(rollout/sync/servers.py): the HF-named tensors of a ~100M-parameter Qwen3-shaped model are cut
into size-bounded buckets by `bucketed`, each bucket broadcast (async, per tensor) once into one
group holding every receiver, while the next bucket is gathered. Receivers do what an
SGLang server does per `/update_weights_from_distributed`: all broadcasts posted, then waited.
Measured in the same run:

- the baseline: one broadcast of one flat tensor of the same bytes, preallocated on both sides
  (the transport's limit). The headline ratio compares it with our sync into receive buffers
  that are also kept between syncs (what a GPU server's caching allocator gives it); the sync into
  fresh CPU memory, which page-faults in on every sync, is printed too;
- fan-out: the same sync with 4 receivers in the group instead of 1 (and the raw broadcast's own ratio);
- the sender's extra peak memory during a sync whose export yields a fresh copy of every tensor (as
  Megatron-Bridge's gather to CPU does): peak RSS (VmHWM, reset first) minus RSS before, over the
  model's bytes; and, for contrast, the same for holding the export as a list (what the old pool did).

Run: python benchmarks/bench_weight_sync.py [--repeats 3] [--bucket-mb 16]
The default 16 MB buckets are to this 0.49 GB model what the production 512 MB are to a 9B's 18 GB.
Last lines: sync_fanout4_vs_1=..., sync_extra_peak_memory_vs_model=..., sync_vs_raw_ratio=...
"""

from __future__ import annotations

import argparse
import ctypes
import re
import time

import torch
import torch.multiprocessing as mp

from megatron_zppo.rollout.sync import bucketed
from megatron_zppo.rollout.sync import groups
from megatron_zppo.rollout.sync.buckets import meta_nbytes

CPU = torch.device("cpu")


def qwen3_like(hidden=768, ffn=2048, layers=12, vocab=32000, heads=12, kv=4):
    head = hidden // heads
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "self_attn.q_proj.weight", (heads * head, hidden)),
                   (p + "self_attn.k_proj.weight", (kv * head, hidden)),
                   (p + "self_attn.v_proj.weight", (kv * head, hidden)),
                   (p + "self_attn.o_proj.weight", (hidden, heads * head)),
                   (p + "self_attn.q_norm.weight", (head,)), (p + "self_attn.k_norm.weight", (head,)),
                   (p + "mlp.gate_proj.weight", (ffn, hidden)), (p + "mlp.up_proj.weight", (ffn, hidden)),
                   (p + "mlp.down_proj.weight", (hidden, ffn)),
                   (p + "input_layernorm.weight", (hidden,)), (p + "post_attention_layernorm.weight", (hidden,))]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return shapes


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def _reset_peak() -> int:
    """Resets VmHWM to the current RSS (Linux clear_refs 5) and returns that RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _kib("VmRSS")


def export(tensors, fresh: bool):
    for name, t in tensors:
        yield name, (t.clone() if fresh else t)  # fresh: a new tensor per weight, as a gather produces


def send(group, tensors, bucket_bytes: int, fresh: bool) -> None:
    """As DistributedSync._stream: bucket k+1 is gathered while bucket k is on the wire (the works
    are popped as they are waited for, so none keeps a sent tensor alive)."""
    in_flight: list = []
    for bucket, _ in bucketed(export(tensors, fresh), bucket_bytes):
        while in_flight:
            in_flight.pop().wait()
        in_flight = groups.broadcast_bucket(group, bucket, CPU, None, async_op=True)
    while in_flight:
        in_flight.pop().wait()


def receive(group, plan, buffers: dict | None = None) -> None:
    """Per bucket what a server does. `buffers`: receive into tensors kept from the last sync (what
    a GPU server's caching allocator hands back) instead of fresh CPU memory that page-faults in."""
    for bucket in plan:
        if buffers is None:
            groups.receive_bucket(group, {"names": [m[0] for m in bucket], "dtypes": ["float32"] * len(bucket),
                                      "shapes": [list(m[1]) for m in bucket]}, CPU)
            continue
        into = [buffers.setdefault(name, torch.empty(shape)) for name, shape, _ in bucket]
        for work in [torch.distributed.broadcast(t, src=0, group=group, async_op=True) for t in into]:
            work.wait()


def worker(rank: int, world: int, port: int, shapes, bucket_bytes: int, repeats: int, out):
    torch.set_num_threads(1)
    group = groups.init_custom_process_group(backend="gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=world,
                                         rank=rank, group_name="bench", timeout_s=600)
    plan = [b for b, _ in bucketed([(n, tuple(s), torch.float32) for n, s in shapes], bucket_bytes, meta_nbytes)]
    tensors = []
    if rank == 0:
        g = torch.Generator().manual_seed(0)
        tensors = [(n, torch.randn(s, generator=g)) for n, s in shapes]
    total = sum(int(torch.Size(s).numel()) for _, s in shapes)
    flat = torch.empty(total)
    ours, raw = [], []

    def timed(fn) -> float:
        torch.distributed.barrier(group=group)
        t0 = time.perf_counter()
        fn()
        torch.distributed.barrier(group=group)
        return time.perf_counter() - t0

    kept: dict = {}
    ours_kept = []
    for _ in range(repeats + 1):  # the first round warms every path up
        ours.append(timed(lambda: send(group, tensors, bucket_bytes, False) if rank == 0 else receive(group, plan)))
        ours_kept.append(timed(lambda: send(group, tensors, bucket_bytes, False) if rank == 0
                               else receive(group, plan, kept)))
        raw.append(timed(lambda: torch.distributed.broadcast(flat, src=0, group=group)))  # preallocated on both sides
    del flat, kept
    # Memory: syncs whose export yields fresh copies, first with glibc's default allocator (its
    # dynamic mmap threshold leaves freed mid-size tensors in the heap, counted in RSS), then with
    # the threshold fixed at 1 MB so every freed tensor leaves RSS: what the sync itself holds.
    extra = []
    for threshold in (None, 1 << 20):
        if threshold is not None and rank == 0:
            ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
        torch.distributed.barrier(group=group)
        before = _reset_peak()
        fresh_s = timed(lambda: send(group, tensors, bucket_bytes, True) if rank == 0 else receive(group, plan))
        extra.append(_kib("VmHWM") - before)
    if rank == 0:
        before = _reset_peak()
        held = list(export(tensors, True))
        held_extra = _kib("VmHWM") - before
        del held
        out.put({"world": world, "bytes": total * 4, "tensors": len(shapes), "buckets": len(plan),
                 "fresh_alloc": min(ours[1:]), "ours": min(ours_kept[1:]),
                 "raw": min(raw[1:]), "fresh": fresh_s, "extra": extra[0], "extra_mmap": extra[1],
                 "held_extra": held_extra, "largest": max(int(torch.Size(s).numel()) * 4 for _, s in shapes)})
    groups.destroy_custom_process_group(group)


def run(world: int, shapes, bucket_bytes: int, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = groups.pick_free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, shapes, bucket_bytes, repeats, out))
             for r in range(world)]
    for p in procs:
        p.start()
    result = out.get(timeout=900)
    for p in procs:
        p.join(timeout=120)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=16)
    args = ap.parse_args()
    shapes, bucket = qwen3_like(), args.bucket_mb << 20
    one, four = run(2, shapes, bucket, args.repeats), run(5, shapes, bucket, args.repeats)
    gb = one["bytes"] / 1e9
    print(f"model: {one['bytes'] / 4e6:.0f}M fp32 parameters in {one['tensors']} tensors ({gb:.2f} GB), "
          f"{one['buckets']} buckets of <= {args.bucket_mb} MB, per-tensor broadcasts, best of {args.repeats} (these machines are shared and noisy)")
    for name, r in (("1 receiver ", one), ("4 receivers", four)):
        print(f"{name}: raw flat broadcast {r['raw'] * 1e3:.0f} ms ({gb / r['raw']:.2f} GB/s); streamed sync "
              f"{r['ours'] * 1e3:.0f} ms ({gb / r['ours']:.2f} GB/s) into receive buffers kept from the last sync "
              f"(as the raw one is), {r['fresh_alloc'] * 1e3:.0f} ms into fresh CPU memory (raw / it: "
              f"{r['raw'] / r['fresh_alloc']:.3f}), {r['fresh'] * 1e3:.0f} ms with a fresh copy per sent tensor")
    print(f"raw broadcast alone, 4 receivers vs 1: {four['raw'] / one['raw']:.3f} (this machine's transport: "
          f"5 processes on its cores)")
    mb = 1e6
    print(f"sender extra peak RSS: {four['extra'] / mb:.0f} MB with glibc's default allocator, "
          f"{four['extra_mmap'] / mb:.0f} MB ({four['extra_mmap'] / four['bytes']:.3f} of the model) with its mmap "
          f"threshold at 1 MB; holding the export as a list (the old pool) {four['held_extra'] / mb:.0f} MB; "
          f"lower bound: largest tensor + one bucket {(four['largest'] + bucket) / mb:.0f} MB; "
          f"model {four['bytes'] / mb:.0f} MB")
    print(f"sync_fanout4_vs_1={four['ours'] / one['ours']:.3f}")
    print(f"sync_extra_peak_memory_vs_model={four['extra'] / four['bytes']:.3f}")
    print(f"sync_vs_raw_ratio={one['raw'] / one['ours']:.3f}")

if __name__ == "__main__":
    main()
