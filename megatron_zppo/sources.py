"""Where each step's rollouts come from, chosen once per rank (`make_source`), so that the main
job's loop has one line for it whatever the run does:

- `Generated` (rank 0, which holds the engines): the rollout phase (loop.RolloutPhase), run when
  asked (`run.overlap=none`), one step ahead while the trainer trains (`one_step`, overlap.py) or
  continuously, up to run.max_staleness steps ahead (`async`, stream.py);
  the replay buffer learns from each step's plain groups as they are taken; the rollouts go to
  every other rank, and to disk for `run.mode=rollout_only` or `run.dump_rollouts`.
- `Received` (every other rank): rank 0's rollouts.
- `Replayed` (`run.mode=train_only`, every rank): rollouts an earlier `rollout_only` run wrote.

A source also carries the rollout side's part of a checkpoint: the buffer, the data stream's
position and the rollouts made ahead (rank 0's `state_dict`; the others' is empty).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import torch

from megatron_zppo.build import make_decoder
from megatron_zppo.loop import RolloutPhase, Rollouts
from megatron_zppo.overlap import RolloutFeed
from megatron_zppo.stream import AsyncFeed


class Source(Protocol):
    def take(self, step: int) -> Rollouts:
        """Step `step`'s rollouts, on every rank."""

    def ahead(self, step: int) -> None:
        """Begin step `step`'s rollouts while the trainer trains (one_step; else nothing)."""

    def wait(self, times: dict[str, float]) -> None:
        """Wait for the rollouts begun by `ahead` (before the weight sync changes the engines)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], step: int) -> None: ...


def make_source(cfg, phase: RolloutPhase | None, run_dir: Path) -> Source:
    """`phase` exists on the rank that holds the engines (rank 0) and is None elsewhere."""
    if cfg.run.mode == "train_only":
        return Replayed(Path(cfg.run.rollouts_from), phase, cfg.buffer.enabled)
    if phase is None:
        return Received()
    written = run_dir if cfg.run.mode == "rollout_only" or cfg.run.dump_rollouts else None
    if cfg.run.overlap == "async":
        feed = AsyncFeed(phase, cfg.run.max_staleness, cfg.run.overlap_timeout_s, make_decoder(cfg.student.hf_path))
    else:
        feed = RolloutFeed(phase, cfg.run.overlap, cfg.run.overlap_timeout_s)
    return Generated(phase, feed, cfg.buffer.enabled, written)


class Generated:
    def __init__(self, phase: RolloutPhase, feed: RolloutFeed, buffer_on: bool, written: Path | None):
        self.phase, self.feed, self.buffer_on, self.written = phase, feed, buffer_on, written

    def take(self, step: int) -> Rollouts:
        r = self.feed.take(step)
        if self.buffer_on:  # before the next step's rollouts draw from it, in either overlap
            self.phase.buffer.update(r.plain)
        if self.written is not None:
            save_rollouts(r, rollout_file(self.written, step))
        return broadcast(r, is_source=True)

    def ahead(self, step: int) -> None:
        self.feed.start(step)

    def wait(self, times: dict[str, float]) -> None:
        self.feed.join(times)

    def state_dict(self) -> dict[str, Any]:
        return {**phase_state(self.phase), "rollouts": self.feed.state_dict()}

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        load_phase_state(self.phase, state)
        self.feed.load_state_dict(state.get("rollouts"), step)  # one_step: the rollouts in flight


class Received:
    def take(self, step: int) -> Rollouts:
        return broadcast(None, is_source=False)

    def ahead(self, step: int) -> None:
        pass

    def wait(self, times: dict[str, float]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        pass


class Replayed(Received):
    """Every rank reads the same file (nothing is made ahead or received, as on the ranks that
    receive). Rank 0's buffer still learns from the plain groups, so the checkpoints of a train-only
    run carry the buffer the run that made the rollouts had."""

    def __init__(self, directory: Path, phase: RolloutPhase | None, buffer_on: bool):
        self.directory, self.phase, self.buffer_on = directory, phase, buffer_on

    def take(self, step: int) -> Rollouts:
        r = torch.load(rollout_file(self.directory, step), weights_only=False)
        if self.phase is not None and self.buffer_on:
            self.phase.buffer.update(r.plain)
        return r

    def state_dict(self) -> dict[str, Any]:
        return {} if self.phase is None else {**phase_state(self.phase), "rollouts": None}

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        if self.phase is not None:
            load_phase_state(self.phase, state)


def phase_state(phase: RolloutPhase) -> dict[str, Any]:
    """The rollout phase's part of a checkpoint: the buffer and the data stream's position."""
    return {"buffer": phase.buffer.state_dict(), "stream": phase.stream.state_dict()}


def load_phase_state(phase: RolloutPhase, state: dict[str, Any]) -> None:
    phase.buffer.load_state_dict(state["buffer"])
    phase.stream.load_state_dict(state["stream"])


def broadcast(obj, is_source: bool):
    """Rank 0's object on every rank (the rollouts, which only rank 0 produced)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return obj
    box = [obj if is_source else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def rollout_file(directory, step: int) -> Path:
    return Path(directory) / "rollouts" / f"step_{step:06d}.pt"


def save_rollouts(rollouts: Rollouts, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(rollouts, tmp)
    os.replace(tmp, path)  # a reader never sees half a file
