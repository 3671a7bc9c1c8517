"""One ZPPO rollout step, phase by phase, as the method describes it (SPEC.md "One rollout step").

`RolloutPhase` runs where the engines are (rank 0 of the trainer): it draws questions, gets
student rollouts, grades them, turns the hard ones into the method's prompts, rolls those out and
grades them, and sets advantages. `train_then_sync` runs on every trainer rank. Which method runs
is decided once, at build time (methods/): this file names none. The driver (pretrain_zppo.py)
joins the phases with the buffer update, logging and checkpoints.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from megatron_zppo.core.answers import last_boxed
from megatron_zppo.config import RolloutConfig
from megatron_zppo.data import QuestionStream
from megatron_zppo.grader_pool import GraderPool
from megatron_zppo.methods import Grade, HardPrompts, Objective, step_seed, timed
from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import Group, PromptKind, Sample
from megatron_zppo.core.reformulate import fraction_count, select_hard
from megatron_zppo.core.replay_buffer import ReplayBuffer
from megatron_zppo.rollout.collect import PromptSpec, generate_groups
from megatron_zppo.rollout.engine import RolloutEngine, SamplingParams


class Trainer(Protocol):
    """What the loop needs of the trainer (train.rl_trainer.RLTrainer)."""

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
class RolloutPhase:
    """The rollout phase and what it works with, built once on the rank that holds the engines
    (build.make_rollout_phase)."""

    student: RolloutEngine
    encode: Callable[..., list[int]]
    graders: GraderPool
    grade: Grade  # rollout.collect.score_samples bound to the questions, graders and judge
    stream: QuestionStream
    buffer: ReplayBuffer
    templates: PromptTemplates
    hard_prompts: HardPrompts
    objective: Objective
    rollout: RolloutConfig
    sampling: SamplingParams  # the student's; each step gets its own seeds
    tau: float  # hard if acc(x) < tau (zppo.tau)
    rho_aug: float  # cap on hard questions and their prompts, as a fraction of rollout.n_new
    rho_replay: float  # replayed questions per step, the same way; 0 with the buffer off
    seed: int

    def __call__(self, step: int) -> Rollouts:
        times, graded_before, n_new = {}, dataclasses.replace(self.graders.stats), self.rollout.n_new
        new = self.stream.next(n_new)
        replay = self.buffer.sample(fraction_count(self.rho_replay, n_new),
                                    exclude={q.id for q in new})  # a new question is rolled out anyway
        specs = [PromptSpec(q, PromptKind.PLAIN, f"{step}:{q.id}", self.templates.plain(q.text)) for q in new + replay]
        plain, long_plain = self._roll_out(specs, step, 0, self.rollout.max_prompt_tokens, times)

        cap = fraction_count(self.rho_aug, n_new)
        all_hard = select_hard(plain, self.tau, len(plain))
        hard = self.hard_prompts(all_hard[:cap], cap, step, times)
        reformulated, long_reform = self._roll_out(hard.specs, step, 2, self.rollout.max_reformulated_prompt_tokens,
                                                   times)
        targets = self.objective.prepare(plain, reformulated, step, times)
        dropped = [f"{len(long)} of {len(long) + len(kept)} {what} prompts longer than rollout.{key}={limit}"
                   for long, kept, what, key, limit in (
                       (long_plain, plain, "plain", "max_prompt_tokens", self.rollout.max_prompt_tokens),
                       (long_reform, reformulated, "reformulated", "max_reformulated_prompt_tokens",
                        self.rollout.max_reformulated_prompt_tokens)) if long]
        return Rollouts(step, plain, reformulated, len(new), len(replay), len(all_hard), hard.teacher_acc,
                        len(long_plain) + len(long_reform), times, hard.ncq_listed, targets,
                        self.graders.stats.since(graded_before), dropped)

    def _roll_out(self, specs: list[PromptSpec], step: int, phase: int, max_prompt_tokens: int,
                  times: dict[str, float]) -> tuple[list[Group], list[PromptSpec]]:
        """The student's graded rollouts on `specs`, and the specs dropped for length."""
        if not specs:
            return [], []
        params = dataclasses.replace(self.sampling, seed=step_seed(self.seed, step, phase))
        with timed(times, "rollout"):
            groups, too_long = generate_groups(self.student, self.encode, specs, self.rollout.group_size, params,
                                               max_prompt_tokens)
        with timed(times, "reward"):
            self.grade([s for g in groups for s in g.samples])
        return groups, too_long


def sync_weights(trainer: Trainer, engine: RolloutEngine | None, version: str) -> None:
    """Every rank drains the export (it gathers shards collectively); the rank holding the engine
    (rank 0) feeds it."""
    tensors = trainer.export_hf()
    if engine is not None:
        engine.update_weights(tensors, version)
    else:
        for _ in tensors:
            pass


def train_then_sync(objective: Objective, trainer: Trainer, r: Rollouts, engine: RolloutEngine | None,
                    weight_version: str | tuple[str, ...] | None, new_version: str, times: dict[str, float], *,
                    seed: int, colocated: bool = False, before_sync: Callable[[], None] | None = None
                    ) -> tuple[str, dict]:
    """The updates of one rollout step, then the new weights into the engine. A co-located server
    (`student.release_memory`) gives its GPU memory to the trainer for the updates and takes its
    weights' memory back before the sync, its cache after it. `before_sync` waits for rollouts
    still being made with the engine's current weights (run.overlap=one_step, overlap.py).
    Returns (new version, train stats)."""
    colocated = colocated and engine is not None
    if colocated:
        engine.release_memory()
    with timed(times, "train"):
        stats = objective.train(trainer, r, weight_version, random.Random(step_seed(seed, r.step, 3)))
    if before_sync is not None:
        before_sync()
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
