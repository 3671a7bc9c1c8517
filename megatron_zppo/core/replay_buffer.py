"""The prompt replay buffer: hard questions come back until the student gets half of them right.

It holds questions only (never responses), in admission order, so eviction at capacity drops the
oldest first. It owns its random generator, and `state_dict()` carries that generator's state,
so a resumed run draws the same replay batches as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from megatron_zppo.config_io import Range
from megatron_zppo.core.records import Group, PromptKind, Question

STATE_VERSION = 1


@dataclass(frozen=True)
class BufferConfig:
    enabled: bool = True  # hard questions come back until acc >= method.tau
    capacity: Annotated[int, Range(ge=1)] = 10_000  # questions held; the oldest are evicted first
    rho_replay: Annotated[float, Range(ge=0)] = 0.25  # replayed questions per step, as a fraction of N_new


@dataclass
class _Entry:
    question: Question
    admitted_accuracy: float


class ReplayBuffer:
    def __init__(self, capacity: int = 10_000, tau: float = 0.5, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity!r}")
        self.capacity = capacity
        self.tau = tau
        self._rng = random.Random(seed)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.admitted = 0
        self.graduated = 0
        self.evicted = 0
        self.admitted_at_zero = 0
        self.graduated_from_zero = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, question_id: str) -> bool:
        return question_id in self._entries

    def question_ids(self) -> list[str]:
        return list(self._entries)

    def sample(self, n: int, exclude: Iterable[str] = ()) -> list[Question]:
        """Up to `n` distinct questions, uniformly at random from those not in `exclude` (the
        step's new questions, which are rolled out anyway); fewer if the buffer holds fewer."""
        skip = set(exclude)
        candidates = [qid for qid in self._entries if qid not in skip]
        ids = self._rng.sample(candidates, min(max(n, 0), len(candidates)))
        return [self._entries[i].question for i in ids]

    def update(self, plain_groups: Iterable[Group], tau: float | None = None) -> None:
        """Admit hard questions, graduate buffered ones at acc >= tau, evict the oldest beyond capacity.

        Only plain groups count: accuracy under a BCQ/NCQ prompt says nothing about whether the
        student can answer the question alone.
        """
        tau = self.tau if tau is None else tau
        plain_groups = list(plain_groups)
        for g in plain_groups:  # all checked before any is applied: a refused update changes nothing
            if g.kind is not PromptKind.PLAIN:
                raise ValueError(f"replay buffer updates from plain groups only; group {g.id!r} is {g.kind.value}")
        for g in plain_groups:
            qid, acc = g.question.id, g.accuracy
            entry = self._entries.get(qid)
            if entry is not None and acc >= tau:
                del self._entries[qid]
                self.graduated += 1
                self.graduated_from_zero += entry.admitted_accuracy == 0.0
            elif entry is None and acc < tau:
                self._entries[qid] = _Entry(g.question, acc)
                self.admitted += 1
                self.admitted_at_zero += acc == 0.0
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evicted += 1

    def counters(self) -> dict[str, int]:
        return {
            "buffer_size": len(self),
            "buffer_admitted": self.admitted,
            "buffer_graduated": self.graduated,
            "buffer_evicted": self.evicted,
            "buffer_admitted_at_zero": self.admitted_at_zero,
            "buffer_graduated_from_zero": self.graduated_from_zero,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "capacity": self.capacity,
            "tau": self.tau,
            "rng": self._rng.getstate(),
            "entries": [(e.question.to_dict(), e.admitted_accuracy) for e in self._entries.values()],
            "counters": {
                "admitted": self.admitted,
                "graduated": self.graduated,
                "evicted": self.evicted,
                "admitted_at_zero": self.admitted_at_zero,
                "graduated_from_zero": self.graduated_from_zero,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version = state.get("version") if isinstance(state, dict) else None
        if version != STATE_VERSION:
            raise ValueError(
                f"replay buffer state has version {version!r}; this code reads version {STATE_VERSION}"
            )
        self.capacity = state["capacity"]
        self.tau = state["tau"]
        self._rng.setstate(_as_rng_state(state["rng"]))
        self._entries = OrderedDict()
        for qd, acc in state["entries"]:
            q = Question.from_dict(qd)
            self._entries[q.id] = _Entry(q, acc)
        for name, value in state["counters"].items():
            setattr(self, name, value)


def _as_rng_state(s):
    # JSON and some checkpoint formats turn the state's tuples into lists; random needs tuples.
    return (s[0], tuple(s[1]), s[2])
