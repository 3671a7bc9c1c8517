"""Rollout schedules at the paper's scale, simulated: how long a step waits on its longest answer.

The same work under three schedules:
- `none`: generate (plain rollouts; then, for the hard questions, the teacher's answers and the
  reformulated rollouts), train, sync the weights: each phase waits for the longest answer of the one
  before;
- `one_step` (run.overlap=one_step): step k+1's rollouts are generated while the trainer trains on
  step k, so a step takes the sync plus the longer of generation and training;
- `async` with staleness bound k (issue: run.overlap=async): the servers generate all the time; a
  group enters training once it is complete and its oldest token is at most k versions behind the
  trainer (else it is dropped, and counted); a hard question's reformulated group joins the queue
  when its plain group and the teacher's answers are done, and is a group of its own; at most
  (k + 1 + v) * B questions are admitted while the trainer is at version v (AReaL's rule); a weight
  sync pauses the servers and answers in flight go on after it (partial rollouts, none lost).

The cluster is modelled, not measured: `lanes` sequences decode at once over all student servers,
each at `tok_s` tokens per second; response lengths are log-normal around a median, capped; a hard
question (probability `hard`) waits for the teacher's answers (`teacher_group` of them, at
`teacher_tok_s` on the teacher's own servers) before its reformulated group joins the queue; the
trainer trains `train_tok_s` response tokens per second; a weight sync takes `sync_s`. Prompt
tokens, grading and the teacher's queueing are left out. The defaults are assumptions for a 9B
student on 64 H100 (docs/performance.md says which and why), not measurements: what the simulation
shows is the ratio between schedules, and how it moves with the length tail.

Run: python benchmarks/sim_schedules.py [--steps 40] [--sigma 1.0] ...
Last lines: async_k2_vs_none=..., async_k2_vs_one_step=... (trained tokens per second ratios)
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Cluster:
    questions: int = 384  # B: new questions per step (the paper's 384; 768 samples per mini-batch x 4)
    group: int = 8  # G_S rollouts per question
    teacher_group: int = 4  # G_T
    hard: float = 0.25  # share of questions that are hard and get a reformulated group
    lanes: int = 16 * 128  # sequences decoding at once over all student servers (16 servers x 128)
    tok_s: float = 25.0  # decode speed of one sequence in a full batch, tokens/s
    teacher_tok_s: float = 20.0
    train_tok_s: float = 100_000.0  # response tokens the 48 trainer ranks train per second
    sync_s: float = 20.0
    median: float = 2048.0
    sigma: float = 1.0  # log-normal spread: the length tail
    cap: int = 12288


@dataclass(frozen=True)
class Question:
    plain: tuple[int, ...]  # response lengths of its G_S plain rollouts
    teacher: tuple[int, ...]  # of the teacher's answers (empty: not hard)
    reformulated: tuple[int, ...]  # of its reformulated rollouts (empty: not hard)

    def tokens(self) -> int:
        return sum(self.plain) + sum(self.reformulated)


def draw_questions(c: Cluster, n: int, seed: int) -> list[Question]:
    rng = random.Random(seed)

    def lengths(k: int) -> tuple[int, ...]:
        return tuple(min(c.cap, max(1, round(rng.lognormvariate(math.log(c.median), c.sigma)))) for _ in range(k))

    out = []
    for _ in range(n):
        hard = rng.random() < c.hard
        out.append(Question(lengths(c.group), lengths(c.teacher_group) if hard else (),
                            lengths(c.group) if hard else ()))
    return out


def makespan(lengths: list[int], lanes: int, tok_s: float) -> float:
    """Seconds until the last of `lengths` is decoded on `lanes` lanes, each taking the next in turn."""
    free = [0.0] * min(lanes, max(1, len(lengths)))
    for n in lengths:
        heapq.heapreplace(free, free[0] + n / tok_s)
    return max(free)


def step_rollout_s(c: Cluster, qs: list[Question]) -> float:
    """One synchronous rollout phase: plain rollouts, the teacher on the hard ones, reformulated rollouts."""
    hard = [q for q in qs if q.teacher]
    plain = makespan([n for q in qs for n in q.plain], c.lanes, c.tok_s)
    teacher = max((max(q.teacher) / c.teacher_tok_s for q in hard), default=0.0)
    return plain + teacher + makespan([n for q in hard for n in q.reformulated], c.lanes, c.tok_s)


@dataclass
class Result:
    seconds: float
    trained_tokens: int
    generated_tokens: int
    idle: float  # share of lane-seconds with nothing to decode
    dropped: int = 0  # groups too stale to train on
    max_staleness: int = 0
    reformulated_trained: float = 1.0  # share of the trained questions' reformulated groups that were trained
    groups: int = 0  # groups of the questions taken for training, stale or not

    @property
    def tokens_per_s(self) -> float:
        return self.trained_tokens / self.seconds


def synchronous(c: Cluster, qs: list[Question], steps: int, overlap: bool) -> Result:
    """`none` (overlap False) and `one_step` (overlap True)."""
    wall = 0.0
    for k in range(steps):
        batch = qs[k * c.questions:(k + 1) * c.questions]
        rollout, train = step_rollout_s(c, batch), sum(q.tokens() for q in batch) / c.train_tok_s
        wall += c.sync_s + (max(rollout, train) if overlap else rollout + train)
    tokens = sum(q.tokens() for q in qs[:steps * c.questions])
    return Result(wall, tokens, tokens, 1 - tokens / c.tok_s / (c.lanes * wall))


def asynchronous(c: Cluster, qs: list[Question], steps: int, k: int) -> Result:
    """Event by event: sample completions, teacher answers, training ends and sync ends.

    The trainer takes B complete questions (a hard one is complete once its reformulated group is),
    in the order they completed, so at k = 0 (B admitted per version) it trains on the synchronous
    loop's questions at the loop's versions; only faster, since a hard question's teacher and second
    group start when its own plain group is done, not at the end of the phase.
    Staleness is per group, from the group's own oldest token: a reformulated group is new rollouts
    on a new prompt. A group too stale is left out of training (the buffer still sees a plain
    group's accuracy) and counted: counted from its plain group's start, every hard question
    would be, since its teacher and second group take several steps."""
    queue: deque[tuple[int, int]] = deque()  # (question, length) waiting for a lane
    running: list[tuple[float, int, int]] = []  # heap of (finish time, question, start version)
    events: list[tuple[float, int, str]] = []  # heap of (time, question or -1, kind)
    left = [len(q.plain) for q in qs]  # samples of the question's current group not yet done
    second = [False] * len(qs)  # its reformulated group is the current one
    oldest = [[math.inf, math.inf] for _ in qs]  # per group (plain, reformulated): its first token's version
    ready: deque[int] = deque()  # complete questions, in completion order
    version = admitted = trained = dropped = worst = trained_tokens = generated = busy_lanes = 0
    t, paused_until, lane_s, trainer_busy = 0.0, 0.0, 0.0, False
    reformulated = [0, 0]  # of the trained questions: reformulated groups, and those trained
    considered = 0
    while trained < steps:
        while admitted < min(len(qs), (k + 1 + version) * c.questions):  # AReaL's admission bound
            queue.extend((admitted, n) for n in qs[admitted].plain)
            admitted += 1
        while t >= paused_until and busy_lanes < c.lanes and queue:
            i, n = queue.popleft()
            heapq.heappush(running, (t + n / c.tok_s, i, version))
            busy_lanes += 1
            lane_s += n / c.tok_s
            generated += n
        if not trainer_busy and len(ready) >= c.questions:
            tokens = 0
            for i in (ready.popleft() for _ in range(c.questions)):
                for g, lengths in enumerate((qs[i].plain, qs[i].reformulated)):
                    if not lengths:
                        continue
                    reformulated[0] += g
                    considered += 1
                    if version - oldest[i][g] > k:
                        dropped += 1
                        continue
                    worst = max(worst, version - oldest[i][g])
                    tokens += sum(lengths)
                    reformulated[1] += g
            trained_tokens += tokens
            trainer_busy = True
            heapq.heappush(events, (t + tokens / c.train_tok_s, -1, "trained"))
        nxt = min(running[0][0] if running else math.inf, events[0][0] if events else math.inf)
        if nxt == math.inf:
            raise RuntimeError(f"async k={k}: nothing left to happen at t={t:.0f}s (too few questions drawn?)")
        t = nxt
        if running and running[0][0] == t:
            _, i, v = heapq.heappop(running)
            busy_lanes -= 1
            oldest[i][second[i]] = min(oldest[i][second[i]], v)
            left[i] -= 1
            if left[i] == 0 and qs[i].teacher and not second[i]:  # hard: the teacher answers first
                heapq.heappush(events, (t + max(qs[i].teacher) / c.teacher_tok_s, i, "teacher"))
            elif left[i] == 0:
                ready.append(i)
            continue
        _, i, kind = heapq.heappop(events)
        if kind == "teacher":  # the reformulated group joins the queue
            left[i], second[i] = len(qs[i].reformulated), True
            queue.extend((i, n) for n in qs[i].reformulated)
        elif kind == "trained":  # the weight sync pauses every lane; answers in flight go on after it
            running = [(f + c.sync_s, j, v) for f, j, v in running]
            heapq.heapify(running)
            paused_until = t + c.sync_s
            heapq.heappush(events, (paused_until, -1, "synced"))
        else:
            version += 1
            trained += 1
            trainer_busy = False
    return Result(t, trained_tokens, generated, 1 - lane_s / (c.lanes * t), dropped, worst,
                  reformulated[1] / max(reformulated[0], 1), considered)


def batches(c: Cluster, qs: list[Question], steps: int, k: int) -> Result:
    """run.overlap=async as built (stream.py): step j trains batch j (its B questions, in the order
    they were admitted) once all its groups are done; batch j is admitted when the trainer reaches
    version j - k; inside a batch the ZPPO stage runs as in the synchronous loop (the teacher once
    the batch's last plain answer is done, then the reformulated groups). The lanes are shared by
    the batches in flight, first come first served; a sync pauses them and answers in flight go on
    after it. Nothing is ever staler than k, so nothing is dropped."""
    queue: deque[tuple[int, int]] = deque()  # (batch, length) waiting for a lane
    running: list[tuple[float, int, int]] = []  # heap of (finish time, batch, start version)
    events: list[tuple[float, int, str]] = []  # heap of (time, batch or -1, kind)
    left: dict[int, int] = {}  # samples of the batch's current stage not yet done
    oldest: dict[int, int] = {}  # the batch's oldest start version
    reforming: set[int] = set()  # batches past their plain stage
    done: set[int] = set()
    version = admitted = trained = busy_lanes = generated = trained_tokens = worst = 0
    t, paused_until, lane_s, trainer_busy = 0.0, 0.0, 0.0, False

    def batch(j: int) -> list[Question]:
        return qs[j * c.questions:(j + 1) * c.questions]

    while trained < steps:
        while admitted <= version + k:
            left[admitted], oldest[admitted] = sum(len(q.plain) for q in batch(admitted)), version
            queue.extend((admitted, n) for q in batch(admitted) for n in q.plain)
            admitted += 1
        while t >= paused_until and busy_lanes < c.lanes and queue:
            j, n = queue.popleft()
            heapq.heappush(running, (t + n / c.tok_s, j, version))
            busy_lanes, lane_s, generated = busy_lanes + 1, lane_s + n / c.tok_s, generated + n
        if not trainer_busy and trained in done:
            tokens = sum(q.tokens() for q in batch(trained))
            worst, trained_tokens, trainer_busy = max(worst, version - oldest[trained]), trained_tokens + tokens, True
            heapq.heappush(events, (t + tokens / c.train_tok_s, -1, "trained"))
        t = min(running[0][0] if running else math.inf, events[0][0] if events else math.inf)
        if running and running[0][0] == t:
            _, j, _ = heapq.heappop(running)
            busy_lanes, left[j] = busy_lanes - 1, left[j] - 1
            hard = [q for q in batch(j) if q.teacher]
            if left[j] == 0 and hard and j not in reforming:  # the teacher, then the reformulated groups
                reforming.add(j)
                heapq.heappush(events, (t + max(max(q.teacher) for q in hard) / c.teacher_tok_s, j, "teacher"))
            elif left[j] == 0:
                done.add(j)
            continue
        _, j, kind = heapq.heappop(events)
        if kind == "teacher":
            left[j] = sum(len(q.reformulated) for q in batch(j))
            queue.extend((j, n) for q in batch(j) for n in q.reformulated)
        elif kind == "trained":
            running = [(f + c.sync_s, b, v) for f, b, v in running]
            heapq.heapify(running)
            paused_until = t + c.sync_s
            heapq.heappush(events, (paused_until, -1, "synced"))
        else:
            version, trained, trainer_busy = version + 1, trained + 1, False
    return Result(t, trained_tokens, generated, 1 - lane_s / (c.lanes * t), 0, worst)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    for f, v in Cluster.__dataclass_fields__.items():
        p.add_argument(f"--{f.replace('_', '-')}", type=type(v.default), default=v.default)
    a = p.parse_args(argv)
    c = Cluster(**{f: getattr(a, f) for f in Cluster.__dataclass_fields__})
    qs = draw_questions(c, (a.steps + 3) * c.questions, a.seed)
    runs = {"none": synchronous(c, qs, a.steps, False), "one_step": synchronous(c, qs, a.steps, True)}
    for k in (0, 1, 2):
        runs[f"async_k{k}"] = asynchronous(c, qs, a.steps, k)
    for k in (0, 1, 2):
        runs[f"batches_k{k}"] = batches(c, qs, a.steps, k)
    print(f"{c}\n{'schedule':10} {'s/step':>8} {'trained tok/s':>14} {'lane idle':>9} {'stale groups':>14} "
          f"{'max stale':>9} {'reformulated trained':>20}")
    for name, r in runs.items():
        stale = f"{r.dropped} of {r.groups}" if r.groups else "0"
        print(f"{name:10} {r.seconds / a.steps:8.1f} {r.tokens_per_s:14.0f} {r.idle:9.2f} {stale:>14} "
              f"{r.max_staleness:9d} {r.reformulated_trained:20.2f}")
    print(f"async_k2_vs_none={runs['async_k2'].tokens_per_s / runs['none'].tokens_per_s:.2f}")
    print(f"async_k2_vs_one_step={runs['async_k2'].tokens_per_s / runs['one_step'].tokens_per_s:.2f}")
    print(f"batches_k2_vs_none={runs['batches_k2'].tokens_per_s / runs['none'].tokens_per_s:.2f}")
    print(f"batches_k2_vs_one_step={runs['batches_k2'].tokens_per_s / runs['one_step'].tokens_per_s:.2f}")


if __name__ == "__main__":
    main()
