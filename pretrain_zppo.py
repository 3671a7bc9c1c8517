"""ZPPO post-training on Megatron-Core: the main job.

    python pretrain_zppo.py --config examples/cpu_toy/zppo.yaml [key=value ...]
    torchrun --nproc_per_node 2 pretrain_zppo.py --config ... train.tensor_parallel=2

Rank 0 holds the rollout engines (in-process, or clients of SGLang servers), the replay buffer and
the data stream; every rank trains. One rollout step (docs/method.md) reads top to bottom in
`train`: rollouts from the source chosen once (sources.py), the method's updates and the weight
sync (loop.UpdatePhase), the step's report (report.py), a checkpoint when one is due.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # Megatron's compiled kernels only pay off on GPU


from megatron_zppo import build, run_checkpoint, upstream_log
from megatron_zppo.config import Config, dump_config, load_config
from megatron_zppo.errors import RunError
from megatron_zppo.loop import RolloutPhase, tokens_generated
from megatron_zppo.overlap import rollouts_in_flight, version_name
from megatron_zppo.report import make_report
from megatron_zppo.shutdown import StopRequest
from megatron_zppo.sources import make_source
from megatron_zppo.train import cpu_compat


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="YAML config file")
    ap.add_argument("--load", help="resume from this checkpoint directory ('auto': latest in run.dir)")
    ap.add_argument("--verbose", action="store_true", help="show upstream logs on the terminal too")
    ap.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. run.steps=10")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after --config
    if args.load:
        args.overrides.append(f"run.load={args.load}")
    return args


def main(argv=None) -> int:
    """The main job; a problem with its inputs is one line and exit code 2, Ctrl-C one line and 130."""
    args = parse_args(argv if argv is not None else sys.argv[1:])
    try:
        return run(args)
    except RunError as e:
        print(f"pretrain_zppo: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pretrain_zppo: interrupted (SIGINT); the last complete checkpoint under run.dir/checkpoints "
              "still loads (--load auto)", file=sys.stderr)
        return 130


def run(args) -> int:
    cfg = load_config(args.config, args.overrides)
    build.check_model_paths(cfg)  # before anything is written: a typo'd path leaves no run directory behind
    upstream_log.route(cfg.run.dir, verbose=args.verbose)  # Megatron's INFO lines, warnings -> the run dir
    build.check_inputs(cfg)

    cpu_compat.enable()  # the GPU-less shims, once per process, before anything imports Megatron-Bridge
    stop = StopRequest(cfg.run.stop_timeout_s, cfg.run.dir)
    trainer = build.make_trainer(cfg)  # initialises torch.distributed and Megatron's parallel groups
    run_dir = Path(cfg.run.dir)
    phase = None
    if trainer.is_main:  # the rank that holds the engines, the buffer and the data stream
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        phase = build.make_rollout_phase(cfg)
    try:
        return train(cfg, trainer, phase, stop, run_dir)
    finally:
        if phase is not None:
            phase.graders.close()
        stop.restore()


def train(cfg: Config, trainer, phase: RolloutPhase | None, stop: StopRequest, run_dir: Path) -> int:
    """The run, on every rank; `phase` (the rollout phase) exists on the rank that holds the engines."""
    source = make_source(cfg, phase, run_dir)
    update = build.make_update(cfg, trainer, phase)
    start, summary = resume(cfg, trainer, source, run_dir)
    update.sync(version_name(start))
    report = make_report(cfg, phase, run_dir, start, summary)  # rank 0 evaluates here, before training

    for step in range(start, cfg.run.steps):
        t_start = time.perf_counter()
        rollouts = source.take(step)  # made now, made while the last step trained, or read back
        times = dict(rollouts.times)
        stats = update(rollouts, source, times)  # the method's updates, then the weight sync
        report.step(rollouts, stats, times, t_start)
        summary["steps"] = step + 1
        summary["tokens_generated"] = summary.get("tokens_generated", 0) + tokens_generated(rollouts.groups)
        done = step + 1 == cfg.run.steps or 0 < cfg.run.token_budget <= summary["tokens_generated"]
        stopping = stop.stop_now()
        if (step + 1) % cfg.run.save_every == 0 or done or stopping:
            saved = run_checkpoint.save(run_dir, step + 1, trainer,
                                        {"step": step + 1, "summary": summary, **source.state_dict()})
        if stopping and not done:
            report.stopped(stop.signal_name, step + 1, saved)
            trainer.close()
            return 143  # 128 + SIGTERM: the run did not finish
        if done:
            break

    report.finish()
    trainer.close()
    return 0


def resume(cfg: Config, trainer, source, run_dir: Path) -> tuple[int, dict]:
    """(first step, summary so far): from run.load's checkpoint, or a fresh start."""
    ckpt = run_checkpoint.resolve(cfg.run.load, run_dir)
    if ckpt is None:
        if cfg.run.load == "auto" and trainer.is_main:
            print(f"run.load=auto: no checkpoint under {run_dir / 'checkpoints'}; starting at step 0")
        return 0, {"eval": {}}
    state = run_checkpoint.load(ckpt, trainer)
    source.load_state_dict(state, state["step"])
    if trainer.is_main:
        print(f"resumed from {ckpt} at step {state['step']}")
    return state["step"], state["summary"]


if __name__ == "__main__":
    try:
        code = main()
    except Exception:  # printed as Python prints it; then the exit below
        traceback.print_exc()
        code = 1
    if rollouts_in_flight():  # run.overlap=one_step, stopped mid-step: see rollouts_in_flight
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
