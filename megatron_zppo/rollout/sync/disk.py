"""The disk transport's writer: one safetensors directory per weight version, visible only once complete."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from safetensors.torch import save_file

from megatron_zppo.rollout.sync.buckets import DEFAULT_BUCKET_BYTES, NamedTensor, bucketed

_SAFE_VERSION = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # no leading dot: "..", and our temp dirs
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def write_safetensors_dir(
    named_tensors: Iterable[NamedTensor],
    root: str | Path,
    version: str,
    *,
    shard_bytes: int = DEFAULT_BUCKET_BYTES,
    support_dir: str | Path | None = None,
) -> Path:
    """Write `root/<version>/model-NNNNN.safetensors` so that a reader never sees a half-written dir.

    Files go into a hidden temporary directory that is renamed into place only once every shard is
    flushed to disk: a server told to load `root/<version>` either finds all of it or none.
    """
    if not _SAFE_VERSION.fullmatch(version):
        raise ValueError(f"weight version {version!r} must be a plain file name (letters, digits, ._-; no leading dot)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the server may run as another user
    try:
        if support_dir is not None:
            for src in Path(support_dir).iterdir():  # config.json, tokenizer files: SGLang reads them
                skip = src.name.endswith(_WEIGHT_SUFFIXES) or src.name.endswith(".index.json")
                if src.is_file() and not skip:
                    shutil.copy2(src, tmp / src.name)
        for index, (shard, _) in enumerate(bucketed(named_tensors, shard_bytes)):
            path = tmp / f"model-{index + 1:05d}.safetensors"
            save_file({name: t.detach().cpu().contiguous() for name, t in shard}, str(path))
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # re-sending a version replaces it; only this narrow window is not atomic
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
