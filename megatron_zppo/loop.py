"""One ZPPO rollout step, phase by phase, as docs/method.md ("One rollout step") describes it.

`RolloutPhase` runs where the engines are (rank 0 of the trainer): it draws questions, gets
student rollouts, grades them, turns the hard ones into the method's prompts, rolls those out and
grades them, and sets advantages. `UpdatePhase` runs on every trainer rank: the method's updates,
then the weight sync. Which method runs is decided once, at build time (methods/): this file names
none. The driver (pretrain_zppo.py) takes rollouts from a source (sources.py), updates, logs
(report.py) and saves.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from megatron_zppo.config import RolloutConfig
from megatron_zppo.data import QuestionStream
from megatron_zppo.grader_pool import GraderPool
from megatron_zppo.methods import Grade, HardPrompts, Objective, Phase, pre_capped, step_seed, timed
from megatron_zppo.core.dynamic_sampling import (
    in_question_order, informative, informative_fraction, next_round_size, surplus_groups,
)
from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import Group, PromptKind, Question, Sample
from megatron_zppo.core.reformulate import fraction_count, select_hard
from megatron_zppo.core.replay_buffer import ReplayBuffer
from megatron_zppo.rollout.collect import PromptSpec, generate_groups
from megatron_zppo.overlap import accepted_versions, version_name
from megatron_zppo.rollout.engine import SamplingParams
from megatron_zppo.rollout.pool import ServersChanged
from megatron_zppo.shutdown import any_rank

if TYPE_CHECKING:
    from megatron_zppo.rollout.engine import StudentEngine


class Trainer(Protocol):
    """What the loop needs of the trainer (train.rl_trainer.RLTrainer)."""

    def update(self, minibatches: list[list[Sample]], loss) -> dict[str, float]:
        """One optimizer update per mini-batch under `loss` (train/losses.py)."""

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
    # The method's own (its hard prompts' and objective's): the loop carries it to every rank, unread.
    method_data: dict[str, Any] = field(default_factory=dict)
    grade_failures: dict[str, int] = field(default_factory=dict)  # this step's timeouts, errors, crashes
    dropped: list[str] = field(default_factory=list)  # why prompts were dropped, for the terminal
    # rollout.dynamic_sampling: the ids of the groups not trained (every group is kept for the
    # buffer and the logs), the rounds drawn, and the tokens the first round alone generated
    filtered: frozenset[str] = frozenset()
    rounds: int = 1
    first_round_tokens: int | None = None
    notes: list[str] = field(default_factory=list)  # what else the terminal should say of this step

    @property
    def groups(self) -> list[Group]:
        """Every group rolled out (the logs, the buffer's plain groups)."""
        return self.plain + self.reformulated

    @property
    def trained(self) -> list[Group]:
        """The groups the policy gradient trains on: all, or those dynamic sampling kept."""
        return [g for g in self.groups if g.id not in self.filtered]

    def __setstate__(self, state: dict) -> None:
        """Rollouts pickled before `method_data` existed (a one_step checkpoint's rollouts in
        flight, a rollout_only run's files) carried the two methods' data as fields of their own."""
        data = state.setdefault("method_data", {})
        if "ncq_listed" in state:
            data.setdefault("ncq_listed", state.pop("ncq_listed"))
        if "sft_pairs" in state:
            data.setdefault("sft_targets", state.pop("sft_pairs"))
        state.setdefault("filtered", frozenset())  # and before dynamic sampling
        state.setdefault("rounds", 1)
        state.setdefault("first_round_tokens", None)
        state.setdefault("notes", [])
        self.__dict__.update(state)


@dataclass
class Round:
    """One draw of a step's rollouts (RolloutPhase._round)."""

    plain: list[Group]
    reformulated: list[Group]
    n_new: int
    n_replay: int
    n_hard: int
    teacher_acc: float
    dropped_long: int
    data: dict[str, Any]
    dropped: list[str]

    @property
    def groups(self) -> list[Group]:
        return self.plain + self.reformulated


ROUND_SEED = 104_729  # a further round's sampling seeds: the step's, shifted by this per round


def merge_method_data(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The method data of several rounds as one: the methods keep maps by group id (methods/zppo.py),
    and group ids differ between rounds."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key in out and not (isinstance(out[key], dict) and isinstance(value, dict)):
                raise TypeError(f"method data {key!r}: cannot merge a {type(value).__name__} from two rounds")
            out[key] = {**out[key], **value} if key in out else value
    return out


def tokens_generated(groups: Iterable[Group]) -> int:
    return sum(len(s.response_ids) for g in groups for s in g.samples)


@dataclass
class RolloutPhase:
    """The rollout phase and what it works with, built once on the rank that holds the engines
    (build.make_rollout_phase)."""

    student: StudentEngine
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
    tau: float  # hard if acc(x) < tau (method.tau)
    rho_aug: float  # cap on hard questions and their prompts, as a fraction of rollout.n_new
    rho_replay: float  # replayed questions per step, the same way; 0 with the buffer off
    seed: int
    pre_cap: str = "hardest"  # method.pre_cap: the cap before the teacher runs, or among the admissible
    eval_judge: object = None  # evaluation/judge.EvalJudge on the teacher's engine: a suite's judge protocols

    def __call__(self, step: int) -> Rollouts:
        times, graded_before, ds = {}, dataclasses.replace(self.graders.stats), self.rollout.dynamic_sampling
        target = 0
        rounds = [self._round(step, 0, self.rollout.n_new, set(), times)]
        if ds.enabled:  # more rounds until the step holds its target of informative groups
            target = ds.target_groups or rounds[0].n_new + rounds[0].n_replay
            kept = sum(map(informative, rounds[0].groups))
            while kept < target and len(rounds) < ds.max_rounds:
                drawn = sum(r.n_new + r.n_replay for r in rounds)
                size = next_round_size(target - kept, kept, drawn, self.rollout.n_new, ds.margin)
                rounds.append(self._round(step, len(rounds), size, {g.question.id for r in rounds for g in r.plain},
                                          times))
                kept += sum(map(informative, rounds[-1].groups))
        filtered, notes = self._filter(rounds, target, ds) if ds.enabled else ([], [])
        return self.assemble(step, rounds, times, self.graders.stats.since(graded_before), filtered, notes,
                             tokens_generated(rounds[0].groups) if ds.enabled else None)

    def assemble(self, step: int, rounds: list[Round], times: dict[str, float], grade_failures: dict[str, int],
                 filtered=(), notes=(), first_round_tokens: int | None = None) -> Rollouts:
        """A step's rollouts from its rounds, and what the objective prepares from the groups it trains."""
        plain = [g for r in rounds for g in r.plain]
        reformulated = [g for r in rounds for g in r.reformulated]
        trained_plain = [g for g in plain if g.id not in filtered]
        trained_reform = [g for g in reformulated if g.id not in filtered]
        data = merge_method_data([r.data for r in rounds] + [self.objective.prepare(trained_plain, trained_reform, step,
                                                                                     times)])
        hard = sum(r.n_hard for r in rounds)
        teacher_acc = sum(r.teacher_acc * r.n_hard for r in rounds) / hard if hard else float("nan")
        return Rollouts(step, plain, reformulated, sum(r.n_new for r in rounds), sum(r.n_replay for r in rounds),
                        hard, teacher_acc, sum(r.dropped_long for r in rounds), times, data, grade_failures,
                        [d for r in rounds for d in r.dropped], filtered=frozenset(filtered), rounds=len(rounds),
                        notes=list(notes), first_round_tokens=first_round_tokens)

    def draw(self, n_new: int, drawn: set[str]) -> tuple[list[Question], list[Question]]:
        """A round's questions: `n_new` new ones, and replays from the buffer not among `drawn`."""
        new = self.stream.next(n_new)
        replay = self.buffer.sample(fraction_count(self.rho_replay, n_new),
                                    exclude=drawn | {q.id for q in new})  # a new question is rolled out anyway
        return new, replay

    def _round(self, step: int, round_: int, n_new: int, drawn: set[str], times: dict[str, float]) -> Round:
        """One draw of questions rolled out, graded and reformulated (a step is one round, unless
        rollout.dynamic_sampling asks for more: each further round draws new questions and replays
        not drawn yet, with seeds of its own)."""
        return self.roll_round(step, round_, *self.draw(n_new, drawn), times, {})

    def roll_round(self, step: int, round_: int, new: list[Question], replay: list[Question],
                   times: dict[str, float], memo: dict[str, Any]) -> Round:
        """Drawn questions rolled out, graded and reformulated. `memo` keeps each stage's result
        once reached: run.overlap=async checkpoints rounds part-way, and a resumed round goes on
        from the stage it had reached (stream.py)."""
        if "plain" not in memo:
            specs = [PromptSpec(q, PromptKind.PLAIN, f"{step}:{q.id}", self.templates.plain(q.text))
                     for q in new + replay]
            memo["plain"] = self._roll_out(specs, step, round_, Phase.PLAIN_ROLLOUTS, self.rollout.max_prompt_tokens,
                                           times)
        plain, long_plain = memo["plain"]
        cap = fraction_count(self.rho_aug, len(new))
        all_hard = select_hard(plain, self.tau, len(plain))
        if "hard" not in memo:
            memo["hard"] = self.hard_prompts(pre_capped(all_hard, cap, self.pre_cap), cap, step, times)
        hard = memo["hard"]
        if "reformulated" not in memo:
            memo["reformulated"] = self._roll_out(hard.specs, step, round_, Phase.REFORMULATED_ROLLOUTS,
                                                  self.rollout.max_reformulated_prompt_tokens, times)
        reformulated, long_reform = memo["reformulated"]
        dropped = [f"{len(long)} of {len(long) + len(kept)} {what} prompts longer than rollout.{key}={limit}"
                   for long, kept, what, key, limit in (
                       (long_plain, plain, "plain", "max_prompt_tokens", self.rollout.max_prompt_tokens),
                       (long_reform, reformulated, "reformulated", "max_reformulated_prompt_tokens",
                        self.rollout.max_reformulated_prompt_tokens)) if long]
        return Round(plain, reformulated, len(new), len(replay), len(all_hard), hard.teacher_acc,
                     len(long_plain) + len(long_reform), hard.data, dropped)

    def _filter(self, rounds: list[Round], target: int, ds) -> tuple[list[str], list[str]]:
        """The ids of the groups the step does not train (uniform ones; with `surplus: drop`, the last
        round's informative groups beyond the target), and what the terminal should say."""
        groups = [g for r in rounds for g in r.groups]
        kept_before = sum(map(informative, (g for r in rounds[:-1] for g in r.groups)))
        last = in_question_order(rounds[-1].plain, rounds[-1].reformulated)
        surplus = surplus_groups(last, kept_before, target) if ds.surplus == "drop" else []
        filtered = [g.id for g in groups if not informative(g)] + [g.id for g in surplus]
        kept = len(groups) - len(filtered)
        if kept == 0:  # nothing has a gradient: train the step unfiltered (no update moves), as without the filter
            return [], [f"dynamic sampling: no informative group in {len(rounds)} rounds; training the step unfiltered"]
        if kept < target:
            return filtered, [f"dynamic sampling: {kept} of {target} informative groups after {len(rounds)} rounds "
                              f"(rollout.dynamic_sampling.max_rounds={ds.max_rounds}); training on them"]
        return filtered, []

    def _roll_out(self, specs: list[PromptSpec], step: int, round_: int, phase: Phase, max_prompt_tokens: int,
                  times: dict[str, float]) -> tuple[list[Group], list[PromptSpec]]:
        """The student's graded rollouts on `specs`, and the specs dropped for length."""
        if not specs:
            return [], []
        params = dataclasses.replace(self.sampling, seed=(step_seed(self.seed, step, phase) + ROUND_SEED * round_)
                                     % 2**31)
        with timed(times, "rollout"):
            groups, too_long = generate_groups(self.student, self.encode, specs, self.rollout.group_size, params,
                                               max_prompt_tokens)
        with timed(times, "reward"):
            self.grade([s for g in groups for s in g.samples])
        return groups, too_long


class UpdatePhase:
    """The training half of a step, on every trainer rank: the method's updates, then the new
    weights into the student engine (`NoEngine` on ranks that hold none). A co-located server
    (`student.release_memory`) gives its GPU memory to the trainer for the updates and takes its
    weights' memory back before the sync, its cache after it. Rollouts begun ahead (run.overlap=
    one_step) start before the updates and are waited for before the sync, so the engines hold one
    weight version for the whole of them (overlap.py)."""

    def __init__(self, objective: Objective, trainer: Trainer, engine: StudentEngine, *, overlap: str, seed: int,
                 colocated: bool = False, check_versions: bool = True, max_staleness: int = 1):
        self.objective, self.trainer, self.engine = objective, trainer, engine
        self.overlap, self.seed, self.colocated, self.check_versions = overlap, seed, colocated, check_versions
        self.max_staleness = max_staleness

    def __call__(self, r: Rollouts, source, times: dict[str, float]) -> dict[str, float]:
        source.ahead(r.step + 1)
        if self.colocated:
            self.engine.release_memory()
        accepted = accepted_versions(self.overlap, r.step, self.max_staleness) if self.check_versions else None
        with timed(times, "train"):
            stats = self.objective.update(self.trainer, r, accepted, random.Random(step_seed(self.seed, r.step,
                                                                                             Phase.MINIBATCHES)))
        source.wait(times)
        with timed(times, "sync"):
            if self.colocated:
                self.engine.resume_memory(("weights",))
            self.sync(version_name(r.step + 1))
            if self.colocated:
                self.engine.resume_memory(("kv_cache", "cuda_graph"))
        return stats

    def sync(self, version: str) -> None:
        """The trainer's weights into the engine as `version` (also at the start of a run, when a
        co-located server holds all its memory). Every rank drains the export (it gathers shards
        collectively); the rank holding the engine feeds it. A pool that lost a server during the
        update (fault tolerance) asks for it again: every rank exports again, and the pool's
        `min_servers` bounds how often that can happen."""
        again = True
        while again:
            export = self.trainer.export_hf()
            try:
                self.engine.update_weights(export, version)
                again = False
            except ServersChanged:
                for _ in export:  # the other ranks' export goes on to its end: so must ours
                    pass
                again = True
            again = any_rank(again)


class NoUpdate(UpdatePhase):
    """run.mode=rollout_only: no updates; the engines keep the weights of the first sync."""

    def __call__(self, r: Rollouts, source, times: dict[str, float]) -> dict[str, float]:
        return {}


class NoEngine:
    """The student engine of a rank that holds none: it drains the weight export, which every
    rank must run, and does nothing else."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: str) -> None:
        for _ in named_tensors:
            pass

    def release_memory(self) -> None:
        pass

    def resume_memory(self, tags: tuple[str, ...]) -> None:
        pass

    def sync_metrics(self) -> dict[str, float]:
        return {}


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
        "teacher_acc_hard": r.teacher_acc_hard,
        "reward_mean": sum(all_rewards) / len(all_rewards) if all_rewards else float("nan"),
        "tokens_generated": tokens_generated(r.groups),
        "dropped_long_prompts": r.dropped_long,
        # the share of samples with a gradient, rolled out and trained (they differ under dynamic sampling)
        "informative_fraction_before": informative_fraction(r.groups),
        "informative_fraction_after": informative_fraction(r.trained),
        **({"ds_rounds": r.rounds, "ds_groups_filtered": len(r.filtered),
            "ds_groups_surplus_dropped": sum(informative(g) for g in r.groups if g.id in r.filtered),
            "ds_extra_tokens": tokens_generated(r.groups) - r.first_round_tokens}
           if r.first_round_tokens is not None else {}),
        **r.grade_failures,
    }

