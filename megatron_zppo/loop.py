"""One ZPPO rollout step, phase by phase, as the method describes it (SPEC.md "One rollout step").

`rollout_phase` runs where the engines are (rank 0 of the trainer): it draws questions, gets
student rollouts, grades them, runs the ZPPO stage and the reformulated rollouts, and computes
advantages. `train_phase` runs on every trainer rank. The driver (pretrain_zppo.py) joins them
with weight sync, the buffer update, logging and checkpoints.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from megatron_zppo.advantages import assign_advantages
from megatron_zppo.answers import last_boxed
from megatron_zppo.baselines import distill_advantages, prefix_length
from megatron_zppo.batch import split_minibatches, training_samples
from megatron_zppo.config import Config
from megatron_zppo.data import QuestionStream
from megatron_zppo.errors import RunError
from megatron_zppo.prompts import PromptTemplates
from megatron_zppo.records import Group, PromptKind, Question, Sample
from megatron_zppo.reformulate import fraction_count, plan_reformulations, render, select_hard
from megatron_zppo.replay_buffer import ReplayBuffer
from megatron_zppo.grader_pool import GraderPool
from megatron_zppo.rollout.collect import PromptSpec, generate_groups, score_samples
from megatron_zppo.rollout.engine import RolloutEngine, SamplingParams
from megatron_zppo.teacher import Teacher


class PolicyTrainer(Protocol):
    def train(self, minibatches: list[list[Sample]]) -> dict[str, float]:
        """Recompute old log-probs for all samples, then one optimizer update per mini-batch."""

    def distill(self, minibatches: list[list[Sample]]) -> dict[str, float]:
        """Logit distillation: one update per mini-batch towards the teacher's distributions."""

    def sft(self, minibatches: list[list[Sample]]) -> dict[str, float]:
        """One supervised (cross-entropy) update per mini-batch of (prompt, response) samples."""

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
    dropped_long: int  # prompts over their length limit, plain and reformulated: never sent
    times: dict[str, float] = field(default_factory=dict)
    ncq_listed: dict[str, list[str]] = field(default_factory=dict)  # NCQ group id -> answers listed wrong
    # Off-policy distillation: the teacher's correct responses (with their prompts) to fine-tune on.
    sft_pairs: list[Sample] = field(default_factory=list)
    grade_failures: dict[str, int] = field(default_factory=dict)  # this step's timeouts, errors, crashes
    dropped: list[str] = field(default_factory=list)  # why prompts were dropped, for the terminal

    @property
    def groups(self) -> list[Group]:
        return self.plain + self.reformulated


@dataclass
class StepContext:
    cfg: Config
    student: RolloutEngine
    teacher: Teacher | None
    encode: Callable[..., list[int]]
    graders: GraderPool
    stream: QuestionStream
    buffer: ReplayBuffer
    templates: PromptTemplates
    questions: dict[str, Question]
    decode: Callable[[Sequence[int]], str] | None = None  # student tokenizer (Prefix baseline)


@contextmanager
def timed(times: dict[str, float], name: str):
    t0 = time.perf_counter()
    yield
    times[name] = times.get(name, 0.0) + time.perf_counter() - t0


def step_seed(seed: int, step: int, phase: int) -> int:
    """A distinct, reproducible seed per (run, step, phase), so a resumed run samples the same."""
    return (seed * 1_000_003 + step * 101 + phase) % (2**31)


def rollout_phase(ctx: StepContext, step: int) -> Rollouts:
    cfg, times, graded_before = ctx.cfg, {}, dataclasses.replace(ctx.graders.stats)
    n_new = cfg.rollout.n_new
    new = ctx.stream.next(n_new)
    n_replay = fraction_count(cfg.buffer.rho_replay, n_new) if cfg.buffer.enabled else 0
    replay = ctx.buffer.sample(n_replay, exclude={q.id for q in new})  # a new question is rolled out anyway
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
    specs, teacher_acc, listed = hard_prompt_specs(ctx, all_hard[:cap], cap, step, times)
    reformulated, long_reform = [], []
    if specs:
        params = SamplingParams(**{**student_params.__dict__, "seed": step_seed(cfg.run.seed, step, 2)})
        with timed(times, "rollout"):
            reformulated, long_reform = generate_groups(ctx.student, ctx.encode, specs, cfg.rollout.group_size,
                                                        params, cfg.rollout.max_reformulated_prompt_tokens)
        with timed(times, "reward"):
            score_samples([s for g in reformulated for s in g.samples], ctx.questions, ctx.graders, _judge(ctx))
    sft_pairs: list[Sample] = []
    if cfg.method.objective == "off_policy_distill":
        with timed(times, "teacher"):
            sft_pairs = teacher_targets(ctx, [g.question for g in plain], cfg.rollout.teacher_group_size,
                                        step_seed(cfg.run.seed, step, 4))
    if cfg.method.objective == "on_policy_distill":
        with timed(times, "teacher"):
            set_distill_advantages(ctx, plain)
    else:
        assign_advantages(plain + reformulated, cfg.advantage)
    dropped = [f"{len(long)} of {len(long) + len(kept)} {what} prompts longer than rollout.{key}={limit}"
               for long, kept, what, key, limit in (
                   (long_plain, plain, "plain", "max_prompt_tokens", cfg.rollout.max_prompt_tokens),
                   (long_reform, reformulated, "reformulated", "max_reformulated_prompt_tokens",
                    cfg.rollout.max_reformulated_prompt_tokens)) if long]
    return Rollouts(step, plain, reformulated, len(new), len(replay), len(all_hard), teacher_acc,
                    len(long_plain) + len(long_reform), times, listed, sft_pairs,
                    ctx.graders.stats.since(graded_before), dropped)


