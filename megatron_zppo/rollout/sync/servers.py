"""How new weights reach the student's SGLang servers: one `ServerSync` over all of them, built once.

`policy_engine` builds it: a student of one server keeps it, several share it through their pool
(which may `regroup` it after losing a server); the teacher's servers get none.

Every strategy runs the same frame over all of its servers at once: pause and flush each, send,
check each server's `weight_version`, resume each. They differ only in how the bytes travel:

- `DistributedSync`: process groups joining the trainer's sending rank (rank 0) with the servers'
  ranks. `fanout: one_group` puts every server in one group (rank offsets from each server's world
  size), so each bucket is broadcast once however many servers there are; `per_server` gives each
  server its own group. The export is consumed bucket by bucket: while bucket k is on the wire
  (async broadcasts, HTTP calls in flight), bucket k+1 is gathered, so the sender holds about two
  buckets, never the model.
- `DiskSync`: one safetensors directory per version, written once; every server loads that same directory.
- `IpcSync`: CUDA-IPC handles to co-located servers (GPU only).

A failed sync leaves its servers unusable (mixed weights, or paused) until one succeeds; it names the culprit (`failed`).
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_zppo.rollout.pool import EnginePool, FaultToleranceConfig
from megatron_zppo.rollout.sglang_engine import SGLangEngine, SGLangError, WeightSyncError
from megatron_zppo.rollout.sync import groups
from megatron_zppo.rollout.sync.buckets import NamedTensor, bucketed
from megatron_zppo.rollout.sync.config import KEEP_REQUESTS, WeightSyncConfig
from megatron_zppo.rollout.sync.disk import write_safetensors_dir
from megatron_zppo.rollout.sync.ipc import ipc_payloads

# Sync phases that tell, after a failure, whether the servers' weights can have changed.
_NOTHING_SENT = {"pause_generation", "flush_cache", "init_weights_update_group", "begin_weight_update",
                 "write safetensors", "serialize"}
_AFTER_LOAD = {"verify weight_version", "continue_generation"}


@dataclass(frozen=True)
class SyncReport:
    """One weight update, as the run's metrics log it."""

    seconds: float
    bytes: int
    servers: int

    def metrics(self) -> dict[str, float]:
        return {"sync_s": self.seconds, "sync_bytes": float(self.bytes), "sync_servers": float(self.servers),
                "sync_gb_per_s": self.bytes / 1e9 / self.seconds if self.seconds > 0 else float("nan")}


def describe(err: BaseException) -> str:
    """Our errors say what happened; others (a timeout's is empty) get their type in front."""
    return str(err) if isinstance(err, SGLangError) else f"{type(err).__name__}: {err}".rstrip(": ")


class ServerFailed(Exception):
    """`error` happened at `server`: the one the sync's error names."""

    def __init__(self, server: SGLangEngine, error: BaseException):
        super().__init__(describe(error))
        self.server, self.error = server, error


def _counted(named_tensors: Iterable[NamedTensor], total: list[int]) -> Iterator[NamedTensor]:
    for name, tensor in named_tensors:
        total[0] += tensor.numel() * tensor.element_size()
        yield name, tensor


