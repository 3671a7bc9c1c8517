"""Time one ZPPO stage + advantages + buffer update at the paper's batch scale.

Per step: 384 new + 96 replayed questions, 8 student rollouts each (responses held as token-id
arrays of realistic length), 4 teacher rollouts per pre-capped hard question, a buffer of 10,000.
Timed: hard selection, BCQ/NCQ planning and rendering (compression is an engine call, so it is
replaced by the identity here), advantages for plain + reformulated groups, the buffer update and
the replay draw. Rollout generation itself is not part of the stage and is not timed.

Run: python benchmarks/bench_zppo_stage.py [--steps 20]
Last line: zppo_stage_median_ms=<number>
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time

import numpy as np
import torch

from megatron_zppo.core.advantages import assign_advantages
from megatron_zppo.core.prompts import PromptTemplates
from megatron_zppo.core.records import STUDENT, TEACHER, Group, PromptKind, Question, Sample
from megatron_zppo.core.reformulate import ZppoConfig, fraction_count, plan_reformulations, render, select_hard
from megatron_zppo.core.replay_buffer import ReplayBuffer

N_NEW, RHO_REPLAY, G_S, G_T = 384, 0.25, 8, 4
TAU, RHO_AUG = 0.5, 0.25  # method.tau, method.rho_aug: the paper's


def _response(rng: np.random.Generator, correct: bool, by: str, qid: str, gid: str, kind=PromptKind.PLAIN):
    n = int(rng.integers(500, 4000))  # tokens; the paper allows up to 12,288
    text = "step " * (n // 2) + (r"\boxed{42}" if correct else rf"\boxed{{{rng.integers(100)}}}")
    return Sample(qid, gid, kind, np.zeros(300, np.int32), rng.integers(0, 150_000, n, dtype=np.int32), text,
                  np.full(n, -0.7, np.float32), sampled_by=by, reward=float(correct))


def _groups(rng, questions, kind=PromptKind.PLAIN, suffix="plain"):
    out = []
    for q in questions:
        p = float(rng.choice([0.0, 0.1, 0.3, 0.6, 0.9]))  # a mix of all-fail, hard and easy questions
        gid = f"{q.id}:{suffix}"
        out.append(Group(gid, q, kind, q.text, [_response(rng, rng.random() < p, STUDENT, q.id, gid, kind)
                                                for _ in range(G_S)]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    templates, cfg = PromptTemplates.load(), ZppoConfig()
    buf = ReplayBuffer(capacity=10_000, seed=0)
    for i in range(10_000):  # fill the buffer to capacity without building rollouts
        buf.update([Group(f"b{i}", Question(f"old{i}", "q " * 60, "42"), PromptKind.PLAIN, "",
                          [Sample(f"old{i}", f"b{i}", PromptKind.PLAIN, [0], [0], "", [0.0], reward=0.0)])])
    times = []
    for step in range(args.steps):
        new = [Question(f"s{step}n{i}", "Solve: " + "x " * 150, "42") for i in range(N_NEW)]
        replay_q = buf.sample(fraction_count(RHO_REPLAY, N_NEW))
        plain = _groups(rng, new + replay_q)
        cap = fraction_count(RHO_AUG, N_NEW)
        hard_ids = {g.question.id for g in select_hard(plain, TAU, cap)}
        teacher = {qid: [_response(rng, rng.random() < 0.6, TEACHER, qid, f"{qid}:t") for _ in range(G_T)]
                   for qid in hard_ids}
        # Reformulated groups' rollouts come from the engine; pre-build them so only the stage is timed.
        reform_rollouts = _groups(rng, [g.question for g in plain[: 2 * cap]], PromptKind.BCQ, "r")

        t0 = time.perf_counter()
        hard = select_hard(plain, TAU, cap)
        plans = plan_reformulations(hard, teacher, cap, cfg, random.Random(step))
        prompts = render(plans, templates, compress=lambda texts: texts)
        reform = [Group(p.group_id, p.question, p.kind, text,
                        [Sample(p.question.id, p.group_id, p.kind, s.prompt_ids, s.response_ids, s.response_text,
                                s.logprobs, reward=s.reward) for s in r.samples])
                  for p, text, r in zip(plans, prompts, reform_rollouts)]
        assign_advantages(plain + reform, "excluding_zero")
        buf.update(plain)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times) * 1e3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"steps={args.steps} groups/step={len(plain) + len(reform)} hard={len(hard)} reformulated={len(reform)} "
          f"buffer={len(buf)}")
    print(f"median={med:.1f} ms  p90={sorted(times)[int(0.9 * len(times))] * 1e3:.1f} ms  peak_rss={peak:.0f} MiB "
          "(process, including the synthetic rollouts)")
    print(f"zppo_stage_median_ms={med:.2f}")


if __name__ == "__main__":
    main()
