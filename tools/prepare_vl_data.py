"""Turn an (image, question, short answer) source into this project's question file, with the
paper's filters, and say what was dropped and why.

    python tools/prepare_vl_data.py --source data.jsonl --out vl/ [--question-field problem ...]
    python tools/prepare_vl_data.py --source lmms-lab/some-dataset --split train --out vl/

`--source` is a local JSONL or Parquet file, a directory written by `datasets.save_to_disk`, or a
dataset name `datasets.load_dataset` can fetch. Records are kept when the answer has at most
`--max-answer-chars` characters (the paper: 512) and every image decodes and is at least
`--min-side` pixels on each side (the paper: 100); a record without an image is kept only with
`--allow-text-only`. Videos (`--videos-field`, default `videos`) are kept when they decode (PyAV,
every frame) with frames at least `--min-side` pixels on each side; a record with a video and no
image counts as having an image. Images are written to `<out>/images/` as PNG files, videos copied
as they are to `<out>/videos/`, and both referenced by path, so the output is a plain JSONL the main job reads (`data.train: [{kind: jsonl, path: <out>/questions.jsonl}]`).
`<out>/report.json` counts the kept records and the dropped ones by reason, with examples.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron_zppo.data import DataError, SourceConfig, load_source  # noqa: E402
from megatron_zppo.images import open_image  # noqa: E402
from megatron_zppo.videos import probe_video, video_bytes  # noqa: E402

PAPER_MAX_ANSWER_CHARS = 512
PAPER_MIN_SIDE = 100


def source_config(args) -> SourceConfig:
    path = Path(args.source)
    kind = {".jsonl": "jsonl", ".parquet": "parquet"}.get(path.suffix, "hf")
    return SourceConfig(kind=kind, path=args.source, split=args.split, question_field=args.question_field,
                        answer_field=args.answer_field, images_field=args.images_field,
                        videos_field=args.videos_field, id_field=args.id_field,
                        check_images=False)  # judged below, with the size filter and a reason per record


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


def prepare(args) -> dict:
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    questions, problems = load_source(source_config(args))
    dropped, examples, kept = Counter(), {}, 0
    for p in problems:  # records that are not questions at all (bad JSON, missing fields)
        dropped["malformed record"] += 1
        examples.setdefault("malformed record", p)
    with open(out / "questions.jsonl.tmp", "w", encoding="utf-8") as f:
        for q in questions:
            reason, images = check(q, args.max_answer_chars, args.min_side, args.allow_text_only)
            if reason:
                dropped[reason] += 1
                examples.setdefault(reason, q.id)
                continue
            paths = []
            for k, img in enumerate(images):
                path = out / "images" / f"{_safe(q.id)}_{k}.png"
                img.save(path)
                paths.append(str(path.resolve()))
            videos = []
            for k, ref in enumerate(q.videos):  # the file as given: re-encoding would change its frames
                path = out / "videos" / f"{_safe(q.id)}_{k}{_suffix(ref)}"
                path.write_bytes(video_bytes(ref))
                videos.append(str(path.resolve()))
            row = {"id": q.id, "question": q.text, "answer": q.answer, "images": paths}
            f.write(json.dumps(row | ({"videos": videos} if videos else {})) + "\n")
            kept += 1
    (out / "questions.jsonl.tmp").replace(out / "questions.jsonl")
    report = {"source": args.source, "kept": kept, "dropped": dict(dropped), "examples": examples,
              "filters": {"max_answer_chars": args.max_answer_chars, "min_side": args.min_side,
                          "allow_text_only": args.allow_text_only}}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _suffix(ref) -> str:
    """A local file's own extension; else .mp4 (FFmpeg finds the container from the bytes anyway)."""
    return Path(ref).suffix if isinstance(ref, str) and Path(ref).is_file() and Path(ref).suffix else ".mp4"


def _safe(qid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in qid)[:80]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True)
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
    args = ap.parse_args(argv)
    try:
        report = prepare(args)
    except (DataError, FileNotFoundError) as e:
        print(f"prepare_vl_data: {e}", file=sys.stderr)
        return 2
    print(f"kept {report['kept']} records; dropped: {report['dropped'] or 'none'}")
    print(f"wrote {Path(args.out) / 'questions.jsonl'} and {Path(args.out) / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