class ServerSync:
    """The frame every strategy shares; subclasses implement `_send` (and `close` if they hold groups)."""

    strategy = ""

    def __init__(self, cfg: WeightSyncConfig, servers: Sequence[SGLangEngine]):
        if not servers:
            raise ValueError("a weight sync needs at least one server")
        self.cfg, self.servers = cfg, list(servers)
        self.phase = ""
        self.last: SyncReport | None = None  # the last successful update
        self.failed: SGLangEngine | None = None  # the server the last failed update names, if any
        self._threads = ThreadPoolExecutor(len(self.servers), thread_name_prefix="weight-sync")

    def regroup(self, servers: Sequence[SGLangEngine]) -> None:
        """The servers the next update goes to (a pool lost one, or has one back): what was joined
        with the old set is dropped; a fresh frame (distributed: fresh group names) joins the new."""
        self.shutdown()
        self.__init__(self.cfg, servers)

    def each(self, fn: Callable[[SGLangEngine], object]) -> list:
        """`fn` on every server at once; the first server (in order) that failed is named."""
        pending = [self._threads.submit(fn, s) for s in self.servers]
        return [wait_for(f, s, self.cfg.timeout_s) for f, s in zip(pending, self.servers)]

    def update(self, named_tensors: Iterable[NamedTensor], version: str) -> SyncReport:
        """pause -> flush -> send -> verify -> resume on every server; any failure leaves a precise error."""
        start, old = time.perf_counter(), [s.weight_version for s in self.servers]
        total = [0]
        try:
            self.phase = "pause_generation"
            self.each(lambda s: s.pause())
            self.phase = "flush_cache"
            self.each(lambda s: s.flush_cache())
            self._send(_counted(named_tensors, total), version)
            self.phase = "verify weight_version"
            self.each(lambda s: _check_version(s, version))
            self.phase = "continue_generation"
            self.each(lambda s: s.resume())
        except Exception as err:
            self.close()
            raise self._fail(old, version, err) from err
        self.last = SyncReport(time.perf_counter() - start, total[0], len(self.servers))
        for s in self.servers:
            s.mark_synced(version, self.last.seconds)
        return self.last

    def metrics(self) -> dict[str, float]:
        """The last successful update's figures (sync_s, sync_bytes, sync_gb_per_s, sync_servers); {} before one."""
        return self.last.metrics() if self.last is not None else {}

    def _send(self, named_tensors: Iterable[NamedTensor], version: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Drop anything joined with the servers (best effort: a server may be why we are here)."""

    def _fail(self, old: list[str], version: str, err: Exception) -> WeightSyncError:
        culprit = err.server if isinstance(err, ServerFailed) else self._unreachable()
        self.failed = culprit
        cause = describe(err.error if isinstance(err, ServerFailed) else err)
        if self.phase in _NOTHING_SENT:
            state = "no weights were sent"
        elif self.phase in _AFTER_LOAD:
            state = f"the server finished loading but {self.phase} failed; it may serve {version!r}"
        else:
            closed = "end_weight_update never ran; " if self.strategy == "distributed" else ""
            state = f"{closed}the server may hold a mix of old and new weights and is left paused"
        messages = {}
        for s, was in zip(self.servers, old):
            why = cause if culprit is None or s is culprit else (f"{culprit.name} server {culprit.base_url} "
                                                                 f"failed ({cause})")
            messages[s] = (f"weight sync of {s.name} server {s.base_url} to version {version!r} failed during "
                           f"{self.phase}: {why}. This engine stays on weight version {was!r} ({state}); "
                           f"generate() and score() refuse until update_weights succeeds.")
            s.mark_broken(messages[s])
        message = messages[culprit or self.servers[0]]
        others = [s.name for s in self.servers if s is not (culprit or self.servers[0])]
        if others:
            message += f" Left unusable with it, as one sync: {', '.join(others)}."
        return WeightSyncError(message)

    def _unreachable(self) -> SGLangEngine | None:
        """After a failure no server owned (a broken collective), the first that no longer answers."""
        for s in self.servers:
            try:
                s.server_weight_version()
            except SGLangError:
                return s
        return None

    def shutdown(self) -> None:
        self.close()
        self._threads.shutdown(wait=False)


def _run_into(future: Future, fn: Callable[[], object]) -> None:
    try:
        future.set_result(fn())
    except BaseException as err:
        future.set_exception(err)


def wait_for(future: Future, server: SGLangEngine, timeout_s: float):
    try:
        return future.result(timeout=timeout_s)
    except BaseException as err:
        raise ServerFailed(server, err) from err


def _check_version(server: SGLangEngine, version: str) -> None:
    served = server.server_weight_version()
    if served != version:
        raise WeightSyncError(f"server reports weight_version {served!r} after the update")


class DistributedSync(ServerSync):
    strategy = "distributed"

    def __init__(self, cfg: WeightSyncConfig, servers: Sequence[SGLangEngine]):
        super().__init__(cfg, servers)
        self.device = torch.device("cuda" if cfg.backend == "nccl" else "cpu")
        self._groups: list[tuple[str, object, list[SGLangEngine]]] = []  # (name, process group, members)
        # A server keeps a group until told to drop it and refuses a second of the same name (a resumed
        # trainer against servers still up would never join): so each frame's groups get their own name.
        self.prefix = f"{cfg.group_name}_{uuid.uuid4().hex[:8]}"

    def layout(self) -> list[tuple[str, int, list[tuple[SGLangEngine, int]], int]]:
        """[(group name, master port, [(server, rank_offset)], world size)]: one group, or one per server."""
        cfg, size = self.cfg, self.cfg.server_world_size
        if cfg.fanout == "one_group" or len(self.servers) == 1:
            world, offsets = groups.rank_offsets([size] * len(self.servers))
            return [(self.prefix, cfg.master_port, list(zip(self.servers, offsets)), world)]
        return [(f"{self.prefix}_{i}", cfg.master_port and cfg.master_port + i, [(s, 1)], 1 + size)
                for i, s in enumerate(self.servers)]

    def _send(self, named_tensors: Iterable[NamedTensor], version: str) -> None:
        if not self._groups:  # joined once, reused by every later sync
            self.phase = "init_weights_update_group"
            self._groups = [self._join(*g) for g in self.layout()]
        if not self._stream(named_tensors, version):
            raise ValueError("update_weights got no tensors")
        self.phase = "end_weight_update"
        self.each(lambda s: s.call("/end_weight_update").result(timeout=self.cfg.timeout_s))

    def _stream(self, named_tensors: Iterable[NamedTensor], version: str) -> int:
        """Double-buffered: bucket k+1 is gathered from the export (the loop's `next`) while bucket k
        is on the wire, then k is waited for and k+1 started; so about two buckets are held. Returns
        how many were sent. `on_wire` is popped, not read, so that no name keeps a sent bucket alive."""
        on_wire, sent = [], 0  # the bucket on the wire: at most one
        try:
            for bucket, last in bucketed(named_tensors, self.cfg.bucket_bytes):
                if on_wire:
                    self._finish(on_wire.pop())
                on_wire.append(self._start_bucket(sent, bucket, last, version))
                sent += 1
        except BaseException:  # the export failed mid-way: settle what is on the wire, then report it
            if on_wire:
                try:
                    self._finish(on_wire.pop())
                except Exception:
                    pass
            raise
        if on_wire:
            self._finish(on_wire.pop())
        return sent

    def _start_bucket(self, index: int, bucket: list[NamedTensor], last: bool, version: str) -> list:
        if index == 0:
            self.phase = "begin_weight_update"
            self.each(lambda s: s.call("/begin_weight_update").result(timeout=self.cfg.timeout_s))
        self.phase = f"update_weights_from_distributed (bucket {index})"
        payload = {**groups.bucket_payload(bucket), "weight_version": version if last else None,
                   "load_format": self.cfg.load_format, **KEEP_REQUESTS}  # the version rides on the last bucket only
        return [self._start(name, group, members, payload, bucket) for name, group, members in self._groups]

    def _start(self, name, group, members, payload, bucket):
        """The servers receive while handling the POST, so the broadcast is started right after it."""
        http = [(s, s.call("/update_weights_from_distributed", {**payload, "group_name": name})) for s in members]
        try:
            works = groups.broadcast_bucket(group, bucket, self.device, self.cfg.load_format, async_op=True)
        except Exception as err:
            works = [err]
        return http, works, bucket  # the bucket stays referenced until its broadcast is done

    def _finish(self, in_flight) -> None:
        """Every server's answer first (they name a failure better than a broken collective), then the
        works. After a first failure the rest get a short wait only: `close` then leaves the group,
        which unblocks any server still waiting on this bucket."""
        failure, wait_s = None, self.cfg.timeout_s
        for http, works, _ in in_flight:
            for s, future in http:
                try:
                    wait_for(future, s, wait_s)
                except ServerFailed as err:
                    failure, wait_s = failure or err, min(wait_s, 10.0)
            for work in works:
                try:
                    if isinstance(work, Exception):
                        raise work
                    work.wait()
                except Exception as err:
                    failure, wait_s = failure or err, min(wait_s, 10.0)
        if failure is not None:
            raise failure

    def _join(self, name: str, port: int, members: list[tuple[SGLangEngine, int]], world: int):
        """The servers' ranks only join while we do: issue their HTTP calls, then rendezvous ourselves."""
        cfg = self.cfg
        addr = groups.resolve_master_addr(cfg.master_addr)
        port = port or groups.pick_free_port(addr)
        http = [(s, s.call("/init_weights_update_group", {
            "master_address": addr, "master_port": port, "rank_offset": offset,
            "world_size": world, "group_name": name, "backend": cfg.backend})) for s, offset in members]
        # A server that refuses to join (an HTTP error) leaves the rendezvous waiting for its rank
        # until timeout_s, which cannot be interrupted: so the rendezvous runs in a daemon thread
        # and we stop at the first refusal instead. (A server that joins answers only once the
        # group exists, so the HTTP calls finish after the rendezvous.)
        rendezvous: Future = Future()
        threading.Thread(target=_run_into, name="weight-sync-rendezvous", daemon=True, args=(rendezvous, lambda: (
            groups.init_custom_process_group(backend=cfg.backend, init_method=f"tcp://{addr}:{port}",
                                             world_size=world, rank=0, group_name=name,
                                             timeout_s=cfg.timeout_s)))).start()
        futures.wait([rendezvous, *(f for _, f in http)], timeout=cfg.timeout_s, return_when=futures.FIRST_EXCEPTION)
        refused = [(s, f.exception()) for s, f in http if f.done() and f.exception() is not None]
        if refused:
            if rendezvous.done() and rendezvous.exception() is None:
                groups.destroy_custom_process_group(rendezvous.result())
            raise ServerFailed(*refused[0])
        if not rendezvous.done():
            raise TimeoutError(f"the servers did not join weight-sync group {name!r} within "
                               f"weight_sync.timeout_s={cfg.timeout_s:g} s")
        group = rendezvous.result()  # or the rendezvous's own error
        try:
            for s, future in http:
                wait_for(future, s, cfg.timeout_s)
        except BaseException:
            groups.destroy_custom_process_group(group)
            raise
        return name, group, [s for s, _ in members]

    def close(self) -> None:
        """Leave our side first (a server blocked on a collective with us then fails at once), then
        ask each server to drop its side."""
        joined, self._groups = self._groups, []
        for _, group, _ in joined:
            groups.destroy_custom_process_group(group)
        asked = [(s, s.call("/destroy_weights_update_group", {"group_name": name}))
                 for name, _, members in joined for s in members]
        for _, future in asked:
            try:
                future.result(timeout=min(self.cfg.timeout_s, 30.0))
            except Exception:
                pass


class DiskSync(ServerSync):
    strategy = "disk"

    def __init__(self, cfg: WeightSyncConfig, servers: Sequence[SGLangEngine]):
        super().__init__(cfg, servers)
        self._current: Path | None = None

    def _send(self, named_tensors: Iterable[NamedTensor], version: str) -> None:
        cfg = self.cfg
        self.phase = "write safetensors"
        path = write_safetensors_dir(
            named_tensors, cfg.disk_dir, version, shard_bytes=cfg.bucket_bytes, support_dir=cfg.disk_support_dir)
        self.phase = "update_weights_from_disk"
        body = {"model_path": str(path), "weight_version": version, "flush_cache": True, **KEEP_REQUESTS}
        self.each(lambda s: s.call("/update_weights_from_disk", body).result(timeout=self.cfg.timeout_s))
        previous, self._current = self._current, path
        if previous is not None and previous != path:
            shutil.rmtree(previous, ignore_errors=True)  # keep one copy on disk, not one per step


class IpcSync(ServerSync):
    """Co-located servers: CUDA-IPC handles bucket by bucket, each bucket to every server (GPU only)."""

    strategy = "ipc"

    def _send(self, named_tensors: Iterable[NamedTensor], version: str) -> None:
        cfg = self.cfg
        sent = 0
        for index, (bucket, last) in enumerate(bucketed(named_tensors, cfg.bucket_bytes)):
            if index == 0:
                self.phase = "serialize"  # the first bucket's CPU tensors are refused before anything is sent
            payloads = ipc_payloads(bucket, cfg.server_world_size)
            if index == 0:
                self.phase = "begin_weight_update"
                self.each(lambda s: s.call("/begin_weight_update").result(timeout=cfg.timeout_s))
            self.phase = f"update_weights_from_tensor (bucket {index})"
            body = {"serialized_named_tensors": payloads, "flush_cache": last,
                    "weight_version": version if last else None, **KEEP_REQUESTS}
            self.each(lambda s: s.call("/update_weights_from_tensor", body).result(timeout=cfg.timeout_s))
            sent += 1
        if not sent:
            raise ValueError("update_weights got no tensors")
        self.phase = "end_weight_update"
        self.each(lambda s: s.call("/end_weight_update").result(timeout=cfg.timeout_s))


STRATEGIES: dict[str, type[ServerSync]] = {"distributed": DistributedSync, "disk": DiskSync, "ipc": IpcSync}


def make_sync(cfg: WeightSyncConfig, servers: Sequence[SGLangEngine]) -> ServerSync:
    return STRATEGIES[cfg.strategy](cfg, servers)


def policy_engine(servers: Sequence[SGLangEngine], name: str, weight_sync: WeightSyncConfig | None,
                  tolerance: FaultToleranceConfig = FaultToleranceConfig()) -> SGLangEngine | EnginePool:
    """The servers of one policy as one engine: the server itself, or a pool of several. With
    `weight_sync` (the student) it gets the one `ServerSync` that updates all of them, built here
    and nowhere else; without (the teacher) none, and `update_weights` refuses. `tolerance`: what
    the pool does when one of them is lost."""
    sync = make_sync(weight_sync, servers) if weight_sync is not None else None
    if len(servers) == 1:
        servers[0].sync = sync
        return servers[0]
    return EnginePool(servers, name, sync=sync, tolerance=tolerance)
