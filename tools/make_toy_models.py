"""Build the CPU demo's toy teacher and students, offline, with this project's own trainer.

    python tools/make_toy_models.py --out toy_models

1. Generate the supervised mix (megatron_zppo/toy/corpus.py says exactly what it holds).
2. Train a byte-level BPE tokenizer on it (the `tokenizers` library).
3. For each model: a random Qwen3 checkpoint, then supervised fine-tuning with the Megatron trainer
   (megatron_zppo.train), then its weights exported back to a HuggingFace checkpoint.
4. Measure each model's accuracy on the RL task and the held-out families, write MANIFEST.json.

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
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")


@dataclass(frozen=True)
class ModelRecipe:
    name: str
    size: str  # megatron_zppo.toy.shapes.QWEN3_SIZES
    steps: int
    batch: int = 32
    lr: float = 3e-3
    knows_rl_questions: bool = False  # the teacher's mix includes the RL training questions
    candidate_share: float = 0.35  # of the mix: BCQ/NCQ/compression-format examples (toy.corpus.corpus)
    rl_share: float = 0.6  # of the plain examples: the RL task's family

    def mix(self) -> tuple[bool, float, float]:
        return self.knows_rl_questions, self.candidate_share, self.rl_share


@dataclass(frozen=True)
class Recipe:
    world: str = "chain_sum"  # megatron_zppo.toy.corpus.WORLDS
    corpus_size: int = 12000
    vocab_size: int = 512
    templates: str = "examples/cpu_toy/templates"
    # The RL run's questions (train + eval) come from this config; the corpus avoids them.
    demo_config: str = "examples/cpu_toy/zppo.yaml"
    models: tuple[ModelRecipe, ...] = (
        ModelRecipe("teacher", "medium", 900, lr=5e-3, knows_rl_questions=True),
        ModelRecipe("student_small", "small", 400, lr=5e-3),
        ModelRecipe("student_tiny", "tiny", 250, lr=5e-3),
    )
    eval_questions: int = 64


RECIPES = {
    "chain_sum": Recipe(),  # the CPU demo
    # The effect experiment: a student that saw many candidate-format examples (80% of its mix) and
    # few plain pair sums (10% of its plain examples), so that it checks candidates well and finds
    # pairs badly (docs/toy-models.md).
    "pair_sum": Recipe(world="pair_sum", demo_config="examples/pair_sum/zppo.yaml", models=(
        ModelRecipe("teacher", "medium", 1200, lr=5e-3, knows_rl_questions=True),
        ModelRecipe("student_tiny", "tiny", 5000, lr=5e-3, candidate_share=0.8, rl_share=0.1))),
}


def recipe_hash(r: Recipe, reserved: frozenset[str]) -> str:
    """What the models depend on: the recipe, the corpus code and the RL run's questions (not the
    rest of its config: a change of method settings must not rebuild the models)."""
    toy = Path(__file__).parent.parent / "megatron_zppo" / "toy"
    blob = (json.dumps(asdict(r), sort_keys=True) + (toy / "corpus.py").read_text() + (toy / "pair_sum.py").read_text()
            + "\n".join(sorted(reserved)))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sft_step(trainer, pairs) -> float:
    """One supervised update on (prompt ids, response ids) pairs; the mean token loss."""
    from megatron_zppo.core.records import PromptKind, Sample
    from megatron_zppo.train.losses import CrossEntropyLoss

    rows = [Sample("sft", "sft", PromptKind.PLAIN, p, r, "", [0.0] * len(r)) for p, r in pairs]
    return trainer.update([rows], CrossEntropyLoss())["loss"]


def train_one(m: ModelRecipe, out: Path, tok_dir: Path, pairs, seed: int) -> None:
    """Random init -> SFT on the Megatron trainer -> HF checkpoint in out/m.name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_zppo.config import load_config
    from megatron_zppo.toy.models import new_qwen3
    from megatron_zppo import build

    tok = AutoTokenizer.from_pretrained(tok_dir)
    path = out / m.name
    new_qwen3(path, m.size, tok, seed=seed)
    cfg = load_config(None, [f"student.hf_path={path}", "run.algorithm=grpo", f"run.seed={seed}",
                             f"optimizer.lr={m.lr}", "optimizer.weight_decay=0.0", f"train.micro_batch_size={m.batch}"])
    trainer = build.make_trainer(cfg)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    for step in range(m.steps):
        loss = sft_step(trainer, rng.sample(pairs, m.batch))
        if step % 50 == 0 or step == m.steps - 1:
            print(f"  {m.name}: step {step + 1}/{m.steps} loss {loss:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    model = AutoModelForCausalLM.from_pretrained(path)
    state = dict(trainer.export_hf())
    missing = model.load_state_dict(state, strict=False).missing_keys
    if [k for k in missing if k != "lm_head.weight"]:  # lm_head is tied to the embedding
        raise RuntimeError(f"exported weights lack {missing}")
    model.save_pretrained(path)
    trainer.close()


def measure(path: Path, templates, n: int, world) -> dict[str, dict[str, float]]:
    """Greedy and sampled (8 per question) accuracy per task family, on evaluation seeds."""
    from megatron_zppo.build import make_encoder
    from megatron_zppo.evaluate import evaluate
    from megatron_zppo.grader_pool import GraderPool
    from megatron_zppo.rollout.engine import SamplingParams
    from megatron_zppo.rollout.hf_engine import HFEngine
    from megatron_zppo.toy.corpus import questions

    engine, encode, graders = HFEngine(str(path)), make_encoder(str(path)), GraderPool("auto", workers=1)
    out = {}
    task = world.rl_task
    sets = [(f"{world.task}_train", task, 0), (world.task, task, 1),
            *((name, cfg, 1) for name, cfg in world.held_out.items())]  # seed 0: RL training questions
    for fam, cfg, seed in sets:
        qs = questions(cfg, seed, n)
        greedy = evaluate(engine, encode, templates, qs, graders, SamplingParams(temperature=0, max_new_tokens=48))
        sampled = evaluate(engine, encode, templates, qs, graders, SamplingParams(max_new_tokens=48, seed=1), 8)
        all_fail = sum(c == 0 for c in sampled.correct) / len(sampled.correct)
        out[fam] = {"greedy": greedy.accuracy, "sampled": sampled.accuracy, "all_fail": all_fail}
    graders.close()
    return out


def demo_questions(config_path: str):
    """(training questions, evaluation questions) of the demo's RL run."""
    from megatron_zppo.config import load_config
    from megatron_zppo.data import load_questions

    cfg = load_config(config_path, [])
    quiet = dict(log=lambda *_: None)
    return (load_questions(cfg.data.train, **quiet),
            load_questions([s for group in cfg.data.eval.values() for s in group], **quiet))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="toy_models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", default="chain_sum", choices=sorted(RECIPES),
                    help="chain_sum: the CPU demo's models; pair_sum: the effect experiment's")
    ap.add_argument("--smoke", action="store_true",
                    help="the same pipeline at a few examples and steps (CI's check that it runs; the models learn nothing)")
    ap.add_argument("--verbose", action="store_true", help="show upstream logs on the terminal too")
    args = ap.parse_args(argv)
    from megatron_zppo import upstream_log

    # Megatron's INFO lines, optimizer configs and upstream warnings -> <out>/upstream.log, as in the main job.
    log = upstream_log.route(args.out, verbose=args.verbose)
    from megatron_zppo.train import cpu_compat

    cpu_compat.enable()  # the toy models are trained by the Megatron trainer, on CPU too
    from megatron_zppo.core.prompts import PromptTemplates, encode_prompt
    from megatron_zppo.toy.corpus import WORLDS, corpus
    from megatron_zppo.toy.models import build_tokenizer

    recipe, out = RECIPES[args.world], Path(args.out)
    if args.smoke:
        recipe = replace(recipe, corpus_size=200, eval_questions=4, models=tuple(replace(m, steps=2) for m in recipe.models))
    world = WORLDS[recipe.world]
    manifest = out / "MANIFEST.json"
    rl_train, rl_eval = demo_questions(recipe.demo_config)
    reserved = frozenset(q.text for q in rl_train + rl_eval)
    key = recipe_hash(recipe, reserved) + f"-seed{args.seed}"
    if manifest.exists() and json.loads(manifest.read_text()).get("recipe") == key:
        print(f"toy models: cached in {out} (recipe {key})")
        return 0
    t0 = time.perf_counter()
    templates = PromptTemplates.load(recipe.templates)
    mixes = {(known, cs, rs): corpus(templates, recipe.corpus_size, seed=args.seed, reserved=reserved,
                                     known=rl_train if known else (), world=world, candidate_share=cs, rl_share=rs)
             for known, cs, rs in sorted({m.mix() for m in recipe.models})}
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    texts = (t for mix in mixes.values() for e in mix for t in (e.prompt, e.response))
    tok = build_tokenizer(tok_dir, texts, recipe.vocab_size)
    pairs = {key: [(encode_prompt(tok, e.prompt), tok(e.response)["input_ids"] + [tok.eos_token_id])
                     for e in mix] for key, mix in mixes.items()}
    print(f"toy models: {recipe.corpus_size} supervised examples per model, vocabulary {len(tok)}")
    results = {}
    for i, m in enumerate(recipe.models):
        train_one(m, out, tok_dir, pairs[m.mix()], seed=args.seed * 100 + i)
        results[m.name] = {"size": m.size, "sft_steps": m.steps, "accuracy": measure(out / m.name, templates,
                                                                                      recipe.eval_questions, world)}
        print(f"  {m.name}: {json.dumps(results[m.name]['accuracy'])}", flush=True)
    manifest.write_text(json.dumps({"recipe": key, "models": results, "recipe_detail": asdict(recipe),
                                    "seconds": round(time.perf_counter() - t0)}, indent=2))
    print(f"toy models: built in {time.perf_counter() - t0:.0f}s -> {out}" + (f" (upstream output: {log})" if log else ""))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # on the terminal: torch's own excepthook would send it to the upstream log
        traceback.print_exc()
        sys.exit(1)
