"""The prompt replay buffer: hard questions come back until the student gets half of them right.

It holds questions only (never responses), in admission order, so eviction at capacity drops the
oldest first. It owns its random generator, and `state_dict()` carries that generator's state,
so a resumed run draws the same replay batches as an uninterrupted one.

It also follows each admitted question to its fate (graduated, evicted, still held) by its
accuracy at admission and by how often it was re-sampled: the paper's buffer analyses
(`fate_tables`; definitions in docs/analyses.md).
"""

from __future__ import annotations

import copy
import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from megatron_zppo.config_io import Range
from megatron_zppo.core.records import Group, PromptKind, Question

STATE_VERSION = 2  # 2 added graduate_at, per-entry re-sample counts and the fate counters
RESAMPLE_BUCKETS = ("0", "1", "2", "3", "4", "5", "6+")


@dataclass(frozen=True)
class BufferConfig:
    enabled: bool = True  # hard questions come back until acc >= method.tau
    capacity: Annotated[int, Range(ge=1)] = 10_000  # questions held; the oldest are evicted first
    rho_replay: Annotated[float, Range(ge=0)] = 0.25  # replayed questions per step, as a fraction of N_new


@dataclass
class _Entry:
    question: Question
    admitted_accuracy: float
    resamples: int = 0  # later updates that scored its plain rollouts (docs/analyses.md)
    best_accuracy: float = 0.0  # highest plain accuracy since admission, admission included


class ReplayBuffer:
    def __init__(self, capacity: int = 10_000, tau: float = 0.5, seed: int = 0, graduate_at: float | None = None):
        """Admits a question at acc < `tau`; a buffered one graduates at acc >= `graduate_at`
        (None: `tau`, the paper's single threshold)."""
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity!r}")
        self.capacity = capacity
        self.tau = tau
        self.graduate_at = graduate_at
        self._rng = random.Random(seed)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.admitted = 0
        self.graduated = 0
        self.evicted = 0
        self.admitted_at_zero = 0
        self.graduated_from_zero = 0
        self._fate = _empty_fate()  # entries that left: by entry accuracy, by re-sample count

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
        """Admit hard questions (acc < tau), graduate buffered ones (acc >= graduate_at), evict the
        oldest beyond capacity. `tau` overrides the buffer's for this update (and so graduation
        too when graduate_at is None).

        Only plain groups count: accuracy under a BCQ/NCQ prompt says nothing about whether the
        student can answer the question alone.
        """
        tau = self.tau if tau is None else tau
        graduate_at = tau if self.graduate_at is None else self.graduate_at
        plain_groups = list(plain_groups)
        for g in plain_groups:  # all checked before any is applied: a refused update changes nothing
            if g.kind is not PromptKind.PLAIN:
                raise ValueError(f"replay buffer updates from plain groups only; group {g.id!r} is {g.kind.value}")
        for g in plain_groups:
            qid, acc = g.question.id, g.accuracy
            entry = self._entries.get(qid)
            if entry is None:
                if acc < tau:
                    self._entries[qid] = _Entry(g.question, acc, 0, acc)
                    self.admitted += 1
                    self.admitted_at_zero += acc == 0.0
                continue
            entry.resamples += 1
            entry.best_accuracy = max(entry.best_accuracy, acc)
            if acc >= graduate_at:
                del self._entries[qid]
                self.graduated += 1
                self.graduated_from_zero += entry.admitted_accuracy == 0.0
                _record_departure(self._fate, entry, graduated=True)
        while len(self._entries) > self.capacity:
            _, entry = self._entries.popitem(last=False)
            self.evicted += 1
            _record_departure(self._fate, entry, graduated=False)

    def counters(self) -> dict[str, int]:
        return {
            "buffer_size": len(self),
            "buffer_admitted": self.admitted,
            "buffer_graduated": self.graduated,
            "buffer_evicted": self.evicted,
            "buffer_admitted_at_zero": self.admitted_at_zero,
            "buffer_graduated_from_zero": self.graduated_from_zero,
        }

    def fate_tables(self) -> dict[str, dict[str, dict[str, int]]]:
        """What became of every admitted question (docs/analyses.md), JSON-ready."""
        return fate_tables(self._fate, self._entries.values())

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "capacity": self.capacity,
            "tau": self.tau,
            "graduate_at": self.graduate_at,
            "rng": self._rng.getstate(),
            "entries": [(e.question.to_dict(), e.admitted_accuracy, e.resamples, e.best_accuracy)
                        for e in self._entries.values()],
            "counters": {
                "admitted": self.admitted,
                "graduated": self.graduated,
                "evicted": self.evicted,
                "admitted_at_zero": self.admitted_at_zero,
                "graduated_from_zero": self.graduated_from_zero,
            },
            "fate": copy.deepcopy(self._fate),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Reads this version and version 1, whose states lack the re-sample counts (its entries
        start at 0, best accuracy = admission accuracy) and the fate counters (they start empty:
        the fate tables then cover departures after the resume only). The thresholds and the
        capacity stay this buffer's (the run's config), as the loop's own hard threshold does: the
        state keeps the checkpoint's only for the record."""
        version = state.get("version") if isinstance(state, dict) else None
        if version not in (1, STATE_VERSION):
            raise ValueError(
                f"replay buffer state has version {version!r}; this code reads versions 1 and {STATE_VERSION}"
            )
        self._rng.setstate(_as_rng_state(state["rng"]))
        self._entries = OrderedDict()
        for qd, acc, *seen in state["entries"]:
            q = Question.from_dict(qd)
            resamples, best = seen if seen else (0, acc)
            self._entries[q.id] = _Entry(q, acc, resamples, best)
        for name, value in state["counters"].items():
            setattr(self, name, value)
        self._fate = copy.deepcopy(state.get("fate", _empty_fate()))


