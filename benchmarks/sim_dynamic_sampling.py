"""Dynamic sampling after reformulation at the paper's scale, simulated: what the filter buys
(the share of trained samples with a gradient) and what its further rounds cost in wall-clock.

Each question has a pass rate drawn from Beta(a, b) (U-shaped by default: many questions the
student always or never solves); its G_S plain rollouts succeed at that rate. A plain group below
tau = 0.5 is hard; the rho_aug x draw hardest get BCQ (when one of the teacher's G_T answers is right,
each right with probability `teacher_acc`) and NCQ prompts, counted against one cap as the method
does, whose G_S rollouts succeed at `bcq_acc` and `ncq_acc` (assumptions from the paper's BCQ
premise for its smallest student). A round costs what one synchronous rollout phase costs in
benchmarks/sim_schedules.py (plain rollouts, the teacher, the reformulated rollouts, each waiting
for its longest answer on the cluster's lanes); the trainer trains the trained groups' tokens.
Further rounds are sized by the rule the loop uses (core/dynamic_sampling.next_round_size).
`none` trains every group of one draw; `ds` runs rounds until it holds the target (the draw's size
in groups, rollout.dynamic_sampling.target_groups = 0) or max_rounds, then trains the informative groups.

Run: python benchmarks/sim_dynamic_sampling.py [--steps 20] [--beta-a 0.5 --beta-b 0.5] ...
Last lines: informative_fraction_before=, informative_fraction_after=, ds_step_time_vs_none=,
ds_gradient_tokens_per_s_vs_none= (tokens of trained samples with a gradient per second of wall-clock)
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from megatron_zppo.core.dynamic_sampling import next_round_size

_spec = importlib.util.spec_from_file_location("sim_schedules", Path(__file__).with_name("sim_schedules.py"))
schedules = importlib.util.module_from_spec(_spec)
sys.modules["sim_schedules"] = schedules
_spec.loader.exec_module(schedules)
Cluster, makespan = schedules.Cluster, schedules.makespan


@dataclass(frozen=True)
class World:
    beta_a: float = 0.5  # question pass rates ~ Beta(a, b)
    beta_b: float = 0.5
    rho_aug: float = 0.25
    teacher_acc: float = 0.7
    bcq_acc: float = 0.69  # the paper's 0.8B student on BCQ prompts of hard questions
    ncq_acc: float = 0.10
    max_rounds: int = 4
    margin: float = 1.25


@dataclass
class Group:
    right: int
    lengths: list[int]

    @property
    def informative(self) -> bool:
        return 0 < self.right < len(self.lengths)


def one_round(c: Cluster, w: World, n: int, rng: random.Random) -> tuple[list[Group], float]:
    """`n` questions drawn, rolled out, reformulated and rolled out again: their groups and the seconds it took."""
    def lengths(k):
        return [min(c.cap, max(1, round(rng.lognormvariate(math.log(c.median), c.sigma)))) for _ in range(k)]

    def group(p):
        return Group(sum(rng.random() < p for _ in range(c.group)), lengths(c.group))

    plain = [group(rng.betavariate(w.beta_a, w.beta_b)) for _ in range(n)]
    hard = sorted((g for g in plain if g.right / c.group < 0.5 and g.right < c.group), key=lambda g: g.right)
    cap, reform, teacher_s = math.floor(w.rho_aug * n + 0.5), [], 0.0
    for _ in hard:
        if len(reform) >= cap:
            break
        teacher = lengths(c.teacher_group)
        teacher_s = max(teacher_s, max(teacher) / c.teacher_tok_s)
        if any(rng.random() < w.teacher_acc for _ in teacher):
            reform.append(group(w.bcq_acc))
        if len(reform) < cap:
            reform.append(group(w.ncq_acc))
    seconds = (makespan([n for g in plain for n in g.lengths], c.lanes, c.tok_s) + teacher_s
               + makespan([n for g in reform for n in g.lengths], c.lanes, c.tok_s))
    return plain + reform, seconds


def step(c: Cluster, w: World, ds: bool, rng: random.Random) -> dict[str, float]:
    groups, seconds = one_round(c, w, c.questions, rng)
    rounds, drawn, target = 1, c.questions, c.questions
    kept = sum(g.informative for g in groups)
    while ds and kept < target and rounds < w.max_rounds:
        n = next_round_size(target - kept, kept, drawn, c.questions, w.margin)
        more, s = one_round(c, w, n, rng)
        groups, seconds, rounds, drawn = groups + more, seconds + s, rounds + 1, drawn + n
        kept += sum(g.informative for g in more)
    trained = [g for g in groups if g.informative or not ds]
    tokens = lambda gs: sum(sum(g.lengths) for g in gs)  # noqa: E731
    seconds += tokens(trained) / c.train_tok_s + c.sync_s
    return {"seconds": seconds, "rounds": rounds, "generated": tokens(groups), "trained": tokens(trained),
            "gradient": tokens(g for g in trained if g.informative),
            "samples": sum(len(g.lengths) for g in groups), "trained_samples": sum(len(g.lengths) for g in trained),
            "informative_samples": sum(len(g.lengths) for g in groups if g.informative)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    for f in fields(Cluster) + fields(World):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    a = p.parse_args(argv)
    c = Cluster(**{f.name: getattr(a, f.name) for f in fields(Cluster)})
    w = World(**{f.name: getattr(a, f.name) for f in fields(World)})
    runs = {}
    for name, ds in (("none", False), ("ds", True)):
        rng = random.Random(a.seed)
        steps = [step(c, w, ds, rng) for _ in range(a.steps)]
        runs[name] = {k: sum(s[k] for s in steps) / a.steps for k in steps[0]}
    print(f"{c}\n{w}\n{'':5} {'s/step':>7} {'rounds':>6} {'generated tok':>13} {'trained tok':>11} "
          f"{'with gradient':>13} {'gradient tok/s':>14}")
    for name, r in runs.items():
        print(f"{name:5} {r['seconds']:7.0f} {r['rounds']:6.2f} {r['generated']:13.0f} {r['trained']:11.0f} "
              f"{r['gradient']:13.0f} {r['gradient'] / r['seconds']:14.0f}")
    none, ds = runs["none"], runs["ds"]
    print(f"informative_fraction_before={none['informative_samples'] / none['samples']:.3f}")
    print(f"informative_fraction_after={ds['informative_samples'] / ds['trained_samples']:.3f}")
    print(f"ds_step_time_vs_none={ds['seconds'] / none['seconds']:.2f}")
    print(f"ds_gradient_tokens_per_s_vs_none={(ds['gradient'] / ds['seconds']) / (none['gradient'] / none['seconds']):.2f}")


if __name__ == "__main__":
    main()
