"""run.overlap=async: the servers generate all the time, up to run.max_staleness (k) steps ahead.

Each step's rollouts are one *batch*: the step's questions (drawn as the synchronous loop draws
them), their plain rollouts, the ZPPO stage (hard selection, the teacher, BCQ/NCQ) and the
reformulated rollouts: loop.RolloutPhase.roll_round, unchanged, in a thread of its own. While the
trainer is at version v (it trains step v), batches v .. v+k are in flight: admission is bounded
as AReaL bounds it (at most (k + 1 + v) batches ever admitted), so no more work is in flight than
can be trained within the bound. Step v trains batch v once all its groups are done:

    take(v): open the gate; admit batches up to v+k; wait for batch v
    -> train on it while batches v+1 .. v+k go on generating
    -> join: pause (abort our requests in flight, keep their partial responses) -> sync v+1 -> take(v+1) ...

A generation running at a sync is continued with the new weights (rollout/partial.py): every token
keeps the version that sampled it and its log-prob. Batch v was admitted while the trainer was at
v-k or later, so its oldest token is at most k versions behind the trainer that trains on it: the
bound holds by construction, nothing is ever too stale, and nothing is dropped. The trainer still
checks every sample (loop.UpdatePhase: a bug would stop the run, not train on it).

The step still waits for its batch's longest answer, but that answer has had up to k + 1 steps
to be generated, while the servers were never idle. Batches are trained in the order they were
admitted, never in the order they finish: a run is the same whatever the timing, as far as the
engines are (its tokens are, where the engine's are; which weights sampled each token is not).

At a checkpoint (after the sync, the gate closed) every batch in flight has either finished or is
waiting for the gate: its questions, the stages it completed (RolloutPhase.roll_round's memo) and
the partial generations go into the checkpoint, and a resumed run goes on from exactly there.
With k = 0 only the step's own batch is ever in flight: the synchronous loop.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from megatron_zppo.core.records import Question
from megatron_zppo.errors import RunError
from megatron_zppo.loop import Round, RolloutPhase, Rollouts
from megatron_zppo.overlap import _WORKING
from megatron_zppo.rollout.partial import PausableStudent


@dataclass
class Batch:
    """One step's rollouts in the making."""

    step: int
    new: list[Question]
    replay: list[Question]
    memo: dict[str, Any] = field(default_factory=dict)  # the stages done (RolloutPhase.roll_round)
    times: dict[str, float] = field(default_factory=dict)
    round: Round | None = None
    error: BaseException | None = None
    thread: int | None = None  # the ident of the thread making it

    @property
    def finished(self) -> bool:
        return self.round is not None or self.error is not None


class AsyncFeed:
    """Rank 0's source of rollouts under run.overlap=async (the interface of overlap.RolloutFeed)."""

    def __init__(self, phase: RolloutPhase, max_staleness: int, timeout_s: float, decode, log=print):
        self.student = PausableStudent(phase.student, decode, timeout_s)
        self.student.pause()  # closed until the first take: the engines get the run's weights first
        self.base, self.phase = phase, dataclasses.replace(phase, student=self.student)
        self.k, self.timeout_s, self.log = max_staleness, timeout_s, log
        self.batches: dict[int, Batch] = {}
        self.admitted: int | None = None  # the next batch to admit
        self._cond = threading.Condition()
        self._jobs: queue.Queue = queue.Queue()
        self._graded = dataclasses.replace(phase.graders.stats)
        # k + 1 threads for the run (grader workers die with the thread that started them: die_with_parent.py)
        for i in range(max_staleness + 1):
            threading.Thread(target=self._serve, daemon=True, name=f"rollout-batch-{i}").start()

    def take(self, step: int) -> Rollouts:
        self.student.resume()
        self._admit(step)
        b, t0 = self.batches[step], time.perf_counter()
        with self._cond:
            finished = self._cond.wait_for(lambda: b.finished, timeout=self.timeout_s)
        if not finished:
            raise RunError(f"run.overlap=async: the rollouts of step {step} did not finish within "
                           f"run.overlap_timeout_s={self.timeout_s:g} s of being needed (a stalled engine or grader?)")
        if b.error is not None:
            b.error.add_note(f"(raised while making step {step}'s rollouts, run.overlap=async)")
            raise b.error
        del self.batches[step]
        failures, self._graded = self.phase.graders.stats.since(self._graded), dataclasses.replace(
            self.phase.graders.stats)
        return self.phase.assemble(step, [b.round], {**b.times, "stream_wait": time.perf_counter() - t0}, failures)

    def _admit(self, step: int) -> None:
        """Batches up to step + k, drawn in order on this thread (the data stream and the buffer are
        drawn from nowhere else); a replay is never a question already in flight."""
        if self.admitted is None:
            self.admitted = step
        while self.admitted <= step + self.k:
            in_flight = {q.id for b in self.batches.values() for q in b.new + b.replay}
            b = Batch(self.admitted, *self.base.draw(self.base.rollout.n_new, in_flight))
            self.batches[b.step] = b
            self._jobs.put(b)
            self.admitted += 1

    def _serve(self) -> None:
        while True:
            b = self._jobs.get()
            b.thread = threading.get_ident()
            _WORKING.add(id(b))
            try:
                r, err = self.phase.roll_round(b.step, 0, b.new, b.replay, b.times, b.memo), None
            except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
                r, err = None, e
            finally:
                _WORKING.discard(id(b))
            with self._cond:
                b.round, b.error = r, err
                self._cond.notify_all()

    def start(self, step: int) -> None:
        """Nothing: generation never stopped (the next batch was admitted at the last take)."""

    def join(self, times: dict[str, float] | None = None) -> None:
        """Before the weight sync: the servers stop, the generations in flight are kept as partials."""
        t0 = time.perf_counter()
        self.student.pause()
        if times is not None:
            times["overlap_wait"] = time.perf_counter() - t0

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The batches in flight and the partial generations, once every batch has finished or waits
        for the gate (the sync has closed it: nothing moves until the next take)."""
        deadline = time.monotonic() + self.timeout_s
        while not all(b.finished or b.thread in self.student.waiting for b in self.batches.values()):
            if time.monotonic() > deadline:
                raise RunError(f"run.overlap=async: the batches in flight did not come to rest within "
                               f"run.overlap_timeout_s={self.timeout_s:g} s for the checkpoint")
            time.sleep(0.01)
        batches = [dataclasses.replace(b, thread=None) for b in self.batches.values()]
        return {"overlap": "async", "batches": batches, "admitted": self.admitted, "parked": dict(self.student.parked)}

    def load_state_dict(self, state: dict[str, Any] | None, step: int) -> None:
        state = state or {}
        if state.get("in_flight") is not None:
            self.log(f"resuming with run.overlap=async from a one_step checkpoint: its rollouts for step {step} are "
                     "discarded and made again; the questions drawn for them are not drawn again")
        if not state.get("batches"):
            return
        if state["batches"][0].step != step:
            raise RunError(f"checkpoint holds rollouts in flight from step {state['batches'][0].step}, but resumes at "
                           f"step {step}")
        if len(state["batches"]) > self.k + 1:
            raise RunError(f"checkpoint holds {len(state['batches'])} batches in flight, more than "
                           f"run.max_staleness={self.k} allows ({self.k + 1}): resume with run.max_staleness >= "
                           f"{len(state['batches']) - 1}")
        self.admitted = state["admitted"]
        self.student.parked.update(state["parked"])
        for b in state["batches"]:
            self.batches[b.step] = b
            if not b.finished:
                self._jobs.put(b)
