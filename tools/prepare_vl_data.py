"""Turn (image, question, short answer) sources into this project's question file, with the
paper's filters and, optionally, its data recipe; say what was dropped and why.

    python tools/prepare_vl_data.py --source data.jsonl --out vl/ [--question-field problem ...]
    python tools/prepare_vl_data.py --source first.parquet --source second/ --subset-field dataset \\
        --tier-caps tier_caps.yaml --canonical canonical.yaml --out vl/      # the recipe: docs/vision-language.md

Each `--source` is a local JSONL or Parquet file, a directory written by `datasets.save_to_disk`,
or a dataset name `datasets.load_dataset` can fetch; given more than once, the first has the highest
priority, and every source is read with the same field names. Records are kept when the answer has
at most `--max-answer-chars` characters (the paper: 512) and every image decodes and is at least
`--min-side` pixels on each side (the paper: 100); a record without an image is kept only with
`--allow-text-only`. Videos are kept when they decode (PyAV, every frame) with frames at least
`--min-side` pixels on each side; a record with a video and no image counts as having an image.
Exact duplicate questions are dropped. Images are written to `<out>/images/` as PNG files, videos
copied as they are to `<out>/videos/`, both referenced by path, so the output is a plain JSONL the
main job reads (`data.train: [{kind: jsonl, path: <out>/questions.jsonl}]`); with
`--route-free-form judge`, free-form answers go to `<out>/free_form.jsonl`, for a source entry with
`grader: judge`. `<out>/report.json` counts the kept records (per source, per sub-dataset) and the
dropped ones by reason, with examples, and the options used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron_zppo.data import DataError, SourceConfig, question_from_row, source_rows  # noqa: E402
from megatron_zppo.data_recipe import (DUPLICATE, Recipe, Record, choose_pass_rate_sources, digest,  # noqa: E402
                                       fill_cap, is_free_form, load_mapping, parse_canonical, parse_tier_caps,
                                       plan, question_key)
from megatron_zppo.images import open_image  # noqa: E402
from megatron_zppo.videos import probe_video, video_bytes  # noqa: E402

PAPER_MAX_ANSWER_CHARS = 512
PAPER_MIN_SIDE = 100


def source_config(args, path: str) -> SourceConfig:
    kind = {".jsonl": "jsonl", ".parquet": "parquet"}.get(Path(path).suffix, "hf")
    return SourceConfig(kind=kind, path=path, split=args.split, question_field=args.question_field,
                        answer_field=args.answer_field, images_field=args.images_field,
                        videos_field=args.videos_field, id_field=args.id_field,
                        check_images=False)  # judged below, with the size filter and a reason per record


def read_records(args, canonical: dict[str, str]) -> tuple[list[Record], list[str]]:
    """Every source's well-formed records, and the malformed ones named. With several sources an id
    becomes `<source number>:<id>`, so that two sources' ids (often both row numbers) stay apart."""
    records, problems = [], []
    for k, path in enumerate(args.source):
        cfg, fields = source_config(args, path), set()
        for n, (where, row, err) in enumerate(source_rows(cfg)):  # rows: the fields a Question drops too
            try:
                if err:
                    raise DataError(err)
                q = question_from_row(row, cfg, where)
            except (DataError, ValueError) as e:  # as the main job's loader reports it
                problems.append(f"{where}: {e}")
                continue
            fields.update(row)
            q = replace(q, id=f"{k + 1}:{q.id}") if len(args.source) > 1 else q
            rate = row.get(args.pass_rate_field) if args.pass_rate_field else None
            records.append(Record(q, k, n, where, _subset(row, args.subset_field, canonical, where), rate))
        if args.subset_field and fields and args.subset_field not in fields:
            raise DataError(f"source {path}: no record has the sub-dataset field {args.subset_field!r} "
                            f"(fields present: {sorted(fields)}); check --subset-field")
    return records, problems


def _subset(row: dict, field: str | None, canonical: dict[str, str], where: str) -> str | None:
    if not field:
        return ""
    name = row.get(field)
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise DataError(f"{where}: sub-dataset field {field!r} is {name!r:.60}; expected a name (a string)")
    return canonical.get(name, name)


def check(q, max_answer_chars: int, min_side: int, allow_text_only: bool) -> tuple[str | None, list]:
    """(why the record is dropped or None, its images decoded): each image is read once."""
    if len(q.answer) > max_answer_chars:
        return f"answer longer than {max_answer_chars} characters", []
    if not q.images and not q.videos and not allow_text_only:
        return "no image", []
    decoded = []
    for ref in q.images:
        try:
            img = open_image(ref)
        except Exception:  # noqa: BLE001 - PIL raises many types for bad files; all mean "unreadable"
            return "image unreadable", []
        if min(img.size) < min_side:
            return "image too small", []
        decoded.append(img)
    for ref in q.videos:
        try:
            info = probe_video(ref)  # no frame kept: a long video's would not fit in memory
        except Exception:  # noqa: BLE001 - FFmpeg raises many types for bad files; all mean "unreadable"
            return "video unreadable", []
        if min(info.height, info.width) < min_side:
            return "video too small", []
    return None, decoded


