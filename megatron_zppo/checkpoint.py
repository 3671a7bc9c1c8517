"""Run checkpoints that survive a kill at any moment.

A checkpoint is written into a hidden temporary directory, completed with a `COMPLETE` marker,
renamed into place (`step_000010`), and only then is `latest` repointed (write-then-rename). A
process killed at any point therefore leaves `latest` naming a complete checkpoint, and a
half-written directory is never mistaken for one.

The model and optimizer are saved by the trainer (Megatron distributed checkpointing, all ranks
take part); the loop's own state (step, replay buffer, data position, RNG) is a torch pickle
written by rank 0.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch

LOOP_STATE = "loop_state.pt"
MARKER = "COMPLETE"


class Checkpointable(Protocol):
    def save(self, directory: str) -> None: ...

    def load(self, directory: str) -> None: ...


def _barrier():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _is_main() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0


def save(run_dir: str | Path, step: int, trainer: Checkpointable | None, loop_state: dict[str, Any]) -> Path:
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f".step_{step:06d}.tmp"
    if _is_main():
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tmp.mkdir(parents=True)
    _barrier()
    if trainer is not None:
        trainer.save(str(tmp / "model"))
    _barrier()
    if _is_main():
        torch.save(loop_state, tmp / LOOP_STATE)
        (tmp / MARKER).write_text(str(step))
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = root / "latest.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, root / "latest")
        _fsync_dir(root)
    _barrier()
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def latest(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / MARKER).exists():
        raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def resolve(load: str, run_dir: str | Path) -> Path | None:
    """The checkpoint a run should resume from: none, the latest under run_dir ("auto"), or a path."""
    if not load:
        return None
    if load == "auto":
        return latest(run_dir)
    path = Path(load)
    if not (path / MARKER).exists():
        raise FileNotFoundError(f"run.load={load!r} is not a complete checkpoint directory (no {MARKER} file)")
    return path


def load(path: Path, trainer: Checkpointable | None) -> dict[str, Any]:
    if trainer is not None:
        trainer.load(str(path / "model"))
    return torch.load(path / LOOP_STATE, weights_only=False)
