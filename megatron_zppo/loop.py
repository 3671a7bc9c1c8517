"""One ZPPO rollout step, phase by phase, as the method describes it (SPEC.md "One rollout step").

`rollout_phase` runs where the engines are (rank 0 of the trainer): it draws questions, gets
student rollouts, grades them, runs the ZPPO stage and the reformulated rollouts, and computes
advantages. `train_phase` runs on every trainer rank. The driver (pretrain_zppo.py) joins them
with weight sync, the buffer update, logging and checkpoints.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from megatron_zppo.advantages import assign_advantages
from megatron_zppo.answers import last_boxed
from megatron_zppo.batch import split_minibatches, training_samples
from megatron_zppo.config import Config
from megatron_zppo.data import QuestionStream
from megatron_zppo.prompts import PromptTemplates
from megatron_zppo.records import Group, PromptKind, Question, Sample
from megatron_zppo.reformulate import fraction_count, plan_reformulations, render, select_hard
from megatron_zppo.replay_buffer import ReplayBuffer
from megatron_zppo.rewards import GraderPool
from megatron_zppo.rollout.collect import PromptSpec, generate_groups, score_samples
from megatron_zppo.rollout.engine import RolloutEngine, SamplingParams
from megatron_zppo.teacher import Teacher


class PolicyTrainer(Protocol):
    def train(self, minibatches: list[list[Sample]]) -> dict[str, float]:
        """Recompute old log-probs for all samples, then one optimizer update per mini-batch."""

    def export_hf(self) -> Iterable[tuple[str, torch.Tensor]]: ...


@dataclass
class Rollouts:
    """Everything the rollout phase hands to training and logging."""

    step: int
    plain: list[Group]
    reformulated: list[Group]
    n_new: int
    n_replay: int
    n_hard: int  # before the cap
    teacher_acc_hard: float
    dropped_long: int
    times: dict[str, float] = field(default_factory=dict)
    ncq_listed: dict[str, list[str]] = field(default_factory=dict)  # NCQ group id -> answers listed wrong

    @property
    def groups(self) -> list[Group]:
        return self.plain + self.reformulated


@dataclass
class StepContext:
    cfg: Config
    student: RolloutEngine
    teacher: Teacher | None
    encode: Callable[[str], list[int]]
    graders: GraderPool
    stream: QuestionStream
    buffer: ReplayBuffer
    templates: PromptTemplates
    questions: dict[str, Question]


@contextmanager
def timed(times: dict[str, float], name: str):
    t0 = time.perf_counter()
    yield
    times[name] = times.get(name, 0.0) + time.perf_counter() - t0


def step_seed(seed: int, step: int, phase: int) -> int:
    """A distinct, reproducible seed per (run, step, phase), so a resumed run samples the same."""
    return (seed * 1_000_003 + step * 101 + phase) % (2**31)


def rollout_phase(ctx: StepContext, step: int) -> Rollouts:
    cfg, times = ctx.cfg, {}
    n_new = cfg.rollout.n_new
    new = ctx.stream.next(n_new)
    replay = ctx.buffer.sample(fraction_count(cfg.buffer.rho_replay, n_new)) if cfg.buffer.enabled else []
    new_ids = {q.id for q in new}
    replay = [q for q in replay if q.id not in new_ids]  # drawn as new this step already
    student_params = SamplingParams(cfg.student.temperature, cfg.student.top_p,
                                    max_new_tokens=cfg.rollout.max_new_tokens, seed=step_seed(cfg.run.seed, step, 0))
    specs = [PromptSpec(q, PromptKind.PLAIN, f"{step}:{q.id}", ctx.templates.plain(q.text)) for q in new + replay]
    with timed(times, "rollout"):
        plain, long_plain = generate_groups(ctx.student, ctx.encode, specs, cfg.rollout.group_size,
                                            student_params, cfg.rollout.max_prompt_tokens)
    with timed(times, "reward"):
        score_samples([s for g in plain for s in g.samples], ctx.questions, ctx.graders, _judge(ctx))

    cap = fraction_count(cfg.zppo.rho_aug, n_new)
    all_hard = select_hard(plain, cfg.zppo.tau, len(plain))
    hard = all_hard[:cap]
    reformulated, teacher_acc, long_reform, listed = [], float("nan"), [], {}
    if hard and (cfg.zppo.bcq or cfg.zppo.ncq):
        teacher = {}
        if cfg.zppo.bcq:
            with timed(times, "teacher"):
                teacher = ctx.teacher.rollouts([g.question for g in hard], cfg.rollout.teacher_group_size)
                t_samples = [s for ss in teacher.values() for s in ss]
                score_samples(t_samples, ctx.questions, ctx.graders, _judge(ctx))
                teacher_acc = sum(s.reward for s in t_samples) / max(len(t_samples), 1)
        with timed(times, "zppo"):
            plans = plan_reformulations(hard, teacher, cap, cfg.zppo, random.Random(step_seed(cfg.run.seed, step, 1)))
            compress = ctx.teacher.compress if (cfg.zppo.compression and ctx.teacher) else None
            texts = render(plans, ctx.templates, compress)
            listed = {p.group_id: p.wrong_answers for p in plans if p.kind is PromptKind.NCQ}
        specs = [PromptSpec(p.question, p.kind, p.group_id, t) for p, t in zip(plans, texts)]
        params = SamplingParams(**{**student_params.__dict__, "seed": step_seed(cfg.run.seed, step, 2)})
        with timed(times, "rollout"):
            reformulated, long_reform = generate_groups(ctx.student, ctx.encode, specs, cfg.rollout.group_size,
                                                        params, cfg.rollout.max_reformulated_prompt_tokens)
        with timed(times, "reward"):
            score_samples([s for g in reformulated for s in g.samples], ctx.questions, ctx.graders, _judge(ctx))
    assign_advantages(plain + reformulated, cfg.advantage)
    return Rollouts(step, plain, reformulated, len(new), len(replay), len(all_hard), teacher_acc,
                    len(long_plain) + len(long_reform), times, listed)


def _judge(ctx: StepContext):
    return ctx.teacher.judge if ctx.teacher is not None else None


def train_phase(cfg: Config, trainer: PolicyTrainer, r: Rollouts, weight_version: str) -> dict[str, float]:
    samples = training_samples(r.groups, weight_version)
    rng = random.Random(step_seed(cfg.run.seed, r.step, 3))
    return trainer.train(split_minibatches(samples, cfg.run.updates_per_step, rng))


def rollout_metrics(r: Rollouts, buffer: ReplayBuffer) -> dict[str, float]:
    def acc(kind):
        rewards = [s.reward for g in r.groups if g.kind is kind for s in g.samples]
        return sum(rewards) / len(rewards) if rewards else float("nan")

    all_rewards = [s.reward for g in r.groups for s in g.samples]
    return {
        "step": r.step, "n_new": r.n_new, "n_replay": r.n_replay, "n_hard": r.n_hard,
        "n_bcq": sum(g.kind is PromptKind.BCQ for g in r.reformulated),
        "n_ncq": sum(g.kind is PromptKind.NCQ for g in r.reformulated),
        **{k: v for k, v in buffer.counters().items()},
        "acc_plain": acc(PromptKind.PLAIN), "acc_bcq": acc(PromptKind.BCQ), "acc_ncq": acc(PromptKind.NCQ),
        "teacher_acc_hard": r.teacher_acc_hard,
        "reward_mean": sum(all_rewards) / len(all_rewards) if all_rewards else float("nan"),
        "tokens_generated": sum(len(s.response_ids) for g in r.groups for s in g.samples),
        "dropped_long_prompts": r.dropped_long,
        "ncq_repeats_listed_answer": _ncq_repeat_rate(r),
    }


def _ncq_repeat_rate(r: Rollouts) -> float:
    """How often an NCQ rollout's final answer is one its prompt listed as wrong (the paper reports
    that a small student mostly does this)."""
    hits = total = 0
    for g in r.reformulated:
        if g.kind is PromptKind.NCQ:
            listed = set(r.ncq_listed.get(g.id, ()))
            for s in g.samples:
                total += 1
                a = last_boxed(s.response_text)
                hits += a is not None and a.strip() in listed
    return hits / total if total else float("nan")
