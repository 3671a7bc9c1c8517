"""Run checkpoints that survive a kill at any moment.

A checkpoint is written into a hidden temporary directory, completed with a `MANIFEST.json` (every
file's size) and then a `COMPLETE` marker, renamed into place (`step_000010`), and only then is
`latest` repointed (write-then-rename). A process killed at any point therefore leaves `latest`
naming a complete checkpoint, and a half-written directory is never mistaken for one.

A checkpoint damaged afterwards (a truncated or missing file, a shard overwritten) is refused at
load with an error naming the directory and the file, and the latest earlier checkpoint that is
still whole, to load instead. `--load auto` resumes from the latest complete checkpoint (the main
job says so when there is none).

The model and optimizer are saved by the trainer (Megatron distributed checkpointing, all ranks
take part); the loop's own state (step, replay buffer, data position, RNG) is a torch pickle
written by rank 0.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any, Protocol

import torch

from megatron_zppo.errors import RunError

LOOP_STATE = "loop_state.pt"
MANIFEST = "MANIFEST.json"
MARKER = "COMPLETE"


class CheckpointError(RunError):
    """A checkpoint that cannot be resumed: incomplete, damaged, or written for another model or
    other optimizer settings."""


class DamagedCheckpoint(CheckpointError):
    """Files of a complete checkpoint are missing, truncated or unreadable: an earlier one may do."""


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
        _write_manifest(tmp)
        (tmp / MARKER).write_text(str(step))
        _fsync_dir(tmp)
        # An older checkpoint of this step (a resumed run saving it again) moves aside in one rename:
        # deleting it in place could leave a half-deleted directory that `latest` still names.
        old = root / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        pointer = root / "latest.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, root / "latest")
        _fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
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


def _write_manifest(directory: Path) -> None:
    files = {str(f.relative_to(directory)): f.stat().st_size for f in sorted(directory.rglob("*")) if f.is_file()}
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=0))


def damage(path: Path) -> list[str]:
    """What is wrong with the files of a complete checkpoint (empty: nothing that sizes can tell;
    a shard overwritten in place shows only when it is read)."""
    if not (path / MANIFEST).is_file():  # written before manifests existed: check what we can
        return [] if (path / LOOP_STATE).is_file() else [f"{LOOP_STATE} is missing"]
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"]
    problems = []
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            problems.append(f"{name} is missing")
        elif f.stat().st_size != size:
            problems.append(f"{name} is {f.stat().st_size} bytes, the save wrote {size} (truncated or overwritten)")
    return problems


def _step_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest step first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step_*") if (p / MARKER).is_file()), key=lambda p: p.name)


def earlier_whole(path: Path) -> Path | None:
    """The latest complete, undamaged checkpoint next to `path` with an earlier step."""
    earlier = [p for p in _step_dirs(path.parent) if p.name < path.name and not damage(p)]
    return earlier[-1] if earlier else None


def _instead(path: Path) -> str:
    other = earlier_whole(path)
    if other is None:
        return f"no earlier complete checkpoint is left in {path.parent}"
    return f"the earlier complete checkpoint {other} can be loaded instead (--load {other})"


def latest(run_dir: str | Path, log=print) -> Path | None:
    """The checkpoint `latest` names; if that is gone or incomplete (removed by hand, or a run died
    between renaming a checkpoint into place and repointing), the newest complete one, said so."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    named = root / pointer.read_text().strip() if pointer.is_file() else None
    if named is not None and (named / MARKER).is_file():
        return named
    complete = _step_dirs(root)
    if not complete:
        if named is not None:
            raise CheckpointError(f"{pointer} names {named}, which is not a complete checkpoint, and there is no "
                                  f"other complete checkpoint in {root}")
        return None
    why = f"{pointer} names {named}, which is not a complete checkpoint" if named else f"{pointer} is missing"
    log(f"checkpoint: {why}; using the newest complete checkpoint, {complete[-1]}")
    return complete[-1]


def resolve(load: str, run_dir: str | Path, log=None) -> Path | None:
    """The checkpoint a run should resume from: none, the latest under run_dir ("auto"; None when
    there is none), or a path. `log` (default: print, on rank 0) hears which one "auto" fell back to."""
    log = log or (print if _is_main() else (lambda *_: None))
    if not load:
        return None
    if load == "auto":
        return latest(run_dir, log)
    path = Path(load)
    if not (path / MARKER).exists():
        what = "does not exist" if not path.exists() else f"is not a complete checkpoint directory (no {MARKER} file)"
        raise CheckpointError(f"run.load={load!r} {what}; expected a directory such as "
                              f"{Path(run_dir) / 'checkpoints' / 'step_000010'}, or auto")
    return path


# What a damaged torch pickle raises: a cut-off zip, random bytes, a file cut inside a record.
_UNREADABLE = (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, OSError, ValueError)


def load(path: Path, trainer: Checkpointable | None) -> dict[str, Any]:
    path = Path(path)
    problems = damage(path)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DamagedCheckpoint(f"checkpoint {path} is damaged: {problems[0]}{more}; {_instead(path)}")
    try:
        state = torch.load(path / LOOP_STATE, weights_only=False)
    except _UNREADABLE as e:
        raise DamagedCheckpoint(f"checkpoint {path}: {LOOP_STATE} cannot be read ({type(e).__name__}: "
                                f"{str(e)[:200]}); {_instead(path)}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise DamagedCheckpoint(f"checkpoint {path}: {LOOP_STATE} holds {type(state).__name__}, not a loop state "
                                f"with a step; {_instead(path)}")
    if trainer is not None:
        try:
            trainer.load(str(path / "model"))
        except DamagedCheckpoint as e:
            raise DamagedCheckpoint(f"{e}; {_instead(path)}") from None
    return state
