"""Bucketed process-group weight sync vs one raw broadcast of the same bytes, over gloo.

The sender is the trainer side of `megatron_zppo.rollout.weight_sync` (the code path
`SGLangEngine.update_weights` runs): HF-named tensors of a ~100M-parameter Qwen3-shaped model are
cut into size-bounded buckets and broadcast tensor by tensor, in the order SGLang's
`/update_weights_from_distributed` receives them. The receiver is a second process doing what
the server does per bucket. The baseline, measured in the same run, is a single broadcast of one
flat tensor of the same total size: the practical limit of the transport.

Run: python benchmarks/bench_weight_sync.py [--repeats 5]
Last line: sync_vs_raw_ratio=<ours_throughput/raw_throughput>
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.multiprocessing as mp

from megatron_zppo.rollout import weight_sync as ws


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


def worker(rank: int, port: int, shapes, bucket_bytes: int, repeats: int, load_format, out):
    torch.set_num_threads(1)
    group = ws.init_custom_process_group(backend="gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2,
                                         rank=rank, group_name="bench")
    g = torch.Generator().manual_seed(0)
    tensors = [(n, torch.randn(s, generator=g)) for n, s in shapes]
    total = sum(t.numel() for _, t in tensors)
    flat = torch.empty(total)
    ours, raw, raw_fresh = [], [], []
    for _ in range(repeats + 1):  # the first round warms up both paths
        torch.distributed.barrier(group=group)
        t0 = time.perf_counter()
        if rank == 0:
            for bucket in ws.bucket_named_tensors(tensors, bucket_bytes):
                ws.broadcast_bucket(group, bucket, torch.device("cpu"), load_format)
        else:
            for bucket in ws.plan_buckets([(n, tuple(t.shape), t.dtype) for n, t in tensors], bucket_bytes):
                ws.receive_bucket(group, {"names": [m[0] for m in bucket], "dtypes": ["float32"] * len(bucket),
                                          "shapes": [list(m[1]) for m in bucket], "load_format": load_format},
                                  torch.device("cpu"))
        torch.distributed.barrier(group=group)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.distributed.broadcast(flat, src=0, group=group)  # preallocated on both sides
        torch.distributed.barrier(group=group)
        raw.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # the same, but into a freshly allocated buffer, as a server receives
        torch.distributed.broadcast(flat if rank == 0 else torch.empty(total), src=0, group=group)
        torch.distributed.barrier(group=group)
        raw_fresh.append(time.perf_counter() - t0)
    if rank == 0:
        out.put((total, len(tensors), *(statistics.median(x[1:]) for x in (ours, raw, raw_fresh))))
    ws.destroy_custom_process_group(group)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bucket-mb", type=int, default=512)
    ap.add_argument("--flattened", action="store_true", help="one broadcast per bucket (flattened_bucket)")
    args = ap.parse_args()
    shapes = qwen3_like()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = ws.pick_free_port()
    procs = [ctx.Process(target=worker, args=(r, port, shapes, args.bucket_mb << 20, args.repeats,
                                                   ws.FLATTENED if args.flattened else None, out))
             for r in range(2)]
    for p in procs:
        p.start()
    total, n, ours, raw, fresh = out.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    gb = total * 4 / 1e9
    print(f"model: {total / 1e6:.0f}M fp32 parameters in {n} tensors ({gb:.2f} GB), buckets of {args.bucket_mb} MB, "
          f"load_format={ws.FLATTENED if args.flattened else 'per-tensor'}")
    print(f"bucketed sync: {ours * 1e3:.0f} ms ({gb / ours:.2f} GB/s)   raw flat broadcast: {raw * 1e3:.0f} ms "
          f"({gb / raw:.2f} GB/s)   (medians of {args.repeats})")
    print(f"raw broadcast into a fresh receive buffer: {fresh * 1e3:.0f} ms ({gb / fresh:.2f} GB/s); "
          f"ours relative to it: {fresh / ours:.3f}")
    print(f"sync_vs_raw_ratio={raw / ours:.3f}")


if __name__ == "__main__":
    main()
