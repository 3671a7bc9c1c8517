"""Grading in worker processes, each grade under its own time limit, no worker outliving the run.

A grader is arbitrary code on arbitrary text (sympy on a huge expression, a user's module), so it
runs where it can be killed. Each worker is a small supervisor holding one grading process that
it forked after importing the graders: a grade that overruns its limit gets that process killed
(SIGKILL: it holds nothing to clean up) and a fresh fork in its place within milliseconds, while
the other workers go on, so W workers time out W grades at once. The limit counts from when a
ready worker takes the grade: starting workers (importing the graders) is not charged to it. A
grade that times out, raises or kills its process scores 0 and is counted (`stats`; the loop logs
the counts per step). A grader that returns anything but 0 or 1 is a bug in that grader and stops
the run with its name, the question and the value — in training and evaluation alike.

Workers are plain `python -m megatron_zppo.grader_pool` subprocesses speaking length-prefixed
pickles over their stdin/stdout (not multiprocessing: its spawn start re-imports the main script,
torch included, in every worker, and its resource tracker outlives a killed parent). Every process
dies with its parent (die_with_parent.py).
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_zppo.core.records import Question
from megatron_zppo.die_with_parent import die_with_parent
from megatron_zppo.rewards import GRADERS, GraderError, resolve_grader

JUDGE = "judge"  # free-form answers: graded by the teacher as an LLM judge, not in a worker
START_TIMEOUT_S = 120.0  # a worker that cannot even import the graders in this long is broken
BACKSTOP_S = 30.0  # a worker silent this long past a grade's limit is itself stuck: replaced
_HEADER = struct.Struct("<I")


@dataclass
class GradeStats:
    timeouts: int = 0  # over the time limit: the worker was killed
    errors: int = 0  # the grader raised
    crashes: int = 0  # the worker process died mid-grade
    first_problem: str = ""  # the first failure's description, for the terminal
    max_in_flight: int = 0  # most grades running at once (their deadlines run concurrently)

    def total(self) -> int:
        return self.timeouts + self.errors + self.crashes

    def since(self, before: GradeStats) -> dict[str, int]:
        return {"grader_timeouts": self.timeouts - before.timeouts, "grader_errors": self.errors - before.errors,
                "grader_crashes": self.crashes - before.crashes}


def _send(stream, obj) -> None:
    data = pickle.dumps(obj)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exactly(read, n: int) -> bytes | None:
    out = b""
    while len(out) < n:
        chunk = read(n - len(out))
        if not chunk:
            return None  # the other side is gone
        out += chunk
    return out


def _receive(read):
    header = _read_exactly(read, _HEADER.size)
    if header is None:
        return None
    body = _read_exactly(read, _HEADER.unpack(header)[0])
    return None if body is None else pickle.loads(body)


class _Worker:
    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "megatron_zppo.grader_pool", str(os.getpid())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env)
        self.started = time.monotonic()
        self.ready = False
        self.job: int | None = None  # the index being graded
        self.deadline = float("inf")

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def stop(self) -> None:
        """SIGKILL: a worker ignores SIGTERM (die_with_parent.py) and holds nothing to clean up; its
        grading process dies with it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


