"""Reading a benchmark's public release from local files, and writing its items as questions.

Every converter reads the files a user downloaded (nothing is fetched here) through `read_rows`,
which names the file, the column and what was expected when the layout is not the one the
converter follows. Options are written into the question one per line, `A. text` (the paper does
not say how it writes them; the judge sees them the same way), and each converter removes its
benchmark's own answer-format directives, because every prompt ends with the project's closer.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from megatron_zppo.core.records import Question
from megatron_zppo.errors import RunError

LETTERS = string.ascii_uppercase


class LayoutError(RunError, ValueError):
    pass


def data_files(path: str | Path, patterns: Sequence[str] = ("*.parquet", "*.jsonl", "*.json", "*.tsv")) -> list[Path]:
    """`path` itself if it is a file, else the files under it matching `patterns` (sorted)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise LayoutError(f"benchmark data {p} does not exist; point the suite at the downloaded files")
    found = sorted({f for pat in patterns for f in p.rglob(pat)})
    if not found:
        raise LayoutError(f"benchmark data {p}: no {' / '.join(patterns)} files under it")
    return found


def _rows_of(f: Path) -> Iterable[dict]:
    if f.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(f).to_pylist()
    elif f.suffix == ".jsonl":
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)
    elif f.suffix == ".json":
        data = json.loads(f.read_text(encoding="utf-8"))
        yield from (data if isinstance(data, list) else data.get("data") or data.values())
    elif f.suffix in (".tsv", ".csv"):
        import csv

        with f.open(encoding="utf-8-sig", newline="") as fh:  # -sig: a spreadsheet's BOM is no column name
            yield from csv.DictReader(fh, delimiter="\t" if f.suffix == ".tsv" else ",")
    elif f.suffix == ".arrow":
        import pyarrow as pa

        try:  # datasets' save_to_disk writes the Arrow stream format; a file-format .arrow is read as well
            table = pa.ipc.open_stream(f).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(f).read_all()
        yield from table.to_pylist()
    else:
        raise LayoutError(f"benchmark file {f}: format {f.suffix!r} unknown; expected .parquet, .jsonl, .json, "
                          ".tsv, .csv or .arrow")


def read_rows(path: str | Path | Sequence[Path], columns: Sequence[str], layout: str,
              patterns: Sequence[str] = ("*.parquet", "*.jsonl", "*.json", "*.tsv"),
              rename: Callable[[dict], dict] | None = None) -> list[tuple[Path, dict]]:
    """(file, row) for every row of the benchmark's files (`path`, a file or folder, or a list of
    files), each checked to hold `columns` after `rename`; `layout` names the release the converter
    follows (for the error)."""
    out = []
    files = list(path) if isinstance(path, (list, tuple)) else data_files(path, patterns)
    for f in files:
        try:
            rows = list(_rows_of(f))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise LayoutError(f"benchmark file {f} cannot be read ({e}); expected {layout}") from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise LayoutError(f"benchmark file {f}, row {i}: not a record; expected {layout}")
            row = rename(row) if rename else row
            missing = [c for c in columns if c not in row]
            if missing:
                raise LayoutError(f"benchmark file {f}, row {i}: column {missing[0]!r} is missing (columns present: "
                                  f"{sorted(row)}); expected {layout}")
            out.append((f, row))
    if not out:
        raise LayoutError(f"benchmark data {path}: no rows; expected {layout}")
    return out


def field(row: dict, column: str, f: Path, kinds: tuple[type, ...] = (str,)) -> Any:
    """`row[column]`, checked to be one of `kinds`, with the file and column named if not."""
    value = row.get(column)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        names = " or ".join(k.__name__ for k in kinds)
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {value!r:.80} ({type(value).__name__}); "
                          f"expected {names}")
    return value


def with_options(question: str, options: Sequence[str]) -> str:
    """The question with its options below it, `A. text` per line."""
    if len(options) > len(LETTERS):
        raise LayoutError(f"{len(options)} options; at most {len(LETTERS)} can be lettered")
    lines = [f"{LETTERS[i]}. {str(o).strip()}" for i, o in enumerate(options)]
    return f"{question.strip()}\n\n" + "\n".join(lines)


def strip_directives(text: str, patterns: Sequence[str]) -> str:
    """`text` without the benchmark's answer-format directives (regular expressions, case ignored)."""
    for p in patterns:
        text = re.sub(p, "", text, flags=re.I)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def image_ref(value, f: Path, column: str) -> str | bytes:
    """An image cell as HF releases store it ({bytes, path} dict, raw bytes, or a path relative to
    the file's folder) as a reference the loader accepts."""
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    if isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if isinstance(value, bytes) and value:
        return value
    if isinstance(value, str) and value:
        if value.startswith(("http://", "https://", "data:")):
            return value
        p = Path(value) if Path(value).is_absolute() else f.parent / value
        if not p.is_file():
            raise LayoutError(f"benchmark file {f}: column {column!r} names {value!r}, not found at {p}")
        return str(p)
    raise LayoutError(f"benchmark file {f}: column {column!r} holds {value!r:.60}; expected an image "
                      "({bytes, path} record, bytes or a path)")


def question(benchmark: str, qid: str, text: str, answer: str, *, images=(), videos=(), options=(),
             answers=(), **metadata) -> Question:
    """A benchmark item as a question; `options` and `answers` (every accepted answer) go into the
    metadata, where the rules and the judge read them."""
    meta = {"benchmark": benchmark, **metadata}
    if options:
        meta["options"] = [str(o) for o in options]
    if answers:
        meta["answers"] = [str(a) for a in answers]
    return Question(f"{benchmark}:{qid}", text, str(answer), tuple(images), source=benchmark, metadata=meta,
                    videos=tuple(videos))
