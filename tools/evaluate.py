"""Evaluate a checkpoint on a suite of benchmarks defined in YAML.

    python tools/evaluate.py --model toy_models/student_small --suite examples/cpu_toy/eval_suite.yaml \
        --out runs/eval_small
    python tools/evaluate.py --model toy_models/student_small --megatron runs/cpu_toy_zppo/checkpoints/step_000040 ...
    python tools/evaluate.py --model /ckpt/hf --sglang-url http://127.0.0.1:30000 --suite ...

`--model` is an HF checkpoint directory (tokenizer, config and, unless --megatron is given, the
weights). `--megatron` loads the weights of a run checkpoint instead (through the Megatron
trainer, then into the in-process engine). Suite file:

    decoding: {temperature: 0.6, top_p: 0.95, top_k: 20, presence_penalty: 1.5, max_new_tokens: 2048,
               samples_per_question: 1}
    templates: examples/cpu_toy/templates       # optional; default: the package templates
    benchmarks:
      chain_sum:
        family: arithmetic
        grader: task                            # math | math_verify | exact | choice | task
        sources: [{kind: reasoning_gym, task: chain_sum, seed: 1, size: 128}]

Writes results.json and results.md to --out: accuracy per benchmark with n and a 95% bootstrap
interval, and the macro average per family.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron_zppo.config import EvalConfig  # noqa: E402


@dataclass(frozen=True)
class Benchmark:
    family: str = "default"
    grader: str = "math"
    sources: list = field(default_factory=list)


@dataclass(frozen=True)
class Suite:
    benchmarks: dict[str, Benchmark] = field(default_factory=dict)
    decoding: EvalConfig = field(default_factory=EvalConfig)  # the main job's eval settings, same defaults
    templates: str = ""
    seed: int = 0


def load_suite(path: str) -> Suite:
    from megatron_zppo.config_io import from_dict, load_tree
    from megatron_zppo.data import SourceConfig

    suite = from_dict(Suite, load_tree(path, []))
    for name, b in suite.benchmarks.items():
        if not b.sources:
            raise ValueError(f"{path}: benchmark {name!r} has no sources")
        suite.benchmarks[name] = Benchmark(b.family, b.grader,
                                           [from_dict(SourceConfig, s, f"benchmarks.{name}.sources[{i}]")
                                            for i, s in enumerate(b.sources)])
    return suite


def make_engine(args):
    if args.sglang_url:
        from megatron_zppo.rollout.sglang_engine import SGLangEngine

        return SGLangEngine(args.sglang_url, name="eval")
    from megatron_zppo.rollout.hf_engine import HFEngine

    engine = HFEngine(args.model, name="eval")
    if args.megatron:  # weights from a run checkpoint, through the trainer that wrote it
        from megatron_zppo.config import load_config
        from megatron_zppo import build
        from megatron_zppo.train import cpu_compat

        cpu_compat.enable()  # only this path builds a Megatron model
        cfg = load_config(None, [f"student.hf_path={args.model}", "run.algorithm=grpo"])
        trainer = build.make_trainer(cfg)
        trainer.load(str(Path(args.megatron) / "model"), weights_only=True)
        engine.update_weights(trainer.export_hf(), Path(args.megatron).name)
        trainer.close()
    return engine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF checkpoint directory (tokenizer, config, weights)")
    ap.add_argument("--megatron", help="a run checkpoint directory (.../checkpoints/step_N) to take weights from")
    ap.add_argument("--sglang-url", help="evaluate through an SGLang server instead of in-process")
    ap.add_argument("--suite", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from megatron_zppo import build
    from megatron_zppo.data import load_questions
    from megatron_zppo.evaluate import evaluate
    from megatron_zppo.core.prompts import DEFAULT_DIR, PromptTemplates
    from megatron_zppo.grader_pool import GraderPool

    suite = load_suite(args.suite)
    params = build.eval_sampling(suite.decoding, suite.seed)
    templates = PromptTemplates.load(suite.templates or DEFAULT_DIR)
    engine, encode = make_engine(args), build.make_encoder(args.model)
    results = {}
    for name, b in suite.benchmarks.items():
        pool = GraderPool(b.grader)
        try:
            r = evaluate(engine, encode, templates, load_questions(b.sources, log=lambda *_: None), pool, params,
                         suite.decoding.samples_per_question)
        finally:
            pool.close()
        results[name] = {"family": b.family, "accuracy": r.accuracy, "n": r.n, "ci95": [r.ci_low, r.ci_high]}
        print(f"{name}: {r.accuracy:.3f} (n={r.n}, 95% CI {r.ci_low:.3f}-{r.ci_high:.3f})", flush=True)
    families: dict[str, list[float]] = {}
    for r in results.values():
        families.setdefault(r["family"], []).append(r["accuracy"])
    macro = {f: sum(v) / len(v) for f, v in families.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"model": args.model, "megatron": args.megatron,
                                                  "benchmarks": results, "family_macro": macro}, indent=2))
    (out / "results.md").write_text(markdown(results, macro))
    print(markdown(results, macro))
    return 0


def markdown(results: dict, macro: dict) -> str:
    lines = ["| benchmark | family | n | accuracy | 95% CI |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {r['family']} | {r['n']} | {r['accuracy']:.3f} | {r['ci95'][0]:.3f}–{r['ci95'][1]:.3f} |"
              for k, r in results.items()]
    lines += ["", "| family | macro average |", "|---|---|"] + [f"| {f} | {v:.3f} |" for f, v in macro.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
