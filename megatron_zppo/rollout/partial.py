"""Generations that survive a weight sync (run.overlap=async, stream.py).

The stream's batches generate through `PausableStudent`, the student engine behind a gate. Before
a weight sync, `pause` closes the gate and aborts the requests in flight (every request on the
student's servers: they serve this run only); the server answers each with its partial response
(SGLang's `finish_reason: abort`, asked for, so not a loss: sglang_engine.SGLangEngine.abort_all).
After the sync, `resume` opens the gate and each unfinished generation is sent again as its prompt
followed by the tokens generated so far, with what is left of its budget, so the new weights
continue it. A generation so keeps every token, with the
version that sampled it (`Generation.version_spans`) and that version's log-prob: the behaviour
policy the trainer's importance weights divide by.

Re-sending costs a prefill of prompt + partial response per generation in flight at a sync (the
decode, which dominates, is never repeated). SGLang's `pause_generation` in `in_place` mode would
keep the requests on the server (SGLang 0.5.23 reports where the version changed in a response,
`meta_info.weight_versions`), but a request kept there cannot go into the run's checkpoint, and a
server that can only abort (a router, an older SGLang) would lose it.

An engine without `abort_all` (the in-process engine) finishes the calls in flight before the sync:
nothing is partial, and the sync waits for them.

The partial generations are state (`parked`, by request id and sample): a checkpoint written while
the stream is paused holds them, and a resumed run continues them as the uninterrupted run does.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from megatron_zppo.errors import RunError
from megatron_zppo.rollout.engine import GenerateRequest, Generation, SamplingParams

ABORT_AGAIN_S = 1.0  # a request still in flight this long after its abort is aborted again (see pause)


@dataclass
class Partial:
    """One generation, as far as it got: its tokens, their log-probs and (version, tokens) runs."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    spans: list[tuple[str, int]] = field(default_factory=list)
    text: str = ""  # the server's, of the first request's tokens
    requests: int = 0  # that returned tokens
    version: str = ""  # of the first request that returned (its first token's, if any)
    finish: str | None = None  # None: not finished

    def extend(self, g: Generation) -> None:
        if g.response_ids:
            if self.spans and self.spans[-1][0] == g.weight_version:
                self.spans[-1] = (g.weight_version, self.spans[-1][1] + len(g.response_ids))
            else:
                self.spans.append((g.weight_version, len(g.response_ids)))
            self.requests += 1
        self.text = g.text if not self.ids else self.text
        self.version = self.version or g.weight_version
        self.ids += list(g.response_ids)
        self.logprobs += list(g.logprobs)
        self.finish = None if g.finish_reason == "abort" else g.finish_reason

    def generation(self, decode: Callable[[list[int]], str]) -> Generation:
        """The whole generation; its text decoded again when several requests made it (decoding the
        pieces apart can differ at their seams)."""
        return Generation(self.ids, self.logprobs, self.text if self.requests <= 1 else decode(self.ids),
                          self.finish or "length", self.spans[0][0] if self.spans else self.version,
                          tuple(self.spans) if len(self.spans) > 1 else ())


class PausableStudent:
    """The student engine as the stream's batches see it; everything else is the engine's own."""

    def __init__(self, engine, decode: Callable[[list[int]], str], timeout_s: float):
        self.engine, self.decode, self.timeout_s = engine, decode, timeout_s
        self.parked: dict[tuple[str, int], Partial] = {}  # (request id, sample) -> its generation so far
        self._open = threading.Event()
        self._open.set()
        self._cond = threading.Condition()
        self._calls = 0  # engine calls in flight
        self.waiting: set[int] = set()  # idents of the threads waiting for the gate

    def __getattr__(self, name):  # weight_version, stats, score, ...: the engine's
        return getattr(self.engine, name)

    def generate(self, requests: Sequence[GenerateRequest], params: SamplingParams) -> list[list[Generation]]:
        keys = [(r.request_id, s) for r in requests for s in range(r.n)]
        if len(set(keys)) != len(keys) or not all(r.request_id for r in requests):
            raise ValueError("a paused generation is found again by its request id: every request needs its own")
        with self._cond:
            for k in keys:
                self.parked.setdefault(k, Partial())  # a resumed run's partials are already there
        try:
            while calls := self._continuations(requests, params):
                if not self._enter():
                    continue
                try:
                    gens = self.engine.generate([req for req, _ in calls], params)
                finally:
                    self._leave()
                for (req, targets), gs in zip(calls, gens, strict=True):
                    for key, g in zip(targets, gs, strict=True):
                        self.parked[key].extend(g)
            return [[self.parked[(r.request_id, s)].generation(self.decode) for s in range(r.n)] for r in requests]
        finally:
            with self._cond:
                for k in keys:
                    self.parked.pop(k, None)

    def _continuations(self, requests, params) -> list[tuple[GenerateRequest, list[tuple[str, int]]]]:
        """What is left to generate, as requests (with fresh ids: a server may still hold the old one)
        and the generations each one continues. A request none of whose samples has started goes as it is."""
        out = []
        for r in requests:
            parts = [self.parked[(r.request_id, s)] for s in range(r.n)]
            for p in parts:
                if p.finish is None and len(p.ids) >= params.max_new_tokens:
                    p.finish = "length"
            todo = [s for s, p in enumerate(parts) if p.finish is None]
            if not todo:
                continue
            rid = f"{r.request_id}@{uuid.uuid4().hex[:12]}"
            if len(todo) == r.n and not any(p.ids for p in parts):
                out.append((GenerateRequest(r.prompt_ids, r.n, r.images, rid, r.videos),
                            [(r.request_id, s) for s in todo]))
                continue
            for s in todo:
                p = parts[s]
                out.append((GenerateRequest(list(r.prompt_ids) + p.ids, 1, r.images, f"{rid}.{s}", r.videos,
                                            max_new_tokens=params.max_new_tokens - len(p.ids)),
                            [(r.request_id, s)]))
        return out

    def _enter(self) -> bool:
        """Register a call, or wait for the gate (False: it was closed; look again)."""
        with self._cond:
            if self._open.is_set():
                self._calls += 1
                return True
            self.waiting.add(threading.get_ident())
            self._cond.notify_all()
        try:
            self._open.wait()
        finally:
            with self._cond:
                self.waiting.discard(threading.get_ident())
        return False

    def _leave(self) -> None:
        with self._cond:
            self._calls -= 1
            self._cond.notify_all()

    def pause(self) -> None:
        """Close the gate, abort the requests in flight, and wait until every call has returned with
        its partials. A request the server had not yet taken when the abort came runs on: the abort
        is sent again every ABORT_AGAIN_S (an engine without abort: the calls finish)."""
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            self._open.clear()
        abort = getattr(self.engine, "abort_all", None)
        while True:
            with self._cond:
                calls = self._calls
            if not calls:
                return
            if abort is not None:
                abort()
            with self._cond:
                self._cond.wait_for(lambda: not self._calls, timeout=ABORT_AGAIN_S)
            if time.monotonic() > deadline:
                raise RunError(f"run.overlap=async: {calls} generate call(s) still running "
                               f"run.overlap_timeout_s={self.timeout_s:g} s after the pause for the weight sync")

    def resume(self) -> None:
        self._open.set()