class Writer:
    """Judges each record the recipe reaches (the paper's filters, then duplicates) and writes the
    kept ones' media as it goes; their rows are written at the end, in source order."""

    def __init__(self, out: Path, args):
        self.out, self.args = out, args
        self.seen: set[tuple] = set()
        self.kept: list[tuple[Record, dict]] = []

    def admit(self, r: Record) -> str | None:
        q, a = r.question, self.args
        reason, images = check(q, a.max_answer_chars, a.min_side, a.allow_text_only)
        if reason:
            return reason
        videos = [video_bytes(ref) for ref in q.videos]
        pixels = [digest(f"{i.size}".encode() + i.tobytes()) for i in images]  # the same image in another file too
        key = question_key(q.text, pixels + [digest(v) for v in videos])
        if key in self.seen:
            return DUPLICATE
        self.seen.add(key)
        self.kept.append((r, self._row(r, images, videos)))
        return None

    def _row(self, r: Record, images: list, videos: list[bytes]) -> dict:
        q, paths, video_paths = r.question, [], []
        stem = f"{r.source + 1}_{r.index}_{_safe(q.id)}"  # source and position: unique, whatever the ids
        for k, img in enumerate(images):
            path = self.out / "images" / f"{stem}_{k}.png"
            img.save(path)
            paths.append(str(path.resolve()))
        for k, (ref, data) in enumerate(zip(q.videos, videos)):  # as given: re-encoding would change frames
            path = self.out / "videos" / f"{stem}_{k}{_suffix(ref)}"
            path.write_bytes(data)
            video_paths.append(str(path.resolve()))
        meta = {"source": self.args.source[r.source]} | ({"subset": r.subset} if r.subset else {})
        if self.args.route_free_form and is_free_form(q.answer, self.args.free_form_min_words):
            meta["grader"] = self.args.route_free_form
        row = {"id": q.id, "question": q.text, "answer": q.answer, "images": paths}
        return row | ({"videos": video_paths} if video_paths else {}) | {"metadata": meta}

    def finish(self) -> dict[str, int]:
        """Writes questions.jsonl (and free_form.jsonl when any answer is routed); rows per file."""
        rows = [row for _, row in sorted(self.kept, key=lambda t: (t[0].source, t[0].index))]
        files = {"questions.jsonl": [r for r in rows if "grader" not in r["metadata"]],
                 "free_form.jsonl": [r for r in rows if "grader" in r["metadata"]]}
        for name, file_rows in files.items():
            if not file_rows and name != "questions.jsonl":
                (self.out / name).unlink(missing_ok=True)  # not a stale one from an earlier run
                continue
            (self.out / f"{name}.tmp").write_text("".join(json.dumps(r) + "\n" for r in file_rows), encoding="utf-8")
            (self.out / f"{name}.tmp").replace(self.out / name)
        return {name: len(r) for name, r in files.items() if r or name == "questions.jsonl"}