def hard_prompt_specs(ctx: StepContext, hard: list[Group], cap: int, step: int,
                      times: dict[str, float]) -> tuple[list[PromptSpec], float, dict[str, list[str]]]:
    """The prompts hard questions are turned into: BCQ/NCQ (ZPPO), or one teacher hint or one
    teacher prefix per question (baselines). Returns (specs, teacher accuracy on them, NCQ lists)."""
    cfg, how = ctx.cfg, ctx.cfg.method.hard_prompts
    if not hard or (how == "zppo" and not (cfg.zppo.bcq or cfg.zppo.ncq)):
        return [], float("nan"), {}
    if how == "hint":
        with timed(times, "teacher"):
            hints = ctx.teacher.hints([g.question for g in hard], step_seed(cfg.run.seed, step, 4))
        return [PromptSpec(g.question, PromptKind.HINT, f"{g.id}:hint", ctx.templates.hint_prompt(g.question.text, h))
                for g, h in zip(hard, hints) if h], float("nan"), {}  # nothing left after redaction: no prompt
    teacher, teacher_acc = {}, float("nan")
    if cfg.zppo.bcq or how == "prefix":
        with timed(times, "teacher"):
            teacher = ctx.teacher.rollouts([g.question for g in hard], cfg.rollout.teacher_group_size,
                                           step_seed(cfg.run.seed, step, 4))
            t_samples = [s for ss in teacher.values() for s in ss]
            score_samples(t_samples, ctx.questions, ctx.graders, _judge(ctx))
            teacher_acc = sum(s.reward for s in t_samples) / max(len(t_samples), 1)
    rng = random.Random(step_seed(cfg.run.seed, step, 1))
    with timed(times, "zppo"):
        if how == "prefix":
            return prefix_specs(ctx, hard, teacher, rng), teacher_acc, {}
        plans = plan_reformulations(hard, teacher, cap, cfg.zppo, rng)
        compress = ctx.teacher.compress if (cfg.zppo.compression and ctx.teacher) else None
        texts = render(plans, ctx.templates, compress)
        listed = {p.group_id: p.wrong_answers for p in plans if p.kind is PromptKind.NCQ}
    return [PromptSpec(p.question, p.kind, p.group_id, t) for p, t in zip(plans, texts)], teacher_acc, listed


def prefix_specs(ctx: StepContext, hard: list[Group], teacher: dict[str, list[Sample]],
                 rng: random.Random) -> list[PromptSpec]:
    """Prefix baseline: the plain prompt followed by the first `prefix_fraction` of one correct
    teacher response (drawn at random). Questions the teacher never solved get no prompt."""
    out = []
    for g in hard:
        correct = [s for s in teacher.get(g.question.id, []) if s.reward and s.reward >= 1.0]
        if not correct:
            continue
        ids = list(rng.choice(correct).response_ids)
        ids = ids[:prefix_length(len(ids), ctx.cfg.method.prefix_fraction)]
        if ids:
            out.append(PromptSpec(g.question, PromptKind.PREFIX, f"{g.id}:prefix", g.prompt_text,
                                  tuple(ids), ctx.decode(ids)))
    return out


def teacher_targets(ctx: StepContext, questions: list[Question], n: int,
                    seed: int) -> list[Sample]:
    """Off-policy distillation: the teacher's correct rollouts on this step's questions, the
    student's fine-tuning targets (prompt and response ids, and the prompt's images)."""
    teacher = ctx.teacher.rollouts(questions, n, seed)
    samples = [s for ss in teacher.values() for s in ss]
    score_samples(samples, ctx.questions, ctx.graders, _judge(ctx))
    return [s for s in samples if s.reward >= 1.0 and len(s.response_ids)]


