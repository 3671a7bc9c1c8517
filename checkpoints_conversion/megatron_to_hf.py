"""Convert a Megatron distributed checkpoint back into a Hugging Face model directory.

    python checkpoints_conversion/megatron_to_hf.py --megatron DIR --hf-config HF_DIR --out OUT [--verify]
    torchrun --nproc_per_node 2 checkpoints_conversion/megatron_to_hf.py ... --tp 2

``DIR`` is any checkpoint written by ``megatron_zppo.train.dist_checkpoint`` (a training checkpoint
or ``hf_to_megatron.py``'s output; only the model weights are read). ``--hf-config`` is the
original HF directory: the architecture is built from its config, and its non-weight files
(config, generation config, tokenizer, chat template, custom code) are copied to ``OUT``. The
weights are exported through Megatron-Bridge and written as safetensors by rank 0, one file per
export bucket (plus an index when there are several). We write the safetensors ourselves rather
than call the bridge's ``save_hf_pretrained``: that needs a tokenizer in the source directory and
imports nvidia-modelopt. ``--verify`` compares the logits of the written HF model with those of the
loaded Megatron checkpoint on a few fixed prompts; the tool exits 1 beyond ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megatron", required=True, help="Megatron distributed checkpoint directory")
    ap.add_argument("--hf-config", required=True, help="original HF model directory (config, tokenizer)")
    ap.add_argument("--out", required=True, help="output HF directory; must not exist or be empty")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size to load under")
    ap.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to load under")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--bucket-gb", type=float, default=4.0,
                    help="the most bytes of one safetensors file (a single larger tensor gets a file of its own)")
    ap.add_argument("--verify", action="store_true", help="compare the written HF model's logits with Megatron's")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max |logit diff| for --verify")
    args = ap.parse_args(argv)
    if not (Path(args.megatron) / "metadata.json").is_file():
        ap.error(f"--megatron {args.megatron}: not a Megatron distributed checkpoint (no metadata.json)")
    if not (Path(args.hf_config) / "config.json").is_file():
        ap.error(f"--hf-config {args.hf_config}: not a Hugging Face model directory (no config.json)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        ap.error(f"--out {args.out}: exists and is not an empty directory")
    return args


def copy_non_weight_files(src: Path, dst: Path) -> list[str]:
    """Config, tokenizer and code files of the original model; its weights are replaced."""
    copied = []
    for item in sorted(src.iterdir()):
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and item.name not in WEIGHT_INDEXES:
            shutil.copy2(item, dst / item.name)
            copied.append(item.name)
    return copied


def write_safetensors(buckets, out: Path, is_writer: bool) -> None:
    """Drain ``buckets`` on every rank (the export is collective); rank 0 writes one file per bucket."""
    from safetensors.torch import save_file

    files, weight_map, total = [], {}, 0
    for i, bucket in enumerate(buckets):
        if not is_writer:
            continue
        # clone(): safetensors refuses tensors that share storage (views of one fused weight).
        tensors = {name: t.detach().contiguous().clone() for name, t in bucket}
        name = f"part-{i:05d}.safetensors"
        save_file(tensors, out / name, metadata={"format": "pt"})
        files.append(name)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
    if not is_writer:
        return
    if len(files) == 1:
        os.replace(out / files[0], out / "model.safetensors")
        return
    final = {f: f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i, f in enumerate(files)}
    for old, new in final.items():
        os.replace(out / old, out / new)
    index = {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in weight_map.items()}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch.distributed as dist
    from logit_check import verify

    from megatron_zppo.train import cpu_compat, parallel
    from megatron_zppo.train.dist_checkpoint import load_checkpoint
    from megatron_zppo.train.model import ModelConfig, build_policy, export_hf_weights

    cpu_compat.enable()
    layout = parallel.ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    parallel.initialize(layout)
    try:
        # build_policy also loads the HF weights of --hf-config; the checkpoint overwrites all of them
        # (load_checkpoint is strict, so a parameter missing from the checkpoint is an error).
        policy = build_policy(ModelConfig(hf_path=args.hf_config, dtype=args.dtype), layout)
        load_checkpoint(policy, None, None, args.megatron)
        out, is_writer = Path(args.out), dist.get_rank() == 0
        if is_writer:
            out.mkdir(parents=True, exist_ok=True)
            copy_non_weight_files(Path(args.hf_config), out)
        write_safetensors(export_hf_weights(policy, bucket_bytes=int(args.bucket_gb * 2**30)), out, is_writer)
        dist.barrier()
        if not args.verify:
            return 0
        return verify(policy, str(out), args.tolerance, f"HF model {out} vs Megatron checkpoint {args.megatron}")
    finally:
        parallel.destroy()


if __name__ == "__main__":  # dist_checkpointing may spawn processes: keep this guard
    sys.exit(main())
