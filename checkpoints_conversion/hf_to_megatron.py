"""Convert a Hugging Face checkpoint into a Megatron distributed checkpoint (model weights only).

    python checkpoints_conversion/hf_to_megatron.py --hf HF_DIR --out MEGATRON_DIR [--verify]
    torchrun --nproc_per_node 2 checkpoints_conversion/hf_to_megatron.py --hf HF_DIR --out DIR --tp 2

Megatron-Bridge maps the HF weights onto Megatron's GPTModel under the requested TP/PP layout;
``megatron_zppo.train.dist_checkpoint`` writes them with ``dist_checkpointing``, i.e. in global
shapes, so the result loads under any layout (the trainer's ``load_checkpoint(policy, None, None,
dir)``). ``--verify`` reloads what was written into a fresh model and compares its logits with the
HF model's on a few fixed prompts; the tool exits 1 if they differ by more than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf", required=True, help="Hugging Face model directory (config.json + safetensors)")
    ap.add_argument("--out", required=True, help="output directory; must not exist or be empty")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size to convert under")
    ap.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to convert under")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--verify", action="store_true", help="compare reloaded logits with the HF model's")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max |logit diff| for --verify")
    args = ap.parse_args(argv)
    if not (Path(args.hf) / "config.json").is_file():
        ap.error(f"--hf {args.hf}: not a Hugging Face model directory (no config.json)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        ap.error(f"--out {args.out}: exists and is not an empty directory")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from logit_check import verify

    from megatron_zppo.train import cpu_compat, parallel
    from megatron_zppo.train.dist_checkpoint import load_checkpoint, save_checkpoint
    from megatron_zppo.train.model import ModelConfig, build_policy

    cpu_compat.enable()
    layout = parallel.ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    parallel.initialize(layout)
    try:
        model_cfg = ModelConfig(hf_path=args.hf, dtype=args.dtype)
        policy = build_policy(model_cfg, layout)
        save_checkpoint(policy, None, None, args.out, extra={"converted_from": str(Path(args.hf).resolve())})
        if not args.verify:
            return 0
        # Check what is on disk, not the model still in memory: reload into fresh weights first.
        reloaded = build_policy(model_cfg, layout)
        for chunk in reloaded.chunks:
            for param in chunk.parameters():
                param.data.zero_()
        load_checkpoint(reloaded, None, None, args.out)
        return verify(reloaded, args.hf, args.tolerance, f"Megatron checkpoint {args.out} vs HF {args.hf}")
    finally:
        parallel.destroy()


if __name__ == "__main__":  # dist_checkpointing's writer spawns processes: keep this guard
    sys.exit(main())