def set_distill_advantages(ctx: StepContext, groups: list[Group]) -> None:
    """On-policy distillation: per-token advantages from the teacher's log-probs of the student's
    own tokens (baselines.distill_advantages); the reward plays no part in the gradient."""
    samples = [s for g in groups for s in g.samples]
    images = [s.images for s in samples] if any(s.images for s in samples) else None
    teacher_lp = ctx.teacher.engine.score([s.prompt_ids for s in samples], [s.response_ids for s in samples], images)
    m = ctx.cfg.method
    for s, t in zip(samples, teacher_lp, strict=True):
        s.token_advantages = distill_advantages(s.logprobs, t, m.divergence, m.jsd_beta).tolist()
        s.advantage = 0.0


def _judge(ctx: StepContext):
    return ctx.teacher.judge if ctx.teacher is not None else None


def train_phase(cfg: Config, trainer: PolicyTrainer, r: Rollouts, weight_version: str) -> dict[str, float]:
    rng = random.Random(step_seed(cfg.run.seed, r.step, 3))
    if cfg.method.objective == "off_policy_distill":  # fine-tuning on the teacher's tokens, not a policy gradient
        if not r.sft_pairs:
            return {}
        return trainer.sft(split_minibatches(r.sft_pairs, min(cfg.run.updates_per_step, len(r.sft_pairs)), rng))
    samples = training_samples(r.groups, weight_version)
    if not samples:
        raise RunError(f"step {r.step}: nothing to train on: no prompt was rolled out"
                       + (f" ({'; '.join(r.dropped)})" if r.dropped else "")
                       + "; raise the limit or filter the data (tools/prepare_vl_data.py, the source's filters)")
    minibatches = split_minibatches(samples, min(cfg.run.updates_per_step, len(samples)), rng)
    if cfg.method.objective == "logit_distill":  # the teacher's distributions on the student's own samples
        return trainer.distill(minibatches)
    return trainer.train(minibatches)


def sync_weights(trainer: PolicyTrainer, engine: RolloutEngine | None, version: str) -> None:
    """Every rank drains the export (it gathers shards collectively); the rank holding the engine
    (rank 0) feeds it."""
    tensors = trainer.export_hf()
    if engine is not None:
        engine.update_weights(tensors, version)
    else:
        for _ in tensors:
            pass


def train_then_sync(cfg: Config, trainer: PolicyTrainer, r: Rollouts, engine: RolloutEngine | None,
                    weight_version: str | None, new_version: str, times: dict[str, float]) -> tuple[str, dict]:
    """The updates of one rollout step, then the new weights into the engine. A co-located server
    (`student.release_memory`) gives its GPU memory to the trainer for the updates and takes its
    weights' memory back before the sync, its cache after it. Returns (new version, train stats)."""
    colocated = engine is not None and cfg.student.release_memory
    if colocated:
        engine.release_memory()
    with timed(times, "train"):
        stats = train_phase(cfg, trainer, r, weight_version)
    with timed(times, "sync"):
        if colocated:
            engine.resume_memory(("weights",))
        sync_weights(trainer, engine, new_version)
        if colocated:
            engine.resume_memory(("kv_cache", "cuda_graph"))
    return new_version, stats


def rollout_metrics(r: Rollouts, buffer: ReplayBuffer) -> dict[str, float]:
    def acc(kind):
        rewards = [s.reward for g in r.groups if g.kind is kind for s in g.samples]
        return sum(rewards) / len(rewards) if rewards else float("nan")

    all_rewards = [s.reward for g in r.groups for s in g.samples]
    return {
        "step": r.step, "n_new": r.n_new, "n_replay": r.n_replay, "n_hard": r.n_hard,
        **{f"n_{k.value}": sum(g.kind is k for g in r.reformulated) for k in PromptKind if k is not PromptKind.PLAIN},
        **{k: v for k, v in buffer.counters().items()},
        **{f"acc_{k.value}": acc(k) for k in PromptKind},
        "n_sft_targets": len(r.sft_pairs),
        "teacher_acc_hard": r.teacher_acc_hard,
        "reward_mean": sum(all_rewards) / len(all_rewards) if all_rewards else float("nan"),
        "tokens_generated": sum(len(s.response_ids) for g in r.groups for s in g.samples),
        "dropped_long_prompts": r.dropped_long,
        **r.grade_failures,
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