def prepare(args) -> dict:
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    canonical = parse_canonical(load_mapping(args.canonical, "canonical"), args.canonical) if args.canonical else {}
    caps = (parse_tier_caps(load_mapping(args.tier_caps, "tier caps"), args.tier_caps, canonical)
            if args.tier_caps else {})
    records, problems = read_records(args, canonical)
    carrying = {r.source for r in records if r.pass_rate is not None}
    rate_sources = (choose_pass_rate_sources(args.pass_rate_sources, args.source, carrying, args.pass_rate_field)
                    if args.pass_rate_field else frozenset())
    groups, early = plan(records, Recipe(caps, args.uncapped, args.pass_rate_field or "", args.max_pass_rate,
                                         rate_sources, args.seed))
    dropped, examples = Counter(), {}
    for reason, example in [("malformed record", p) for p in problems] + [(why, r.question.id) for r, why in early]:
        dropped[reason] += 1
        examples.setdefault(reason, example)
    writer = Writer(out, args)
    for g in groups:
        for r, reason in fill_cap(g.records, g.cap, writer.admit):
            if reason:
                dropped[reason] += 1
                examples.setdefault(reason, r.question.id)
    files = writer.finish()
    report = {"sources": args.source, "kept": len(writer.kept), "files": files, "dropped": dict(dropped),
              "examples": examples, **_kept_counts(args, writer.kept),
              **_recipe_notes(args, records, caps, rate_sources), "options": vars(args)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _kept_counts(args, kept: list[tuple[Record, dict]]) -> dict:
    by_source = Counter(args.source[r.source] for r, _ in kept)
    counts = {"kept_by_source": {s: by_source[s] for s in args.source}}
    if args.subset_field:
        counts["kept_by_subset"] = dict(sorted(Counter(r.subset for r, _ in kept).items()))
    return counts


def _recipe_notes(args, records: list[Record], caps: dict[str, int], rate_sources: frozenset[int]) -> dict:
    notes = {}
    if caps:  # a name no record carries is most likely a typo, or a name the source spells differently
        notes["tier_names_not_seen"] = sorted(set(caps) - {r.subset for r in records})
    if args.pass_rate_field:
        notes["pass_rate"] = {"sources": [args.source[k] for k in sorted(rate_sources)],
                              "missing_kept": sum(r.pass_rate is None for r in records if r.source in rate_sources)}
    return notes


def _suffix(ref) -> str:
    """A local file's own extension; else .mp4 (FFmpeg finds the container from the bytes anyway)."""
    return Path(ref).suffix if isinstance(ref, str) and Path(ref).is_file() and Path(ref).suffix else ".mp4"


def _safe(qid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in qid)[:80]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, action="append",
                    help="a source; give several in priority order, the first wins (repeatable)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--question-field", default="question")
    ap.add_argument("--answer-field", default="answer")
    ap.add_argument("--images-field", default="images")
    ap.add_argument("--videos-field", default="videos")
    ap.add_argument("--id-field", default="id")
    ap.add_argument("--max-answer-chars", type=int, default=PAPER_MAX_ANSWER_CHARS)
    ap.add_argument("--min-side", type=int, default=PAPER_MIN_SIDE)
    ap.add_argument("--allow-text-only", action="store_true")
    ap.add_argument("--subset-field", help="the record field naming the record's sub-dataset")
    ap.add_argument("--canonical", help="YAML/JSON file {canonical name: [sub-dataset names]}; a sub-dataset "
                    "found in several sources is kept from the first only")
    ap.add_argument("--tier-caps", help="YAML/JSON file {cap: [sub-dataset names]}: at most cap records of each, "
                    "a seeded random sample")
    ap.add_argument("--uncapped", choices=("keep", "drop"), default="keep",
                    help="what happens to a sub-dataset in no tier (default: keep all of it)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the capped sub-datasets' samples")
    ap.add_argument("--pass-rate-field", help="the record field holding a reference model's pass rate")
    ap.add_argument("--max-pass-rate", type=float, help="drop records whose pass rate is above this")
    ap.add_argument("--pass-rate-sources", nargs="+", help="the sources the pass-rate filter applies to (numbers "
                    "in the order given, or paths as given); default: every source whose records have the field")
    ap.add_argument("--route-free-form", choices=("judge",), help="give free-form answers this grader")
    ap.add_argument("--free-form-min-words", type=int, default=4,
                    help="an answer with at least this many words is free-form (default 4)")
    args = ap.parse_args(argv)
    _check_args(ap, args)
    return args


def _check_args(ap: argparse.ArgumentParser, args) -> None:
    if len(set(args.source)) != len(args.source):
        ap.error(f"--source: a source is given twice in {args.source}")
    if (args.canonical or args.tier_caps) and not args.subset_field:
        ap.error("--canonical and --tier-caps need --subset-field (the field naming each record's sub-dataset)")
    if args.uncapped == "drop" and not args.tier_caps:
        ap.error("--uncapped drop needs --tier-caps (without tiers every sub-dataset is in no tier)")
    if bool(args.pass_rate_field) != (args.max_pass_rate is not None):
        ap.error("--pass-rate-field and --max-pass-rate go together")
    if args.pass_rate_sources and not args.pass_rate_field:
        ap.error("--pass-rate-sources needs --pass-rate-field and --max-pass-rate")
    if args.free_form_min_words < 1:
        ap.error(f"--free-form-min-words must be at least 1, got {args.free_form_min_words}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = prepare(args)
    except (DataError, FileNotFoundError) as e:
        print(f"prepare_vl_data: {e}", file=sys.stderr)
        return 2
    print(f"kept {report['kept']} records; dropped: {report['dropped'] or 'none'}")
    print(f"wrote {', '.join(str(Path(args.out) / f) for f in [*report['files'], 'report.json'])}")
    if "free_form.jsonl" in report["files"]:
        print(f"train on both: data.train: [{{kind: jsonl, path: {Path(args.out) / 'questions.jsonl'}}}, "
              f"{{kind: jsonl, path: {Path(args.out) / 'free_form.jsonl'}, grader: {args.route_free_form}}}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
