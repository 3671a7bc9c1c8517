"""Build a tiny vision-language world for the CPU: counting squares in pictures, and a Qwen3.5-VL
teacher and student trained on it with this project's own Megatron trainer.

    python tools/make_toy_vl.py --out toy_models/vl
    python pretrain_zppo.py --config examples/cpu_toy/vl.yaml

1. Pictures: a 64x64 canvas cut into 16-px cells (one vision patch each), 1 to 4 cells filled with
   coloured squares; the question asks how many squares there are, the answer is the count.
   `data/{train,eval}.jsonl` with the PNG files beside them: the ZPPO run's questions.
2. A byte-level BPE tokenizer with Qwen's vision tokens (megatron_zppo/toy/models.py).
3. Teacher and student: random tiny Qwen3.5-VL checkpoints, fine-tuned on pictures disjoint from the
   run's (supervised, through the Megatron trainer: images through the vision tower, image tokens
   outside the loss), plain prompts and BCQ prompts (one right and one wrong candidate, answered
   with the right one); the teacher for longer. Each model's greedy accuracy on the run's evaluation
   pictures goes into MANIFEST.json.

Outputs are cached: a re-run with the same recipe returns at once (delete --out to rebuild).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

QUESTION = "How many squares are in the picture?"
COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 30)]


@dataclass(frozen=True)
class Recipe:
    train_questions: int = 256  # the ZPPO run's
    eval_questions: int = 64
    sft_examples: int = 2000
    teacher_steps: int = 400
    student_steps: int = 200
    batch: int = 16
    lr: float = 1e-3
    templates: str = "examples/cpu_toy/templates"


def picture(rng: random.Random, count: int):
    """A 64x64 RGB picture with `count` squares, each in its own 32-px quadrant (one vision token:
    2x2 patches of 16 px merged)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    for cell in rng.sample(range(4), count):
        side = rng.randint(14, 26)
        x, y = 32 * (cell % 2) + rng.randint(1, 31 - side), 32 * (cell // 2) + rng.randint(1, 31 - side)
        draw.rectangle([x, y, x + side, y + side], fill=rng.choice(COLOURS))
    return img


def write_pictures(out: Path, split: str, n: int, seed: int) -> list[dict]:
    """n picture questions as JSONL records (images saved as PNG files under out/split)."""
    rng = random.Random(seed)
    (out / split).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        count = rng.randint(1, 4)
        path = out / split / f"{i:05d}.png"
        picture(rng, count).save(path)
        rows.append({"id": f"{split}-{i}", "question": QUESTION, "answer": str(count), "images": [str(path)]})
    (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def sft_samples(recipe: Recipe, tok, templates, seed: int) -> list:
    """Supervised samples on fresh pictures: plain prompts and BCQ prompts, half each."""
    import io

    from megatron_zppo.core.prompts import encode_prompt
    from megatron_zppo.core.records import PromptKind, Sample

    rng = random.Random(seed)
    samples = []
    for i in range(recipe.sft_examples):
        count = rng.randint(1, 4)
        buf = io.BytesIO()
        picture(rng, count).save(buf, format="PNG")
        answer = f"\\boxed{{{count}}}"
        if i % 2:
            wrong = f"\\boxed{{{rng.choice([c for c in range(1, 5) if c != count])}}}"
            text = templates.bcq_prompt(QUESTION, rng.sample([answer, wrong], 2))
        else:
            text = templates.plain(QUESTION)
        response = tok(f"<think>{count}</think>{answer}")["input_ids"] + [tok.eos_token_id]
        samples.append(Sample("sft", f"sft{i}", PromptKind.PLAIN, encode_prompt(tok, text, 1), response, "",
                              [0.0] * len(response), images=(buf.getvalue(),)))
    return samples


def train_one(path: Path, samples: list, steps: int, recipe: Recipe, seed: int) -> None:
    """Supervised fine-tuning of the checkpoint at `path` on the Megatron trainer, written back."""
    from safetensors.torch import save_file

    from megatron_zppo.config import load_config
    from megatron_zppo import build
    from megatron_zppo.train.losses import CrossEntropyLoss

    cfg = load_config(None, [f"student.hf_path={path}", "run.algorithm=grpo", f"run.seed={seed}",
                             f"optimizer.lr={recipe.lr}", "optimizer.weight_decay=0.0",
                             f"train.micro_batch_size={recipe.batch}"])
    trainer = build.make_trainer(cfg)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        loss = trainer.update([rng.sample(samples, recipe.batch)], CrossEntropyLoss())["loss"]
        if step % 50 == 0 or step == steps - 1:
            print(f"  {path.name}: step {step + 1}/{steps} loss {loss:.3f} ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
    save_file({name: t.contiguous() for name, t in trainer.export_hf()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    trainer.close()


def measure(path: Path, questions, templates) -> float:
    """Greedy accuracy on `questions` with the in-process engine and the math grader."""
    from megatron_zppo.build import make_encoder
    from megatron_zppo.evaluate import evaluate
    from megatron_zppo.grader_pool import GraderPool
    from megatron_zppo.rollout.engine import SamplingParams
    from megatron_zppo.rollout.hf_engine import HFEngine

    graders = GraderPool("math", workers=1)
    try:
        result = evaluate(HFEngine(str(path)), make_encoder(str(path)), templates, questions, graders,
                          SamplingParams(temperature=0, max_new_tokens=16))
    finally:
        graders.close()
    return result.accuracy


def build(out: Path, recipe: Recipe, seed: int = 0) -> dict:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from megatron_zppo.data import SourceConfig, load_source
    from megatron_zppo.core.prompts import PromptTemplates
    from megatron_zppo.toy.models import build_tokenizer, new_qwen35_vl

    key = hashlib.sha256((json.dumps(asdict(recipe), sort_keys=True) + Path(__file__).read_text()).encode())
    key = key.hexdigest()[:16] + f"-seed{seed}"
    manifest = out / "MANIFEST.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("recipe") == key:
        print(f"toy VL models: cached in {out} (recipe {key})")
        return json.loads(manifest.read_text())
    t0 = time.perf_counter()
    templates = PromptTemplates.load(recipe.templates)
    data = out / "data"
    write_pictures(data, "train", recipe.train_questions, seed)
    write_pictures(data, "eval", recipe.eval_questions, seed + 1)
    evaluation = load_source(SourceConfig(kind="jsonl", path=str(data / "eval.jsonl")))[0]
    texts = [templates.plain(QUESTION), templates.bcq_prompt(QUESTION, ["\\boxed{1}", "\\boxed{2}"])]
    texts += [f"<think>{c}</think>\\boxed{{{c}}}" for c in range(1, 5)]
    tok = build_tokenizer(out / "tokenizer", texts * 20, vocab_size=320)
    results = {}
    for i, (name, steps) in enumerate([("teacher", recipe.teacher_steps), ("student", recipe.student_steps)]):
        new_qwen35_vl(out / name, tok, seed=seed * 100 + i)
        vl_tok = AutoTokenizer.from_pretrained(out / name)  # with the vision tokens and the VL chat template
        samples = sft_samples(recipe, vl_tok, templates, seed=10_000 + seed * 100 + i)  # pictures the run never sees
        train_one(out / name, samples, steps, recipe, seed * 100 + i)
        results[name] = {"sft_steps": steps, "greedy_accuracy": measure(out / name, evaluation, templates)}
        print(f"  {name}: {results[name]}", flush=True)
    summary = {"recipe": key, "models": results, "recipe_detail": asdict(recipe),
               "seconds": round(time.perf_counter() - t0)}
    manifest.write_text(json.dumps(summary, indent=2))
    print(f"toy VL models: built in {summary['seconds']}s -> {out}")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="toy_models/vl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="show upstream logs on the terminal too")
    args = ap.parse_args(argv)
    from megatron_zppo import upstream_log

    upstream_log.route(args.out, verbose=args.verbose)  # upstream output -> <out>/upstream.log, as in the main job
    from megatron_zppo.train import cpu_compat

    cpu_compat.enable()  # the toy models are trained by the Megatron trainer, on CPU too
    build(Path(args.out), Recipe(), args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
