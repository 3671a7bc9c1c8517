"""Question sources: local JSONL/Parquet files, HF `datasets`, and reasoning-gym generators.

Every source yields `Question`s. A malformed record (bad JSON, missing or empty fields, an image
or video that is missing or cannot be decoded) is reported with its file and line (or row): it stops the
run unless the source says `skip_bad_records: true`, in which case it is skipped and logged. A
source with no usable record stops the run before it starts.
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from megatron_zppo.config_io import Range
from megatron_zppo.errors import RunError
from megatron_zppo.images import image_problem
from megatron_zppo.core.records import Question
from megatron_zppo.videos import video_problem


@dataclass(frozen=True)
class SourceConfig:
    """One question source. `kind`: jsonl | parquet | hf | reasoning_gym | benchmark."""

    kind: str  # jsonl | parquet | hf | reasoning_gym | benchmark (a benchmark's release: `task` names its converter)
    path: str = ""  # file for jsonl/parquet, dataset name or directory for hf
    split: str = "train"  # hf: the dataset split
    question_field: str = "question"  # record field: the question text
    answer_field: str = "answer"  # record field: the gold answer
    images_field: str = "images"  # record field: an image or a list of them (optional)
    videos_field: str = "videos"  # record field: a video or a list of them (optional)
    id_field: str = "id"  # record field: the question id; missing: file stem and row
    grader: str = ""  # stored in metadata["grader"]; empty: the reward's default
    task: str = ""  # reasoning_gym task name; benchmark: the converter (docs/evaluation.md)
    size: Annotated[int, Range(ge=0)] = 0  # reasoning_gym: number of questions
    seed: Annotated[int, Range(ge=0)] = 0  # reasoning_gym: generator seed
    task_config: dict[str, Any] = field(default_factory=dict)  # reasoning_gym: the task's generator options
    skip_bad_records: bool = False  # false: a bad record stops the run, naming it; true: skip and log it
    check_images: bool = True  # decode every image and video once at load time (a bad one is a bad record)

    def __post_init__(self):
        if self.kind not in ("jsonl", "parquet", "hf", "reasoning_gym", "benchmark"):
            raise ValueError(f"data source kind {self.kind!r} unknown; expected jsonl, parquet, hf, reasoning_gym "
                             "or benchmark")


class DataError(RunError, ValueError):
    pass


def load_source(cfg: SourceConfig) -> tuple[list[Question], list[str]]:
    """(questions, problems): problems name each skipped record and why."""
    if cfg.kind == "reasoning_gym":
        return _reasoning_gym(cfg), []
    if cfg.kind == "benchmark":
        return _benchmark(cfg)
    questions, problems = [], []
    for where, row, err in source_rows(cfg):
        try:
            if err:
                raise DataError(err)
            q = question_from_row(row, cfg, where)
            bad = []
            if cfg.check_images:
                bad = [p for p in [*map(image_problem, q.images), *map(video_problem, q.videos)] if p]
            if bad:
                raise DataError(bad[0])
            questions.append(q)
        except (DataError, ValueError) as e:
            problems.append(f"{where}: {e}")
    return questions, problems


def source_rows(cfg: SourceConfig) -> list[tuple[str, dict, str | None]]:
    """A file or dataset source's records as (where, row, error or None), rows as read (every field)."""
    if cfg.kind == "jsonl":
        rows = list(_jsonl_rows(cfg.path))
    elif cfg.kind == "parquet":
        rows = _parquet_rows(cfg.path)
    else:
        rows = _hf_rows(cfg)
    if not rows:
        raise DataError(f"data source {cfg.path}: the {cfg.kind} source holds no records (an empty file?); "
                        "expected one question per record")
    return rows


