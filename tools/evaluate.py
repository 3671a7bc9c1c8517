"""Evaluate a checkpoint on a suite of benchmarks: the paper's 31 (`--suite vlm|llm|video|all`) or
any suite file (docs/evaluation.md).

    python tools/evaluate.py --model /ckpt/hf --suite all --data-root /data/benchmarks \
        --sglang-url http://student:30000 --judge-url http://teacher:30000 --judge-model /ckpt/teacher_hf --out runs/eval
    python tools/evaluate.py --model toy_models/student_small --suite examples/cpu_toy/eval_suite.yaml --out runs/eval
    python tools/evaluate.py --model toy_models/student_small --megatron runs/cpu_toy_zppo/checkpoints/step_000040 ...

`--model` is an HF checkpoint directory (tokenizer, config and, unless --megatron is given, the
weights). `--megatron` loads the weights of a run checkpoint instead (through the Megatron trainer,
then into the in-process engine); `--sglang-url` evaluates through a server. The judge (protocols
with `+judge` or `judge:`) is `--judge-url` (an SGLang server, e.g. the teacher's; `--judge-model`
gives its tokenizer) or `--judge-model` alone (in process); `--no-judge` scores what would need it
as 0 and counts it. Writes results.json, results.md (the paper's table layout) and families.png
to --out; tools/eval_table.py lays several models' results side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAPER_SUITES = ROOT / "examples" / "paper" / "eval"  # vlm.yaml, llm.yaml, video.yaml, all.yaml


def suite_path(name: str) -> Path:
    """A suite file, or the paper suite of that name."""
    named = PAPER_SUITES / f"{name}.yaml"
    return named if not Path(name).is_file() and named.is_file() else Path(name)


def make_engine(args):
    if args.sglang_url:
        from megatron_zppo.rollout.sglang_engine import SGLangEngine

        return SGLangEngine(args.sglang_url, name="eval")
    from megatron_zppo.rollout.hf_engine import HFEngine

    engine = HFEngine(args.model, name="eval")
    if args.megatron:  # weights from a run checkpoint, through the trainer that wrote it
        from megatron_zppo import build
        from megatron_zppo.config import load_config
        from megatron_zppo.train import cpu_compat

        cpu_compat.enable()  # only this path builds a Megatron model
        cfg = load_config(None, [f"student.hf_path={args.model}", "run.algorithm=grpo"])
        trainer = build.make_trainer(cfg)
        trainer.load(str(Path(args.megatron) / "model"), weights_only=True)
        engine.update_weights(trainer.export_hf(), Path(args.megatron).name)
        trainer.close()
    return engine


def make_judge(args, suite):
    """The judge engine, or None; a suite whose protocols need one refuses to start without it."""
    from megatron_zppo import build
    from megatron_zppo.evaluation.judge import EvalJudge
    from megatron_zppo.evaluation.protocols import Protocol

    needs = sorted(n for n, b in suite.benchmarks.items()
                   if any(Protocol.parse(s.grader or b.grader).judge for s in b.sources))
    if not (args.judge_url or args.judge_model):
        if needs and not args.no_judge:
            raise SystemExit(f"evaluate: benchmarks {needs} are graded with a judge; give --judge-url/--judge-model, "
                             "or --no-judge to score what needs it as 0")
        return None
    if not args.judge_model:
        raise SystemExit("evaluate: --judge-url needs --judge-model (the judge's tokenizer and chat template)")
    if args.judge_url:
        from megatron_zppo.rollout.sglang_engine import SGLangEngine

        engine = SGLangEngine(args.judge_url, name="judge")
    else:
        from megatron_zppo.rollout.hf_engine import HFEngine

        engine = HFEngine(args.judge_model, name="judge")
    return EvalJudge(engine, build.make_encoder(args.judge_model), suite.judge_max_new_tokens)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF checkpoint directory (tokenizer, config, weights)")
    ap.add_argument("--megatron", help="a run checkpoint directory (.../checkpoints/step_N) to take weights from")
    ap.add_argument("--sglang-url", help="evaluate through an SGLang server instead of in-process")
    ap.add_argument("--suite", required=True, help="a suite file, or vlm | llm | video | all (the paper's)")
    ap.add_argument("--data-root", default="", help="folder that relative benchmark paths are under")
    ap.add_argument("--judge-url", help="the judge's SGLang server (e.g. the teacher's)")
    ap.add_argument("--judge-model", help="the judge's HF directory: its tokenizer, and its weights if in process")
    ap.add_argument("--no-judge", action="store_true", help="score what needs a judge as 0 (counted)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from megatron_zppo import build
    from megatron_zppo.evaluation import table
    from megatron_zppo.evaluation.suite import load_suite, run_suite

    suite = load_suite(suite_path(args.suite), args.data_root)
    judge = make_judge(args, suite)
    engine, encode = make_engine(args), build.make_encoder(args.model)
    result = run_suite(suite, engine, encode, judge, log=lambda s: print(s, flush=True))
    result.update(model=args.model, megatron=args.megatron, suite=str(suite_path(args.suite)),
                  judge=args.judge_url or args.judge_model or None,
                  judge_calls=judge.calls if judge else 0, judge_malformed=judge.malformed if judge else 0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    name = Path(args.megatron or args.model).name
    md, _ = table.report({name: result}, n_boot=suite.n_boot)
    (out / "results.md").write_text(md)
    table.plot({name: result}, out / "families.png")
    print(md, flush=True)
    return 0


def run(argv=None) -> int:
    from megatron_zppo.errors import RunError

    try:
        return main(argv)
    except RunError as e:  # a bad suite, layout, template or protocol: one line naming it
        print(f"evaluate: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(run())
