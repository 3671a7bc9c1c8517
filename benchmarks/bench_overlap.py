"""Trained tokens per second with `run.overlap=none`, `one_step` and `async` (max_staleness 1 and
2), the main job against stand-in SGLang servers, all in one run.

The student and the teacher are each a stand-in SGLang server (tests/rollout/fake_sglang.py) in its
own process; the trainer is the real Megatron trainer on a toy Qwen3 (its embedding as wide as the
stand-ins' vocabulary), in the main job (`pretrain_zppo.py`, one subprocess per mode, the student's
weights synced to its server every step). The stand-ins *sleep* `token_delay_s` per generated token
instead of computing: on a 2-core machine a computing server would take the CPU the trainer needs,
and the benchmark would measure the contention, not the schedule. A request's samples decode at
once, as on a real server. Response lengths are log-normal (median 16 tokens, sigma 1, capped at
96: the paper's 2,048 and 12,288 scaled by 1/128), a function of the prompt; an aborted generation
continued after a weight sync (async) makes the tokens and the length the uncut one would have. The
delay is calibrated on a short synchronous run so that the rollout phase (plain rollouts, teacher,
reformulated rollouts, grading) takes `--balance` times as long as training (default 2; at the
paper's shape it is far more, benchmarks/sim_schedules.py).

Trained tokens per second: the response tokens of every trained sample, over the summed step time,
steps 2..N (step 1 includes start-up). Server idle: 1 - (time the server had a request in flight,
measured by the stand-in) / (the run's summed step time).

Run: python benchmarks/bench_overlap.py [--steps 8] [--balance 2.0]
Last lines: async_vs_none=, async_vs_one_step= (async at max_staleness 2; goals >= 2 and >= 1.3),
partial_generations_lost= (generations a server aborted unasked, all runs; goal 0)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.rollout.fake_sglang import VOCAB, FakeSGLang  # noqa: E402

CHAIN = "{kind: reasoning_gym, task: chain_sum, seed: 0, size: 400, task_config: {max_digits: 1, max_terms: 2}}"


def toy_model(root: Path) -> str:
    """A toy Qwen3 with the toy tokenizer and an embedding of the stand-ins' vocabulary (the ids
    they generate); ids the tokenizer lacks decode to nothing."""
    from transformers import AutoConfig, Qwen3ForCausalLM

    from megatron_zppo.core.prompts import PromptTemplates
    from megatron_zppo.toy.corpus import corpus
    from megatron_zppo.toy.models import build_tokenizer, new_qwen3

    examples = corpus(PromptTemplates.load(str(ROOT / "examples/cpu_toy/templates")), 300, seed=0)
    tok = build_tokenizer(root / "tok", (t for e in examples for t in (e.prompt, e.response)), vocab_size=300)
    path = root / "student"
    new_qwen3(path, "small", tok, seed=1)
    cfg = AutoConfig.from_pretrained(path)
    cfg.vocab_size = VOCAB
    Qwen3ForCausalLM(cfg).float().save_pretrained(path)
    return str(path)


MODES = {"none": ["run.overlap=none"], "one_step": ["run.overlap=one_step"],
         "async_k1": ["run.overlap=async", "run.max_staleness=1"],
         "async_k2": ["run.overlap=async", "run.max_staleness=2"]}
LENGTHS = {"median": 16, "sigma": 1.0, "cap": 96}


def run(mode: str, steps: int, model: str, student: FakeSGLang, teacher: FakeSGLang, work: Path) -> list[dict]:
    run_dir = work / mode
    args = [
        f"run.dir={run_dir}", f"run.steps={steps}", f"run.save_every={steps}", "run.updates_per_step=2",
        *MODES[mode], f"student.hf_path={model}", "student.engine=sglang", f"student.url={student.url}",
        "student.weight_sync.strategy=disk", f"student.weight_sync.disk_dir={run_dir}/weights",
        f"teacher.hf_path={model}", "teacher.engine=sglang", f"teacher.url={teacher.url}",
        "rollout.n_new=16", "rollout.group_size=4", "rollout.teacher_group_size=2",
        f"rollout.max_new_tokens={LENGTHS['cap']}", "method.rho_aug=0.5", "buffer.rho_replay=0.25",
        "train.micro_batch_size=16", "reward.grader=task", "reward.workers=1", f"data.train=[{CHAIN}]",
        "data.eval={}",
    ]
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "pretrain_zppo.py", "--config", "examples/cpu_toy/zppo.yaml", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def phase_times(metrics: list[dict], student_busy_s: float, teacher_busy_s: float) -> dict[str, float]:
    timed = metrics[1:]  # the first step includes start-up (first requests, grader worker start)
    rollout = [m["t_rollout"] + m["t_reward"] + m["t_teacher"] + m["t_zppo"] for m in timed]
    total = sum(m["t_step"] for m in metrics)
    return {"step": statistics.median(m["t_step"] for m in timed),
            "tokens_per_s": sum(m["tokens_generated"] for m in timed) / sum(m["t_step"] for m in timed),
            "rollout": statistics.median(rollout), "train": statistics.median(m["t_train"] for m in timed),
            "sync": statistics.median(m["t_sync"] for m in timed),
            "behind": max(m["rollout_versions_behind"] for m in metrics),
            "continued": sum(m.get("tokens_continued", 0) for m in metrics),
            "lost": metrics[-1]["partial_generations_lost"],
            "student_idle": 1 - student_busy_s / total, "teacher_idle": 1 - teacher_busy_s / total}


def measured(mode, steps, model, student, teacher, work) -> dict[str, float]:
    busy = student.busy_s(), teacher.busy_s()
    metrics = run(mode, steps, model, student, teacher, work)
    return phase_times(metrics, student.busy_s() - busy[0], teacher.busy_s() - busy[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--balance", type=float, default=2.0, help="rollout phase / training time to aim for")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeSGLang() as student, FakeSGLang() as teacher:
        work = Path(tmp)
        model = toy_model(work)
        delay = 0.02
        for server in (student, teacher):
            server.set_faults(token_delay_s=delay, lengths=LENGTHS)
        calib = measured("none", 3, model, student, teacher, work / "calib")
        # Scaled as if the whole rollout phase were sleep (grading and HTTP are not): roughly as asked.
        delay *= max(args.balance * calib["train"], 1e-3) / max(calib["rollout"], 1e-3)
        for server in (student, teacher):
            server.set_faults(token_delay_s=delay, lengths=LENGTHS)
        figures = {mode: measured(mode, args.steps, model, student, teacher, work) for mode in MODES}
    print(f"stand-ins sleep {delay * 1e3:.1f} ms per generated token; steps 2..{args.steps} (median seconds):")
    for mode, f in figures.items():
        print(f"  {mode:8s} {f['tokens_per_s']:7.1f} trained tok/s  step {f['step']:.2f}  rollout phase "
              f"{f['rollout']:.2f}  train {f['train']:.2f}  sync {f['sync']:.2f}  student idle {f['student_idle']:.1%}"
              f"  teacher idle {f['teacher_idle']:.1%}  versions behind <= {f['behind']:g}  "
              f"tokens continued {f['continued']:g}")
    rate = {mode: f["tokens_per_s"] for mode, f in figures.items()}
    print(f"one_step_vs_none={rate['one_step'] / rate['none']:.2f}")
    print(f"async_k1_vs_none={rate['async_k1'] / rate['none']:.2f}")
    print(f"async_vs_none={rate['async_k2'] / rate['none']:.2f}")
    print(f"async_vs_one_step={rate['async_k2'] / rate['one_step']:.2f}")
    print(f"partial_generations_lost={sum(f['lost'] for f in figures.values()):g}")


if __name__ == "__main__":
    main()
