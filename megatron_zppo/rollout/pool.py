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

With fault tolerance on (`min_servers` >= 1), a server that stops answering — its requests fail
after the client's retries, or a health check (a background thread, every `health_interval_s`)
gets no answer — is taken out: its share of the batch goes to the others, and the run goes on
while at least `min_servers` are left (`ServersLost` otherwise). A lost server that answers its
health check again (restarted by its launcher, `tools/launch_sglang.py --restart`) serves again
only after it has the current weights: a teacher's at once (they never change), a student's after
the next weight update, which is sent to it with the others. A server lost during an update
makes the pool raise `ServersChanged` after taking it out; the caller sends the update again
(loop.UpdatePhase.sync), and it reaches the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Protocol

import torch

from megatron_zppo.config_io import Range
from megatron_zppo.errors import RunError

from megatron_zppo.rollout.engine import (
    MEMORY_TAGS,
    EngineStats,
    GenerateRequest,
    Generation,
    SamplingParams,
    StudentEngine,
)

CALLERS = 8  # concurrent generate calls per server the pool passes on at once


@dataclass(frozen=True)
class FaultToleranceConfig:
    """`student.fault_tolerance`, `teacher.fault_tolerance`: for several servers (`urls`, `addresses`)."""

    # 0: off, a server that stops answering stops the run. N >= 1: a lost server is taken out and its
    # requests go to the others; the run stops only when fewer than N are left
    min_servers: Annotated[int, Range(ge=0)] = 0
    health_interval_s: Annotated[float, Range(gt=0)] = 30.0  # every server's /health_generate, this often
    health_timeout_s: Annotated[float, Range(gt=0)] = 30.0  # no answer within this: the server is lost
    first_wait_s: Annotated[float, Range(ge=0)] = 60.0  # before the first health check


class ServersLost(RunError):
    """Fewer servers answer than `min_servers`: the run cannot go on."""


class StaleServer(Exception):
    """A server answers with weights other than the pool's: restarted between two health checks."""


class ServersChanged(Exception):
    """A server was lost during a weight update and taken out; sending the update again reaches the rest."""