class GraderPool:
    """Grades batches in `workers` worker processes, each grade under `timeout_s`.

    `grader` names one of rewards.GRADERS or an importable `module:function`, or "auto": each
    question's metadata["grader"], else "math". `fractional` (evaluation only): a grade may also be
    any number in [0, 1] (a metric such as ANLS) or None (an evaluation rule that cannot decide,
    evaluation/rules.py); training rewards are always 0 or 1.
    """

    def __init__(self, grader: str = "auto", workers: int = 2, timeout_s: float = 10.0, fractional: bool = False):
        if grader not in ("auto", JUDGE):
            resolve_grader(grader)  # fail at start-up, not in a worker
        self.grader, self.n_workers, self.timeout_s = grader, workers, timeout_s
        self.fractional = fractional
        self.stats = GradeStats()
        self._env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    def wants_judge(self, q: Question) -> bool:
        return self.grader == JUDGE or (self.grader == "auto" and q.metadata.get("grader") == JUDGE)

    def _name(self, q: Question) -> str:
        name = self.grader if self.grader != "auto" else q.metadata.get("grader") or "math"
        if name not in GRADERS and ":" not in name:
            raise GraderError(f"question {q.id!r}: grader {name!r} unknown; expected one of {sorted(GRADERS)} "
                              "or 'module:function'")
        return name

    def grade(self, responses: Sequence[str], questions: Sequence[Question]) -> list[float]:
        with self._lock:  # run.overlap=async grades from several threads; the workers take one call at a time
            return self._grade(responses, questions)

    def _grade(self, responses: Sequence[str], questions: Sequence[Question]) -> list[float]:
        if len(responses) != len(questions):
            raise ValueError(f"{len(responses)} responses for {len(questions)} questions")
        # Images never reach a grader: they would only make every message large.
        jobs = [(self._name(q), r, dataclasses.replace(q, images=())) for r, q in zip(responses, questions)]
        scores = [0.0] * len(jobs)
        todo, busy = deque(range(len(jobs))), 0
        while todo or busy:
            self._fill()
            for w in self._workers:
                if w.ready and w.job is None and todo:
                    busy += self._dispatch(w, todo, jobs)
            now = time.monotonic()
            wake = min([w.deadline for w in self._workers] + [w.started + START_TIMEOUT_S for w in self._workers
                                                              if not w.ready])
            readable, _, _ = select.select(self._workers, [], [], max(0.0, wake - now))
            for w in readable:
                busy -= self._on_message(w, jobs, scores)
            for w in list(self._workers):
                busy -= self._on_overdue(w, jobs)
        return scores

    def _fill(self) -> None:
        while len(self._workers) < self.n_workers:
            self._workers.append(_Worker(self._env))

    def _dispatch(self, w: _Worker, todo: deque, jobs) -> int:
        i = todo.popleft()
        try:
            _send(w.proc.stdin, (i, *jobs[i], self.timeout_s))
        except (BrokenPipeError, OSError):  # it died while idle: the grade was never started
            todo.appendleft(i)
            self._drop(w)
            return 0
        w.job, w.deadline = i, time.monotonic() + self.timeout_s + BACKSTOP_S
        self.stats.max_in_flight = max(self.stats.max_in_flight, sum(x.job is not None for x in self._workers))
        return 1

    def _on_message(self, w: _Worker, jobs, scores: list[float]) -> int:
        """Handle one message of `w`; returns 1 if it settled a grade."""
        msg = _receive(w.proc.stdout.read)
        if msg is None:  # the worker died
            if w.job is None:
                self._drop(w, starting=not w.ready)
                return 0
            self._drop(w)
            self._fail(w.job, jobs, "crashes", f"the grader's worker died (exit code {w.proc.returncode})")
            return 1
        if msg == "ready":
            w.ready = True
            return 0
        i, status, value = msg
        w.job, w.deadline = None, float("inf")
        if status == "ok":
            scores[i] = self._checked(value, jobs[i])
        elif status == "timeout":
            self._fail(i, jobs, "timeouts", f"the grade took longer than reward.timeout_s={self.timeout_s:g} s")
        elif status == "crash":
            self._fail(i, jobs, "crashes", f"the grading process died ({value})")
        else:
            self._fail(i, jobs, "errors", f"the grader raised {value}")
        return 1

    def _on_overdue(self, w: _Worker, jobs) -> int:
        now = time.monotonic()
        if w.job is not None and now >= w.deadline:
            self._fail(w.job, jobs, "timeouts", f"the grader's worker stopped answering ({BACKSTOP_S:g} s past "
                                                f"reward.timeout_s={self.timeout_s:g} s)")
            self._drop(w)
            return 1
        if not w.ready and now >= w.started + START_TIMEOUT_S:
            w.stop()
            raise GraderError(f"a grader worker did not start within {START_TIMEOUT_S:g} s (its errors are above)")
        return 0

    def _checked(self, value, job) -> float:
        name, _, q = job
        if isinstance(value, numbers.Real) and float(value) in (0.0, 1.0):
            return float(value)
        if self.fractional and (value is None or isinstance(value, numbers.Real) and 0.0 <= float(value) <= 1.0):
            return value if value is None else float(value)
        expected = "a number in [0, 1] or None" if self.fractional else "0 or 1"
        raise GraderError(f"grader {name!r} returned {value!r} for question {q.id!r}; a grader must return {expected}")

    def _fail(self, i: int, jobs, kind: str, why: str) -> None:
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)
        if not self.stats.first_problem:
            self.stats.first_problem = f"grader {jobs[i][0]!r} on question {jobs[i][2].id!r}: {why}"

    def _drop(self, w: _Worker, starting: bool = False) -> None:
        w.stop()
        self._workers.remove(w)
        if starting:
            raise GraderError(f"a grader worker exited while starting (exit code {w.proc.returncode}; its "
                              "errors are above)")

    def close(self) -> None:
        for w in self._workers:
            w.stop()
        self._workers = []

    def __enter__(self) -> GraderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Grader:
    """The forked process that runs graders, one grade at a time, for its supervisor."""

    def __init__(self):
        jobs_r, self._jobs = os.pipe()
        self._results, results_w = os.pipe()
        supervisor = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:  # the child: grade until the pipe closes
            os.close(self._jobs)
            os.close(self._results)
            die_with_parent(supervisor)
            read, out = os.fdopen(jobs_r, "rb", buffering=0).read, os.fdopen(results_w, "wb", buffering=0)
            while (job := _receive(read)) is not None:
                name, response, question = job
                try:
                    reply = ("ok", resolve_grader(name)(response, question))
                    pickle.dumps(reply)
                except Exception as e:  # noqa: BLE001 - a grader's failure on odd input is that grade's
                    reply = ("error", f"{type(e).__name__}: {e}"[:300])
                _send(out, reply)
            os._exit(0)
        os.close(jobs_r)
        os.close(results_w)
        self._out = os.fdopen(self._jobs, "wb", buffering=0)
        self._read = os.fdopen(self._results, "rb", buffering=0)

    def grade(self, job, timeout_s: float) -> tuple[str, object]:
        try:
            _send(self._out, job)
        except BrokenPipeError:
            return "crash", self._reap()
        ready, _, _ = select.select([self._read], [], [], timeout_s)
        if not ready:
            self.stop()
            return "timeout", None
        reply = _receive(self._read.read)
        return reply if reply is not None else ("crash", self._reap())

    def _reap(self) -> str:
        _, status = os.waitpid(self.pid, 0)
        self._close()
        code = os.waitstatus_to_exitcode(status)
        return f"exit code {code}" if code >= 0 else f"killed by signal {-code}"

    def stop(self) -> None:
        """SIGKILL at once: this process is a fork made to run graders and holds nothing to clean up,
        and a SIGTERM grace would add itself to every timed-out grade of a grader that ignores or
        handles SIGTERM: limit + grace per grade instead of the limit."""
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self._close()

    def _close(self) -> None:
        self._out.close()
        self._read.close()


def _serve(parent: int) -> None:
    """A worker: imports the graders once, then forks the process that runs them, again after
    every grade that had to be stopped or that killed it."""
    die_with_parent(parent)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # a grader's prints go to stderr, never into the protocol
    read = sys.stdin.buffer.raw.read
    import mathruler.grader  # noqa: F401 - the default graders' imports, paid once, before "ready"
    import math_verify  # noqa: F401

    grader = _Grader()
    _send(out, "ready")
    while (msg := _receive(read)) is not None:
        i, name, response, question, timeout_s = msg
        status, value = grader.grade((name, response, question), timeout_s)
        if status in ("timeout", "crash"):
            grader = _Grader()
        _send(out, (i, status, value))


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
