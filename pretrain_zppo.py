"""ZPPO post-training on Megatron-Core: the main job.

    python pretrain_zppo.py --config examples/cpu_toy/zppo.yaml [key=value ...]
    torchrun --nproc_per_node 2 pretrain_zppo.py --config ... train.tensor_parallel=2

Rank 0 holds the rollout engines (in-process, or clients of SGLang servers), the replay buffer and
the data stream; every rank trains. One rollout step (SPEC.md) reads top to bottom in `main`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # Megatron's compiled kernels only pay off on GPU

import torch

from megatron_zppo import build, run_checkpoint, upstream_log
from megatron_zppo.config import Config, load_config
from megatron_zppo.config_io import dump_yaml
from megatron_zppo.errors import RunError
from megatron_zppo.evaluate import evaluate
from megatron_zppo import methods
from megatron_zppo.loop import RolloutPhase, rollout_metrics, sync_weights, train_then_sync
from megatron_zppo.metrics import TRAIN_STATS, MetricsLogger, plot, read_metrics, summary_table
from megatron_zppo.overlap import RolloutFeed, accepted_versions, rollouts_in_flight, version_name, versions_behind
from megatron_zppo.shutdown import StopRequest


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


def broadcast(obj, is_main: bool):
    """Rank 0's object on every rank (the rollouts, which only rank 0 produced)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return obj
    box = [obj if is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def run_evals(cfg: Config, ctx: RolloutPhase) -> dict[str, dict]:
    from megatron_zppo.data import load_questions

    out = {}
    for name, sources in cfg.data.eval.items():
        qs = load_questions(sources, log=lambda *_: None)
        r = evaluate(ctx.student, ctx.encode, ctx.templates, qs, ctx.graders, build.eval_sampling(cfg.eval, cfg.run.seed + 7),
                     cfg.eval.samples_per_question)
        out[name] = {"accuracy": r.accuracy, "n": r.n, "ci95": [r.ci_low, r.ci_high], "correct": list(r.correct),
                     "family": "held_out" if name in cfg.data.held_out else "in_corpus"}
    return out


def rollout_file(directory, step: int) -> Path:
    return Path(directory) / "rollouts" / f"step_{step:06d}.pt"


def save_rollouts(rollouts, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(rollouts, tmp)
    os.replace(tmp, path)


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

    stop = StopRequest()
    trainer = build.make_trainer(cfg)  # initialises torch.distributed and Megatron's parallel groups
    is_main = trainer.is_main
    run_dir = Path(cfg.run.dir)
    ctx = logger = None
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")
        ctx = build.make_rollout_phase(cfg)
    try:
        return train(cfg, trainer, ctx, stop, run_dir)
    finally:
        if is_main:
            ctx.graders.close()
        stop.restore()


def train(cfg: Config, trainer, ctx: RolloutPhase | None, stop: StopRequest, run_dir: Path) -> int:
    is_main = ctx is not None
    objective = ctx.objective if is_main else methods.build_objective(cfg)  # training needs no teacher
    feed = RolloutFeed(ctx, cfg.run.overlap, cfg.run.overlap_timeout_s) if is_main else None
    start, summary = 0, {"eval": {}}
    ckpt = run_checkpoint.resolve(cfg.run.load, run_dir)
    if ckpt is not None:
        state = run_checkpoint.load(ckpt, trainer)
        start, summary = state["step"], state["summary"]
        if is_main:
            ctx.buffer.load_state_dict(state["buffer"])
            ctx.stream.load_state_dict(state["stream"])
            feed.load_state_dict(state.get("rollouts"), start)  # one_step: the rollouts in flight
            print(f"resumed from {ckpt} at step {start}")
    elif cfg.run.load == "auto" and is_main:
        print(f"run.load=auto: no checkpoint under {run_dir / 'checkpoints'}; starting at step 0")
    sync_weights(trainer, ctx.student if is_main else None, version_name(start))
    if is_main:
        logger = MetricsLogger(run_dir, cfg.run.steps, start)
        if start == 0:
            summary["eval"] = {k: {"family": v["family"], "n": v["n"], "before": v["accuracy"], "ci95_before": v["ci95"],
                                   "correct_before": v["correct"]} for k, v in run_evals(cfg, ctx).items()}

    mode, overlap = cfg.run.mode, cfg.run.overlap
    for step in range(start, cfg.run.steps):
        t_step = time.perf_counter()
        if mode == "train_only":  # replay rollouts written by an earlier rollout_only run
            rollouts = torch.load(rollout_file(cfg.run.rollouts_from, step), weights_only=False)
        else:
            rollouts = broadcast(feed.take(step) if is_main else None, is_main)
        if is_main and cfg.buffer.enabled:  # with the buffer off (grpo) there is no buffer at all, not a silent one
            ctx.buffer.update(rollouts.plain)  # before the next step's rollouts draw from it, in either overlap
        if is_main and (mode == "rollout_only" or cfg.run.dump_rollouts):
            save_rollouts(rollouts, rollout_file(run_dir, step))
        times, stats = dict(rollouts.times), {}
        if mode != "rollout_only":
            if is_main:
                feed.start(step + 1)  # one_step: made while this step trains, waited for before the sync
            _, stats = train_then_sync(objective, trainer, rollouts, ctx.student if is_main else None,
                                       None if mode == "train_only" else accepted_versions(overlap, step),
                                       version_name(step + 1), times, seed=cfg.run.seed,
                                       colocated=cfg.student.release_memory,
                                       before_sync=(lambda: feed.join(times)) if is_main else None)
        if is_main:
            m = {**dict.fromkeys(TRAIN_STATS, float("nan")), **rollout_metrics(rollouts, ctx.buffer), **stats}
            m.update({f"t_{k}": times.get(k, 0.0) for k in ("rollout", "reward", "teacher", "zppo", "train", "sync")})
            m.update(periodic_evals(cfg, ctx, step, summary))
            if getattr(ctx.student, "last_sync", None) is not None:  # SGLang students report each weight sync
                m.update(ctx.student.last_sync.metrics())  # sync_s, sync_bytes, sync_gb_per_s, sync_servers
            m["rollout_versions_behind"] = versions_behind(rollouts, step)
            if "overlap_wait" in times:  # one_step: how long the trainer waited for the next rollouts
                m["t_overlap_wait"] = times["overlap_wait"]
            m["t_step"] = time.perf_counter() - t_step
            m["tokens_per_s"] = m["tokens_generated"] / max(m["t_rollout"], 1e-9)
            logger.log(m)
            report_problems(rollouts, ctx.graders, summary)
        stopping = stop.stop_now()
        if (step + 1) % cfg.run.save_every == 0 or step + 1 == cfg.run.steps or stopping:
            state = {"step": step + 1, "summary": summary}  # rank 0 writes it, with the buffer and data position
            if is_main:
                state.update(buffer=ctx.buffer.state_dict(), stream=ctx.stream.state_dict(), rollouts=feed.state_dict())
            saved = run_checkpoint.save(run_dir, step + 1, trainer, state)
        if stopping and step + 1 < cfg.run.steps:
            if is_main:
                logger.close()
                print(f"pretrain_zppo: stopped by {stop.signal_name} after step {step + 1} of {cfg.run.steps}; "
                      f"checkpoint {saved}; resume with --load auto", flush=True)
            trainer.close()
            return 143  # 128 + SIGTERM: the run did not finish

    if is_main:
        for name, r in run_evals(cfg, ctx).items():
            entry = summary["eval"].setdefault(name, {"family": r["family"], "n": r["n"], "before": None})
            entry.update(after=r["accuracy"], ci95_after=r["ci95"], correct_after=r["correct"])  # per question
        summary["steps"] = cfg.run.steps
        (run_dir / "summary.json").write_text(json.dumps(_finite(summary), indent=2))
        if (run_dir / "metrics.jsonl").exists():
            plot(read_metrics(run_dir / "metrics.jsonl"), run_dir / "curves.png")
        print(summary_table(summary))
        print(f"run directory: {run_dir}\n  metrics: {run_dir / 'metrics.jsonl'}\n  plot: {run_dir / 'curves.png'}\n"
              f"  tensorboard: tensorboard --logdir {run_dir / 'tensorboard'}")
        logger.close()
    trainer.close()
    return 0


def periodic_evals(cfg: Config, ctx: RolloutPhase, step: int, summary: dict) -> dict[str, float]:
    """Every `run.eval_every` steps (not after the last: the final evaluation follows), the eval
    sets' accuracies: into this step's metrics (and so TensorBoard) and the summary."""
    every = cfg.run.eval_every
    if not every or (step + 1) % every or step + 1 == cfg.run.steps:
        return {}
    out = {}
    for name, r in run_evals(cfg, ctx).items():
        out[f"eval_{name}"] = r["accuracy"]
        entry = summary["eval"].setdefault(name, {"family": r["family"], "n": r["n"], "before": None})
        entry.setdefault("during", []).append({"step": step + 1, "accuracy": r["accuracy"], "ci95": r["ci95"]})
    return out


def report_problems(rollouts, graders, summary: dict) -> None:
    """Grades that failed (scored 0) and prompts that were dropped: counted in the summary and
    said on the terminal, every step they happen."""
    failed = {k: v for k, v in rollouts.grade_failures.items() if v}
    totals = summary.setdefault("grader_failures", {})
    for k, v in failed.items():
        totals[k] = totals.get(k, 0) + v
    if failed:
        counts = ", ".join(f"{v} {k.removeprefix('grader_')}" for k, v in failed.items())
        print(f"  warning: step {rollouts.step}: grades scored 0 after failing ({counts}); first: "
              f"{graders.stats.first_problem}", flush=True)
    for why in rollouts.dropped:
        print(f"  warning: step {rollouts.step}: dropped {why}", flush=True)


def _finite(x):
    """JSON has no NaN: an undefined figure (an empty eval set) is written as null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


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
