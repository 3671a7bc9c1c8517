"""Wall time per rollout step with `run.overlap=none` vs `one_step`, the main job against stand-in
SGLang servers.

The student and the teacher are each a stand-in SGLang server (tests/rollout/fake_sglang.py) in its
own process; the trainer is the real Megatron trainer on a toy Qwen3 (its embedding as wide as the
stand-ins' vocabulary), in the main job (`pretrain_zppo.py`, one subprocess per mode, the student's
weights synced to its server every step). The stand-ins *sleep* `token_delay_s` per generated token
instead of computing: on a 2-core machine a computing server would take the CPU the trainer needs,
and the benchmark would measure the contention, not the overlap. Generation time is so
proportional to the tokens requested. The delay is calibrated on a short synchronous run so that
the rollout phase (plain rollouts, teacher, reformulated rollouts, grading) takes about as long as
training (`--balance`, rollout/train time), as at paper scale.

Teacher idle fraction: 1 - (time the teacher server had a request in flight, measured by the
stand-in) / (the run's summed step time), over all steps of the run.

Run: python benchmarks/bench_overlap.py [--steps 6] [--balance 1.0]
Last line: overlap_speedup=<step time none / one_step> (goal >= 1.5; about 2 is the ideal with equal phases)
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

from tests.rollout.fake_sglang import DEFAULT_LEN, VOCAB, FakeSGLang  # noqa: E402

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


def run(mode: str, steps: int, model: str, student: FakeSGLang, teacher: FakeSGLang, work: Path) -> list[dict]:
    run_dir = work / mode
    args = [
        f"run.dir={run_dir}", f"run.steps={steps}", f"run.save_every={steps}", "run.updates_per_step=2",
        f"run.overlap={mode}", f"student.hf_path={model}", "student.engine=sglang", f"student.url={student.url}",
        "student.weight_sync.strategy=disk", f"student.weight_sync.disk_dir={run_dir}/weights",
        f"teacher.hf_path={model}", "teacher.engine=sglang", f"teacher.url={teacher.url}",
        "rollout.n_new=16", "rollout.group_size=4", "rollout.teacher_group_size=2",
        f"rollout.max_new_tokens={DEFAULT_LEN}", "method.rho_aug=0.5", "buffer.rho_replay=0.25",
        "train.micro_batch_size=16", "reward.grader=task", "reward.workers=1", f"data.train=[{CHAIN}]",
        "data.eval={}",
    ]
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "pretrain_zppo.py", "--config", "examples/cpu_toy/zppo.yaml", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def phase_times(metrics: list[dict], teacher_busy_s: float) -> dict[str, float]:
    timed = metrics[1:]  # the first step includes start-up (first requests, grader worker start)
    rollout = [m["t_rollout"] + m["t_reward"] + m["t_teacher"] + m["t_zppo"] for m in timed]
    return {"step": statistics.median(m["t_step"] for m in timed),
            "rollout": statistics.median(rollout), "train": statistics.median(m["t_train"] for m in timed),
            "sync": statistics.median(m["t_sync"] for m in timed),
            "teacher_idle": 1 - teacher_busy_s / sum(m["t_step"] for m in metrics)}


def measured(mode, steps, model, student, teacher, work) -> dict[str, float]:
    busy = teacher.busy_s()
    metrics = run(mode, steps, model, student, teacher, work)
    return phase_times(metrics, teacher.busy_s() - busy)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--balance", type=float, default=1.0, help="rollout phase / training time to aim for")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeSGLang() as student, FakeSGLang() as teacher:
        work = Path(tmp)
        model = toy_model(work)
        delay = 0.02
        for server in (student, teacher):
            server.set_faults(token_delay_s=delay)
        calib = measured("none", 3, model, student, teacher, work / "calib")
        # Scaled as if the whole rollout phase were sleep (grading and HTTP are not): roughly balanced.
        delay *= max(args.balance * calib["train"], 1e-3) / max(calib["rollout"], 1e-3)
        for server in (student, teacher):
            server.set_faults(token_delay_s=delay)
        figures = {mode: measured(mode, args.steps, model, student, teacher, work) for mode in ("none", "one_step")}
    print(f"stand-ins sleep {delay * 1e3:.1f} ms per generated token; median seconds per step (steps 2..{args.steps}):")
    for mode, f in figures.items():
        print(f"  {mode:8s} step {f['step']:.2f}  rollout phase {f['rollout']:.2f}  train {f['train']:.2f}  "
              f"sync {f['sync']:.2f}  teacher idle {f['teacher_idle']:.1%}")
    print(f"teacher_idle_none={figures['none']['teacher_idle']:.3f}")
    print(f"teacher_idle_one_step={figures['one_step']['teacher_idle']:.3f}")
    print(f"overlap_speedup={figures['none']['step'] / figures['one_step']['step']:.2f}")


if __name__ == "__main__":
    main()