def _check_file(path: str, kind: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise DataError(f"data file {path} is a directory; a {kind} source reads one file")
    if not p.is_file():
        raise DataError(f"data file {path} does not exist (resolved to {p.resolve()})")
    return p


def _parquet_rows(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_file(path, "parquet")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:  # not Parquet, truncated, or a damaged page
        raise DataError(f"data file {path} cannot be read as Parquet ({type(e).__name__}: {e})") from None
    return [(f"{path} row {i}", r, None) for i, r in enumerate(table.to_pylist())]


def _hf_rows(cfg: SourceConfig):
    """A directory written by `save_to_disk`, or anything `datasets.load_dataset` takes."""
    import datasets

    _check_offline(cfg.path)
    try:
        if (Path(cfg.path) / "state.json").exists() or (Path(cfg.path) / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(cfg.path)
            ds = ds[cfg.split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(cfg.path, split=cfg.split)
    except (OSError, ValueError, KeyError, ConnectionError) as e:  # no such dataset or split, damaged files
        raise DataError(f"hf data source {cfg.path!r} (split {cfg.split!r}) cannot be loaded: "
                        f"{type(e).__name__}: {e}") from None
    return [(f"{cfg.path}[{cfg.split}] row {i}", r, None) for i, r in enumerate(ds)]


def _check_offline(path: str) -> None:
    """The run is offline-first: a data set name that is neither on disk nor in the HF cache (a typo
    of a local path, most likely) is refused here, not looked up on the hub for minutes."""
    from huggingface_hub import constants

    if Path(path).exists() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("0", "false", "no"):
        return
    if (Path(constants.HF_HUB_CACHE) / ("datasets--" + path.replace("/", "--"))).is_dir():
        return
    raise DataError(f"hf data source {path!r}: the local path {Path(path).resolve()} does not exist and {path!r} is "
                    "not in the Hugging Face cache; the run is offline-first and does not download data sets: fetch "
                    f"it first (`hf download --repo-type dataset {path}`), set HF_HUB_OFFLINE=0 to allow downloads, "
                    "or fix the path")


def _jsonl_rows(path: str):
    """Decoded line by line, so bytes that are not UTF-8 make one bad record, not a dead file."""
    p = _check_file(path, "jsonl")
    for n, raw in enumerate(p.read_bytes().splitlines(), start=1):
        where = f"{path} line {n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield where, None, f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})"
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield where, None, f"invalid JSON ({e.msg} at column {e.colno})"
            continue
        yield where, row, None if isinstance(row, dict) else f"record is not a JSON object (got a {_json_type(row)})"


def _json_type(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


def question_from_row(row: dict, cfg: SourceConfig, where: str) -> Question:
    for f in (cfg.question_field, cfg.answer_field):
        if f not in row:
            raise DataError(f"missing field {f!r} (fields present: {sorted(row)})")
    text, answer = row[cfg.question_field], row[cfg.answer_field]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"field {cfg.question_field!r} must be a non-empty string, got {text!r:.60}")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"field {cfg.answer_field!r} must be a non-empty string, got {answer!r:.60}")
    images = row.get(cfg.images_field) or ()
    images = (images,) if isinstance(images, (str, bytes, dict)) or hasattr(images, "save") else images
    if not isinstance(images, (list, tuple)):
        raise DataError(f"field {cfg.images_field!r} must be an image or a list of images, got {images!r:.60}")
    images = tuple(_image_ref(i) for i in images)
    videos = row.get(cfg.videos_field) or ()
    videos = (videos,) if isinstance(videos, (str, bytes, dict)) else videos
    if not isinstance(videos, (list, tuple)):
        raise DataError(f"field {cfg.videos_field!r} must be a video or a list of videos, got {videos!r:.60}")
    videos = tuple(_video_ref(v) for v in videos)
    raw_id = row.get(cfg.id_field, "")
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        raise DataError(f"field {cfg.id_field!r} must be a string or an integer, got {raw_id!r:.60}")
    qid = str(raw_id) or f"{Path(cfg.path).stem}:{where.rsplit(' ', 1)[-1]}"
    meta = {"grader": cfg.grader} if cfg.grader else {}
    return Question(qid, text, answer, images, source=cfg.path, metadata=meta, videos=videos)


def _image_ref(img) -> str | bytes:
    """A path, URL, data URI or bytes as given; an HF `Image` feature's PIL image or {bytes, path}
    dict becomes PNG bytes / its bytes or path."""
    if isinstance(img, (str, bytes)):
        return img
    if isinstance(img, dict) and (img.get("bytes") or img.get("path")):
        return img.get("bytes") or img["path"]
    if hasattr(img, "save"):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
    raise DataError(f"image entry of type {type(img).__name__} is not a path, URL, bytes or image")


def _video_ref(video) -> str | bytes:
    """A path, URL, data URI or bytes as given; an HF-style {bytes, path} dict becomes its bytes or path."""
    if isinstance(video, (str, bytes)):
        return video
    if isinstance(video, dict) and (video.get("bytes") or video.get("path")):
        return video.get("bytes") or video["path"]
    raise DataError(f"video entry of type {type(video).__name__} is not a path, URL or bytes")


def _reasoning_gym(cfg: SourceConfig) -> list[Question]:
    import reasoning_gym

    if cfg.size < 1:
        raise DataError(f"reasoning_gym source {cfg.task!r}: size must be >= 1, got {cfg.size!r}")
    ds = reasoning_gym.create_dataset(cfg.task, seed=cfg.seed, size=cfg.size, **cfg.task_config)
    out = []
    for i in range(cfg.size):
        e = ds[i]
        entry = {"question": e["question"], "answer": e["answer"], "metadata": e["metadata"]}
        out.append(Question(f"{cfg.task}/{cfg.seed}/{i}", e["question"], str(e["answer"]), source=cfg.task,
                            metadata={"grader": cfg.grader or "task", "entry": entry, "task": cfg.task}))
    return out


def _benchmark(cfg: SourceConfig) -> tuple[list[Question], list[str]]:
    """A benchmark's release through its converter; its media checked like any source's."""
    from megatron_zppo.evaluation.benchmarks.registry import convert

    questions, problems = [], []
    for q in convert(cfg.task, cfg.path):
        bad = [p for p in [*map(image_problem, q.images), *map(video_problem, q.videos)] if p] if cfg.check_images \
            else []
        if bad:
            problems.append(f"{q.id}: {bad[0]}")
            continue
        questions.append(replace(q, metadata={**q.metadata, "grader": cfg.grader}) if cfg.grader else q)
    return questions, problems


def load_questions(sources: list[SourceConfig], log=print) -> list[Question]:
    questions: list[Question] = []
    for cfg in sources:
        qs, problems = load_source(cfg)
        if problems and not cfg.skip_bad_records:
            shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise DataError(f"{len(problems)} bad record(s) in data source {cfg.path or cfg.task}:\n  {shown}\n"
                            "fix them, or set skip_bad_records: true on this source to train without them")
        if not qs and problems:
            raise DataError(f"no usable question in data source {cfg.path or cfg.task}: all {len(problems)} "
                            f"record(s) are bad, e.g. {problems[0]}; refusing to start")
        for p in problems[:20]:
            log(f"data: skipped {p}")
        if len(problems) > 20:
            log(f"data: ... and {len(problems) - 20} more skipped records in {cfg.path or cfg.task}")
        questions += qs
    if not questions:
        names = [c.path or c.task for c in sources]
        raise DataError(f"no usable question in data sources {names}; refusing to start")
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"question id {dup!r} appears more than once across data sources {[c.path or c.task for c in sources]}")
    return questions


class QuestionStream:
    """Endless, epoch-shuffled stream of questions whose position is part of the checkpoint."""

    def __init__(self, questions: list[Question], seed: int = 0):
        self.questions, self.seed = questions, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.questions)))
        random.Random(self.seed * 7919 + self.epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[Question]:
        out = []
        while len(out) < n:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self.questions[self._order[self.pos]])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "n": len(self.questions), "seed": self.seed}

    def load_state_dict(self, s: dict[str, int]) -> None:
        if s["n"] != len(self.questions):
            raise DataError(f"data position was saved for {s['n']} questions, the data now has "
                             f"{len(self.questions)}; resuming would replay different questions")
        self.epoch, self.pos, self.seed = s["epoch"], s["pos"], s["seed"]
        self._order = self._shuffle()
