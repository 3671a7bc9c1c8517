"""Several rollout engines serving one policy, used as one engine.

A job with many student SGLang servers (the Slurm recipes: two per node) must put every new
weight version into every server; a router in front of them forwards generation but not weight
updates. `EnginePool` splits each batch of requests across its engines (in order, balanced by the
number of samples, all at once). Weight updates go through the student's one `sync` over all of
the servers (rollout/sync/servers.py: one process group for the trainer and every server, each
bucket broadcast once, the export streamed), built with the pool (`policy_engine`). A failure
names its server and leaves every engine refusing to generate; a pool whose engines disagree on
the version refuses too. Without a shared sync (in-process engines) each engine gets the update in
turn from a held copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import torch

from megatron_zppo.rollout.engine import (
    MEMORY_TAGS,
    EngineStats,
    GenerateRequest,
    Generation,
    SamplingParams,
    StudentEngine,
)


class WeightSync(Protocol):
    """One weight update into every server of a pool (rollout/sync/servers.py's ServerSync)."""

    def update(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: str) -> object: ...

    def metrics(self) -> dict[str, float]:
        """The last update's figures, {} before one."""

    def shutdown(self) -> None: ...


def split_balanced(weights: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) slices of `weights` into at most `parts` pieces of near-equal sum."""
    total, out, start, acc = sum(weights), [], 0, 0
    for i, w in enumerate(weights):
        acc += w
        if len(out) < parts - 1 and acc * parts >= total * (len(out) + 1):
            out.append((start, i + 1))
            start = i + 1
    if start < len(weights):
        out.append((start, len(weights)))
    return out


class EnginePool:
    def __init__(self, engines: Sequence[StudentEngine], name: str = "student", sync: WeightSync | None = None):
        if not engines:
            raise ValueError(f"{name} engine pool needs at least one engine")
        self.engines, self.name, self.sync = list(engines), name, sync
        self._threads = ThreadPoolExecutor(len(self.engines), thread_name_prefix=f"{name}-pool")

    @property
    def weight_version(self) -> str:
        """The one version every engine serves; raises if a partial update left them disagreeing."""
        versions = {e.weight_version for e in self.engines}
        if len(versions) != 1:
            raise RuntimeError(f"{self.name} engines serve different weight versions {sorted(versions)}; the "
                               "last weight update failed part-way (see its error)")
        return versions.pop()

    @property
    def stats(self) -> EngineStats:
        total = EngineStats()
        for e in self.engines:
            total.tokens_generated += e.stats.tokens_generated
            total.seconds_generating += e.stats.seconds_generating
            # one shared sync runs on every engine at once: its wall time, not the sum over engines
            total.seconds_syncing = (max(total.seconds_syncing, e.stats.seconds_syncing) if self.sync
                                     else total.seconds_syncing + e.stats.seconds_syncing)
        return total

    def _spread(self, fn, items: Sequence, weights: Sequence[int]) -> list:
        _ = self.weight_version  # refuse before sending anything if the engines disagree
        parts = split_balanced(weights, len(self.engines))
        futures = [self._threads.submit(fn, self.engines[k], items[a:b]) for k, (a, b) in enumerate(parts)]
        return [x for f in futures for x in f.result()]

    def generate(self, requests: Sequence[GenerateRequest], params: SamplingParams) -> list[list[Generation]]:
        return self._spread(lambda e, reqs: e.generate(reqs, params), list(requests), [r.n for r in requests])

    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
              images: Sequence[tuple] | None = None) -> list[list[float]]:
        rows = list(zip(prompt_ids, response_ids, images or [()] * len(prompt_ids), strict=True))
        return self._spread(lambda e, rs: e.score([p for p, _, _ in rs], [r for _, r, _ in rs],
                                                  [i for _, _, i in rs] if images else None),
                            rows, [len(p) + len(r) for p, r, _ in rows])

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: str) -> None:
        if self.sync is not None:
            self.sync.update(named_tensors, version)
            return
        tensors = list(named_tensors)  # in-process engines only: held while it goes to each in turn
        for e in self.engines:
            e.update_weights(iter(tensors), version)

    def sync_metrics(self) -> dict[str, float]:
        return self.sync.metrics() if self.sync is not None else {}

    def release_memory(self, tags: Sequence[str] = MEMORY_TAGS) -> None:
        for e in self.engines:
            e.release_memory(tags)

    def resume_memory(self, tags: Sequence[str] = MEMORY_TAGS) -> None:
        for e in self.engines:
            e.resume_memory(tags)

    def health(self) -> bool:
        return all(e.health() for e in self.engines)

    def shutdown(self) -> None:
        if self.sync is not None:
            self.sync.shutdown()  # leaves the process group while the engines can still tell their servers
        for e in self.engines:
            e.shutdown()
        self._threads.shutdown(wait=False)