# -- fate of admitted questions (pure) -------------------------------------------------------
def entry_bin(accuracy: float) -> str:
    """The table key of an admission accuracy: "0.0", "0.125", ... (k / G_S, 4 decimals)."""
    return str(round(float(accuracy), 4))


def resample_bucket(resamples: int) -> str:
    return RESAMPLE_BUCKETS[min(resamples, len(RESAMPLE_BUCKETS) - 1)]


def _empty_fate() -> dict[str, dict[str, dict[str, int]]]:
    return {"by_entry_accuracy": {}, "by_resamples": {}}


def _record_departure(fate: dict, entry: _Entry, graduated: bool) -> None:
    by_entry = fate["by_entry_accuracy"].setdefault(entry_bin(entry.admitted_accuracy),
                                                    {"graduated": 0, "evicted": 0})
    by_entry["graduated" if graduated else "evicted"] += 1
    outcome = ("graduated" if graduated else
               "improved" if entry.best_accuracy > entry.admitted_accuracy else "never_improved")
    by_resamples = fate["by_resamples"].setdefault(resample_bucket(entry.resamples),
                                                   {"graduated": 0, "improved": 0, "never_improved": 0})
    by_resamples[outcome] += 1


def fate_tables(fate: dict, held: Iterable[_Entry]) -> dict[str, dict[str, dict[str, int]]]:
    """Departure counts plus the entries still held ("in_buffer"). Entry-accuracy rows in
    increasing order, as far as admissions reached; every re-sample bucket, "0" to "6+"."""
    by_entry = {k: {**v, "in_buffer": 0} for k, v in fate["by_entry_accuracy"].items()}
    by_resamples = {b: {"graduated": 0, "improved": 0, "never_improved": 0, "in_buffer": 0}
                    for b in RESAMPLE_BUCKETS}
    for b, v in fate["by_resamples"].items():
        by_resamples[b].update(v)
    for e in held:
        by_entry.setdefault(entry_bin(e.admitted_accuracy), {"graduated": 0, "evicted": 0, "in_buffer": 0})
        by_entry[entry_bin(e.admitted_accuracy)]["in_buffer"] += 1
        by_resamples[resample_bucket(e.resamples)]["in_buffer"] += 1
    return {"by_entry_accuracy": dict(sorted(by_entry.items(), key=lambda kv: float(kv[0]))),
            "by_resamples": by_resamples}


def _as_rng_state(s):
    # JSON and some checkpoint formats turn the state's tuples into lists; random needs tuples.
    return (s[0], tuple(s[1]), s[2])