class WeightSync(Protocol):
    """One weight update into every server of a pool (rollout/sync/servers.py's ServerSync)."""

    servers: list
    failed: object | None  # the server the last failed update names, if it names one

    def update(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: str) -> object: ...

    def regroup(self, servers: Sequence) -> None:
        """The servers the next update goes to."""

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
    def __init__(self, engines: Sequence[StudentEngine], name: str = "student", sync: WeightSync | None = None,
                 tolerance: FaultToleranceConfig = FaultToleranceConfig()):
        if not engines:
            raise ValueError(f"{name} engine pool needs at least one engine")
        if tolerance.min_servers > len(engines):
            raise ValueError(f"{name}.fault_tolerance.min_servers={tolerance.min_servers} but the pool has "
                             f"{len(engines)} servers")
        self.engines, self.name, self.sync, self.tolerance = list(engines), name, sync, tolerance
        self.live = list(self.engines)  # serving the current weights; the others were lost
        self.back: list = []  # lost, answering again, waiting for the current weights (a student's)
        self.counts = {"servers_lost": 0, "servers_back": 0, "requests_resubmitted": 0}
        self._lock = threading.Lock()
        self._fatal: ServersLost | None = None  # found by the health monitor, raised on the caller's thread
        self._regroup = False  # a server lost or back since the last update: the sync's group must change
        self._updating = threading.Event()  # no health checks meanwhile: paused servers, versions in flux
        # several callers at once (run.overlap=async's batches in flight): one thread per server would queue them
        self._threads = ThreadPoolExecutor(len(self.engines) * CALLERS, thread_name_prefix=f"{name}-pool")
        self._stop = threading.Event()
        if tolerance.min_servers:
            threading.Thread(target=self._monitor, daemon=True, name=f"{name}-health").start()

    @property
    def weight_version(self) -> str:
        """The one version every live engine serves; raises if a partial update left them disagreeing."""
        versions = {e.weight_version for e in self.live}
        if len(versions) != 1:
            raise RuntimeError(f"{self.name} engines serve different weight versions {sorted(versions)}; the "
                               "last weight update failed part-way (see its error)")
        return versions.pop()

    @property
    def stats(self) -> EngineStats:
        total = EngineStats(extra={**self.fault_metrics(), "partial_generations_lost": 0.0})
        for e in self.engines:
            total.extra["partial_generations_lost"] += e.stats.extra.get("partial_generations_lost", 0.0)
            total.tokens_generated += e.stats.tokens_generated
            total.seconds_generating += e.stats.seconds_generating
            # one shared sync runs on every engine at once: its wall time, not the sum over engines
            total.seconds_syncing = (max(total.seconds_syncing, e.stats.seconds_syncing) if self.sync
                                     else total.seconds_syncing + e.stats.seconds_syncing)
        return total

    def fault_metrics(self) -> dict[str, float]:
        """Losses, returns and resubmitted requests so far, and the servers serving now."""
        return {**self.counts, "servers_live": len(self.live)}

    def _spread(self, fn, items: Sequence, weights: Sequence[int]) -> list:
        if self._fatal is not None:
            raise self._fatal
        _ = self.weight_version  # refuse before sending anything if the engines disagree
        live = list(self.live)
        parts = split_balanced(weights, len(live))
        futures = [(live[k], a, b, self._threads.submit(fn, live[k], items[a:b])) for k, (a, b) in enumerate(parts)]
        out = []
        for engine, a, b, future in futures:
            try:
                out.extend(future.result())
            except Exception as err:
                if not (self.tolerance.min_servers and _server_gone(err)):
                    raise
                self._lose(engine, str(err))
                with self._lock:
                    self.counts["requests_resubmitted"] += b - a
                out.extend(self._spread(fn, items[a:b], weights[a:b]))  # the rest take its share
        return out

    def _lose(self, engine, why: str) -> None:
        with self._lock:
            if engine not in self.live:
                return
            self.live.remove(engine)
            self.counts["servers_lost"] += 1
            self._regroup = True
            left = len(self.live)
        print(f"{self.name}: server {engine.name} {engine.base_url} lost ({why[:300]}); {left} of "
              f"{len(self.engines)} left", flush=True)
        if left < self.tolerance.min_servers:
            self._fatal = ServersLost(
                f"{self.name}: {left} of {len(self.engines)} servers left, fewer than "
                f"{self.name}.fault_tolerance.min_servers={self.tolerance.min_servers}; the last one lost was "
                f"{engine.name} {engine.base_url} ({why[:300]}). Resume from the last checkpoint (--load auto) "
                "once the servers are back")
            raise self._fatal

    def _monitor(self) -> None:
        """Every server's health, every health_interval_s: the live ones for losses, the lost ones for returns."""
        t = self.tolerance
        if self._stop.wait(t.first_wait_s):
            return
        while True:
            for e in self.engines:
                if self._updating.is_set():
                    break
                try:
                    ok = e.health(timeout_s=t.health_timeout_s)
                except Exception:  # noqa: BLE001 - shutting down (its client closed), or no answer at all
                    if self._stop.is_set():
                        return
                    ok = False
                if self._stop.is_set():
                    return
                if e in self.live and (why := self._unwell(e, ok)):
                    try:
                        self._lose(e, why)
                    except ServersLost:
                        return  # raised on the caller's thread at its next request
                elif ok and e not in self.live and e not in self.back:
                    self._welcome(e)
            if self._stop.wait(t.health_interval_s):
                return

    def _unwell(self, engine, answered: bool) -> str:
        """Why a live server must be taken out ("" if it need not): no answer, or (a student's)
        weights other than the pool's, because it was restarted since the last check."""
        if not answered:
            return f"no answer to a health check within {self.tolerance.health_timeout_s:g} s"
        try:
            if self.sync is not None:
                _check_served(engine, engine.weight_version, {engine.server_weight_version()})
        except StaleServer as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 - answered /health_generate, then not /model_info
            return f"no answer to /model_info ({err})"
        return ""

    def _welcome(self, engine) -> None:
        """A lost server answers again. It may have been restarted with its initial weights: a
        student's serves only once the next update has reached it; a teacher's weights never change."""
        with self._lock:
            if self.sync is None:
                self.live.append(engine)
            else:
                self.back.append(engine)
                self._regroup = True  # even into the same set of servers: a restarted one left the group
            self.counts["servers_back"] += 1
        when = "serving again" if self.sync is None else "it gets the next weight update, then serves"
        print(f"{self.name}: server {engine.name} {engine.base_url} answers again; {when}", flush=True)

    def generate(self, requests: Sequence[GenerateRequest], params: SamplingParams) -> list[list[Generation]]:
        def on(engine, reqs):
            groups = engine.generate(reqs, params)
            if self.tolerance.min_servers and self.sync is not None:
                _check_served(engine, engine.weight_version, {g.weight_version for gs in groups for g in gs})
            return groups

        return self._spread(on, list(requests), [r.n for r in requests])

    def abort_all(self) -> None:
        """Every live server aborts its requests; the partial responses come back to their callers."""
        for engine in list(self.live):
            engine.abort_all()

    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
              images: Sequence[tuple] | None = None) -> list[list[float]]:
        rows = list(zip(prompt_ids, response_ids, images or [()] * len(prompt_ids), strict=True))
        return self._spread(lambda e, rs: e.score([p for p, _, _ in rs], [r for _, r, _ in rs],
                                                  [i for _, _, i in rs] if images else None),
                            rows, [len(p) + len(r) for p, r, _ in rows])

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: str) -> None:
        if self.sync is None:
            tensors = list(named_tensors)  # in-process engines only: held while it goes to each in turn
            for e in self.engines:
                e.update_weights(iter(tensors), version)
            return
        if self._fatal is not None:
            raise self._fatal
        with self._lock:
            members = self.live + self.back  # the servers that are back get these weights with the rest
            regroup, self._regroup = self._regroup, False
        if regroup:
            self.sync.regroup(members)
        self._updating.set()
        try:
            self.sync.update(named_tensors, version)
        except Exception as err:
            failed = getattr(self.sync, "failed", None)
            if not self.tolerance.min_servers or failed is None:
                raise
            if failed in self.back:  # back, then lost again before serving: it was never counted live
                with self._lock:
                    self.back.remove(failed)
                    self._regroup = True
                print(f"{self.name}: server {failed.name} {failed.base_url} failed its first update ({err})",
                      flush=True)
            else:
                self._lose(failed, str(err))  # raises ServersLost if too few are left
            raise ServersChanged(f"{self.name}: server {failed.name} lost during the update to {version!r}; "
                                 "sending it again to the rest") from err
        finally:
            self._updating.clear()
        with self._lock:
            self.live, self.back = members, [e for e in self.back if e not in members]

    def sync_metrics(self) -> dict[str, float]:
        return self.sync.metrics() if self.sync is not None else {}

    def release_memory(self, tags: Sequence[str] = MEMORY_TAGS) -> None:
        for e in self.live:
            e.release_memory(tags)

    def resume_memory(self, tags: Sequence[str] = MEMORY_TAGS) -> None:
        for e in self.live:
            e.resume_memory(tags)

    def health(self) -> bool:
        return all(e.health() for e in self.live)

    def shutdown(self) -> None:
        self._stop.set()
        if self.sync is not None:
            self.sync.shutdown()  # leaves the process group while the engines can still tell their servers
        for e in self.engines:
            e.shutdown()
        self._threads.shutdown(wait=False)


def _check_served(engine, expected: str, served: set[str]) -> None:
    wrong = sorted(v for v in served if expected and v and v != expected)  # "": not synced yet, or not said
    if wrong:
        raise StaleServer(f"it serves weights {wrong}, not {expected!r}: restarted with its initial weights?")


def _server_gone(err: BaseException) -> bool:
    """The server no longer answers (after the client's retries), as opposed to refusing a request
    (4xx: the caller's fault) or answering outside the protocol: only the first is a lost server."""
    from megatron_zppo.rollout.sglang_engine import MalformedResponse, SGLangError, WeightSyncError

    return isinstance(err, StaleServer) or isinstance(err, SGLangError) and err.status is None and not isinstance(
        err, MalformedResponse | WeightSyncError)
