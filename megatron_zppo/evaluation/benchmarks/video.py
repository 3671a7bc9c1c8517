"""The five video benchmarks of the paper's suite: MMVU, MVBench, Video-MME without and with
subtitles, and Video-MMMU.

A video is given to the loader as a path string, checked here to exist (a missing file fails at
conversion, named, not in the middle of an evaluation). Videos are looked for under the downloaded
repository's folder, "the root": the path given when it is a folder, else the folder above the data
file's own (the layouts keep their data files one level down: videomme/, json/, Perception/...;
MMVU's validation.json lies at the root itself).

- MMVU: the repository path inside the item's `video` URL (videos/<Subject>/<n>.mp4), under the root.
- MVBench: <root>/video/<task's folder>/<video>, or <root>/<task's folder>/<video> where the zips
  were unpacked in place; the `video` branch's pre-cut copies are preferred (TASK_FOLDERS).
- Video-MME, Video-MMMU: the file anywhere under the root whose name without its suffix is the
  item's video id (the zips unpack to data/<id>.mp4, or videos/<id>.mp4, <Discipline>/<id>.mp4).

None of the five writes answer-format directives into its question field (their harnesses add
them in prompt templates), so nothing is stripped; options are written with `with_options` and the
gold answer is the letter.
"""

from __future__ import annotations

import ast
import glob
import logging
import re
from pathlib import Path

from megatron_zppo.core.records import Question
from megatron_zppo.evaluation.benchmarks.layout import (LETTERS, LayoutError, data_files, field, image_ref, question,
                                                         read_rows, with_options)
from megatron_zppo.evaluation.benchmarks.registry import converter

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov"}
# Video-MME with subtitles: at most this many subtitle lines, evenly spread over the file. The
# official protocol keeps the lines shown at the sampled frames (lmms-eval samples 32); the frames
# are sampled later, by the checkpoint's processor, so the lines are spread over the whole video.
SUBTITLE_LINES = 64
# Video-MMMU's Adaptation quiz image is the video's last frame when the release has no image column.
LAST_FRAME_NOTE = "The image for this question is the last frame of the video."

LAYOUT_MMVU = ("yale-nlp/MMVU validation.json (a JSON array; revision b937f41) with videos/<Subject>/<n>.mp4 "
               "beside it: fields id, video (https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main/<path>), "
               "question_type ('multiple-choice' | 'open-ended'), question, choices (dict A-E, all empty when "
               "open-ended; or a list), answer (a letter for multiple choice, free text otherwise), metadata.subject")
LAYOUT_MVBENCH = ("OpenGVLab/MVBench json/<task>.json (20 JSON arrays; main 2348949) with the videos unpacked under "
                  "video/<task's folder>/ (the `video` branch a776e55: star/Charades_segment, sta/sta_video_segment, "
                  "ssv2_video_mp4, nturgbd_convert, tvqa/video_fps3_hq_segment; else main's folders; main's "
                  "episodic_reasoning is a frame folder, which is not a video): fields video, question, candidates "
                  "(list), answer (the text of the right candidate), optional start/end")
LAYOUT_VIDEOMME = ("lmms-lab/Video-MME videomme/test-*.parquet (revision 3f70174, 2,700 rows) with the videos "
                   "unpacked from videos_chunked_*.zip (data/<videoID>.mp4; .MP4/.mkv also): columns video_id, "
                   "duration, domain, sub_category, videoID, question_id, task_type, question, options (list "
                   "'A. ...'), answer (letter)")
LAYOUT_VIDEOMME_SUBTITLES = LAYOUT_VIDEOMME + "; subtitles unpacked from subtitle.zip: subtitle/<videoID>.srt"
LAYOUT_VIDEOMMMU = ("lmms-lab/VideoMMMU {Perception,Comprehension,Adaptation}/test-*.parquet (card 3e9d51d; 300 rows "
                    "each) with the discipline zips unpacked under the root (<id>.mp4): columns id, question, options "
                    "(list, may be 'A. ...' prefixed), answer (letter, or the value of an open question), "
                    "question_type ('multiple-choice' | other: open), optional image (Image; Adaptation)")


def _root(path: Path, f: Path, depth: int = 1) -> Path:
    """The downloaded repository's folder (see the module's docstring)."""
    if path.is_dir():
        return path
    return f.parents[depth] if depth else f.parent


def _video_index(root: Path) -> dict[str, Path]:
    """Every video file under `root` by its name without suffix (the first in path order)."""
    index: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in VIDEO_SUFFIXES and "question_only" not in p.parts and p.is_file():
            index.setdefault(p.stem, p)
    return index


def _indexed_video(index: dict[str, Path], key: str, root: Path, f: Path, column: str, layout: str) -> str:
    if key not in index:
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {key!r}, and no video {key}.<mp4|mkv|...> "
                          f"is under {root} ({len(index)} videos there); expected {layout}")
    return str(index[key])


def _letter(answer, options: list[str], f: Path, column: str = "answer") -> str:
    gold = answer.strip().upper() if isinstance(answer, str) else ""
    if len(gold) != 1 or gold not in LETTERS[:len(options)]:
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {answer!r:.60}; expected a letter among "
                          f"{LETTERS[:len(options)]!r} (the item has {len(options)} options)")
    return gold


_PREFIX = re.compile(r"\s*\(?([A-Z])\s*[.:)]\s*")


def _unletter(options: list[str], f: Path, column: str, required: bool) -> list[str]:
    """Options without their "A. " prefixes when every one carries its own letter; a release that
    always prefixes them (`required`) fails otherwise, one that may not keeps them as they are."""
    found = [_PREFIX.match(o) for o in options]
    if all(m and m.group(1) == LETTERS[i] for i, m in enumerate(found)):
        return [o[m.end():].strip() for o, m in zip(options, found)]
    if required:
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {options!r:.120}; expected options "
                          "prefixed 'A. ', 'B. '... in order")
    return [o.strip() for o in options]


def _string_list(value, f: Path, column: str) -> list[str]:
    items = field({column: value}, column, f, (list, tuple))
    if not all(isinstance(o, str) for o in items):
        raise LayoutError(f"benchmark file {f}: column {column!r} holds {items!r:.80}; expected a list of strings")
    return list(items)


# ---------------------------------------------------------------------------------------------- MMVU

_HF_FILE = re.compile(r"^https://huggingface\.co/datasets/[^/]+/[^/]+/resolve/[^/]+/(.+)$")


def _mmvu_choices(row: dict, f: Path) -> list[str]:
    """The choices in letter order, without the empty ones that pad a question with fewer."""
    raw = field(row, "choices", f, (dict, list))
    if isinstance(raw, dict):
        if list(raw) != list(LETTERS[:len(raw)]):
            raise LayoutError(f"benchmark file {f}: column 'choices' has keys {list(raw)}; "
                              "expected A, B, C... in order")
        raw = list(raw.values())
    options = _string_list(raw, f, "choices")
    while options and not options[-1].strip():
        options.pop()
    if not all(o.strip() for o in options):
        raise LayoutError(f"benchmark file {f}: column 'choices' holds {options!r:.120}; "
                          "expected no empty choice between others")
    return options


@converter("mmvu", LAYOUT_MMVU)
def mmvu(path: Path) -> list[Question]:
    rows = read_rows(path, ["id", "video", "question_type", "question", "choices", "answer"], LAYOUT_MMVU,
                     patterns=("validation.json",))
    out = []
    for f, row in rows:
        qid, text, answer, video = (field(row, c, f) for c in ("id", "question", "answer", "video"))
        m = _HF_FILE.match(video)  # the release names each video by its download URL: the path is its tail
        local = _root(path, f, 0) / (m.group(1) if m else video)
        if not local.is_file():
            raise LayoutError(f"benchmark file {f}: column 'video' holds {video!r}, not found at {local}; "
                              f"expected {LAYOUT_MMVU}")
        meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        common = dict(videos=[str(local)], task=str(meta.get("subject", "")), question_type=row["question_type"])
        if row["question_type"] == "multiple-choice":
            options = _mmvu_choices(row, f)
            out.append(question("mmvu", qid, with_options(text, options), _letter(answer, options, f),
                                options=options, rule="choice", **common))
        elif row["question_type"] == "open-ended":
            # MMVU's judge decides; "exact" only lets a rule-first protocol accept a verbatim answer.
            out.append(question("mmvu", qid, text.strip(), answer.strip(), rule="exact", **common))
        else:
            raise LayoutError(f"benchmark file {f}: column 'question_type' holds {row['question_type']!r}; "
                              "expected 'multiple-choice' or 'open-ended'")
    return out


# ------------------------------------------------------------------------------------------- MVBench

# task (the JSON's stem) -> (its folder on the `video` branch, pre-cut where main's has clip bounds;
# its folder on main), both under video/. From the official loader's data list and lmms-eval's.
TASK_FOLDERS = {
    "action_sequence": ("star/Charades_segment", "star/Charades_v1_480"),
    "action_prediction": ("star/Charades_segment", "star/Charades_v1_480"),
    "action_antonym": ("ssv2_video_mp4", "ssv2_video"),
    "fine_grained_action": ("Moments_in_Time_Raw/videos", "Moments_in_Time_Raw/videos"),
    "unexpected_action": ("FunQA_test/test", "FunQA_test/test"),
    "object_existence": ("clevrer/video_validation", "clevrer/video_validation"),
    "object_interaction": ("star/Charades_segment", "star/Charades_v1_480"),
    "object_shuffle": ("perception/videos", "perception/videos"),
    "moving_direction": ("clevrer/video_validation", "clevrer/video_validation"),
    "action_localization": ("sta/sta_video_segment", "sta/sta_video"),
    "scene_transition": ("scene_qa/video", "scene_qa/video"),
    "action_count": ("perception/videos", "perception/videos"),
    "moving_count": ("clevrer/video_validation", "clevrer/video_validation"),
    "moving_attribute": ("clevrer/video_validation", "clevrer/video_validation"),
    "state_change": ("perception/videos", "perception/videos"),
    "fine_grained_pose": ("nturgbd_convert", "nturgbd"),
    "character_order": ("perception/videos", "perception/videos"),
    "egocentric_navigation": ("vlnqa", "vlnqa"),
    "episodic_reasoning": ("tvqa/video_fps3_hq_segment", "tvqa/frames_fps3_hq"),
    "counterfactual_inference": ("clevrer/video_validation", "clevrer/video_validation"),
}
# Where the zips may have been unpacked; data0613/ holds some clevrer and star videos in some copies.
_MVBENCH_BASES = ("video", ".", "video/data0613", "data0613")


def _mvbench_video(root: Path, task: str, name: str) -> tuple[Path, bool] | None:
    """(the file, whether it is a pre-cut copy): the name itself, else the same stem with another
    video suffix (the `video` branch re-encoded some .webm/.avi files to .mp4)."""
    segment, main = TASK_FOLDERS[task]
    for sub in dict.fromkeys((segment, main)):
        for base in _MVBENCH_BASES:
            folder = root / base / sub
            if (folder / name).is_file():
                return folder / name, sub == segment
            if folder.is_dir():
                stem = Path(name).stem
                same = sorted(p for p in folder.glob(f"{glob.escape(stem)}.*") if p.suffix.lower() in VIDEO_SUFFIXES)
                if same:
                    return same[0], sub == segment
    return None


@converter("mvbench", LAYOUT_MVBENCH)
def mvbench(path: Path) -> list[Question]:
    files = [f for f in data_files(path, ("*.json",)) if f.stem in TASK_FOLDERS or path.is_file()]
    if not files:
        raise LayoutError(f"benchmark data {path}: no json/<task>.json of MVBench's 20 tasks; "
                          f"expected {LAYOUT_MVBENCH}")
    out = []
    for f in files:
        if f.stem not in TASK_FOLDERS:
            raise LayoutError(f"benchmark file {f}: task {f.stem!r} unknown; expected one of {sorted(TASK_FOLDERS)}")
        for i, (_, row) in enumerate(read_rows(f, ["video", "question", "candidates", "answer"], LAYOUT_MVBENCH)):
            out.append(_mvbench_item(path, f, i, row))
    return out


def _mvbench_item(path: Path, f: Path, i: int, row: dict) -> Question:
    task, name = f.stem, field(row, "video", f)
    options, answer = _string_list(row["candidates"], f, "candidates"), field(row, "answer", f)
    if answer not in options:
        raise LayoutError(f"benchmark file {f}, item {i}: column 'answer' holds {answer!r:.60}, which is none of "
                          f"the candidates {options!r:.120}; expected the text of the right candidate")
    found = _mvbench_video(_root(path, f), task, name)
    if found is None:
        raise LayoutError(f"benchmark file {f}, item {i}: column 'video' holds {name!r}, found in none of "
                          f"{list(dict.fromkeys(TASK_FOLDERS[task]))} under {_root(path, f)} (in video/ or in "
                          f"place; not a frame folder); expected {LAYOUT_MVBENCH}")
    video, precut = found
    meta = {}
    if "start" in row and "end" in row and not precut:
        # main's uncut file: the question is about this span only, which the loader does not cut.
        meta["clip"] = [row["start"], row["end"]]
    return question("mvbench", f"{task}-{i}", with_options(field(row, "question", f), options),
                    LETTERS[options.index(answer)], videos=[str(video)], options=options, rule="choice", task=task,
                    **meta)


# ----------------------------------------------------------------------------------------- Video-MME

_VIDEOMME_COLUMNS = ["video_id", "duration", "domain", "sub_category", "videoID", "question_id", "task_type",
                     "question", "options", "answer"]


def _videomme(path: Path, benchmark: str, layout: str, subtitles: bool) -> list[Question]:
    rows = read_rows(path, _VIDEOMME_COLUMNS, layout, patterns=("*.parquet",))
    index: dict[Path, dict[str, Path]] = {}
    out, without = [], 0
    for f, row in rows:
        root = _root(path, f)
        if root not in index:
            index[root] = _video_index(root)
        vid = field(row, "videoID", f)
        video = _indexed_video(index[root], vid, root, f, "videoID", layout)
        options = _unletter(_string_list(row["options"], f, "options"), f, "options", required=True)
        text = with_options(field(row, "question", f), options)
        meta = {c: field(row, c, f) for c in ("duration", "domain", "sub_category", "video_id")}
        if subtitles:
            lines, total = _subtitles(root, vid, f, layout)
            without += not total
            meta.update(subtitle_lines=len(lines), subtitle_lines_total=total)
            if lines:
                text = "Subtitles:\n" + "\n".join(lines) + "\n\n" + text
        out.append(question(benchmark, field(row, "question_id", f), text, _letter(row["answer"], options, f),
                            videos=[video], options=options, rule="choice", task=field(row, "task_type", f), **meta))
    if subtitles:
        # Video-MME has videos without speech, hence without a subtitle file: those items have none.
        log.warning("%s: %d of %d items have no subtitle file (no subtitles given)", benchmark, without, len(out))
    return out


def srt_lines(text: str) -> list[str]:
    """The text of each subtitle of an .srt file, one line per subtitle: no index, no timing line,
    no markup (Video-MME wraps each in <font ...>)."""
    out = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").lstrip("\ufeff")):
        lines = [ln.strip() for ln in block.strip().split("\n")]
        if lines and lines[0].isdigit():
            lines = lines[1:]
        words = " ".join(re.sub(r"<[^>]*>", "", ln).strip() for ln in lines if "-->" not in ln)
        if words.strip():
            out.append(re.sub(r"\s+", " ", words).strip())
    return out


def spread(lines: list[str], cap: int) -> list[str]:
    """At most `cap` of `lines`, evenly spaced from the first to the last."""
    if len(lines) <= cap:
        return lines
    if cap == 1:
        return lines[:1]
    return [lines[round(i * (len(lines) - 1) / (cap - 1))] for i in range(cap)]


def _subtitles(root: Path, vid: str, f: Path, layout: str) -> tuple[list[str], int]:
    folder = root / "subtitle"
    if not folder.is_dir():
        raise LayoutError(f"benchmark file {f}: no subtitle folder at {folder} (unpack subtitle.zip there); "
                          f"expected {layout}")
    srt = folder / f"{vid}.srt"
    if not srt.is_file():
        return [], 0
    lines = srt_lines(srt.read_text(encoding="utf-8", errors="replace"))
    return spread(lines, SUBTITLE_LINES), len(lines)


@converter("videomme", LAYOUT_VIDEOMME)
def videomme(path: Path) -> list[Question]:
    return _videomme(path, "videomme", LAYOUT_VIDEOMME, subtitles=False)


@converter("videomme_subtitles", LAYOUT_VIDEOMME_SUBTITLES)
def videomme_subtitles(path: Path) -> list[Question]:
    return _videomme(path, "videomme_subtitles", LAYOUT_VIDEOMME_SUBTITLES, subtitles=True)


# ---------------------------------------------------------------------------------------- Video-MMMU

VIDEOMMMU_TRACKS = ("Perception", "Comprehension", "Adaptation")
_MC_TYPES = {"multiple-choice", "perception"}  # lmms-eval scores "perception" items as multiple choice


def _number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def _open_answers(answer: str) -> list[str]:
    """An open question's accepted answers: MMMU-style releases write several as a list literal."""
    if answer.strip().startswith("["):
        try:
            value = ast.literal_eval(answer.strip())
        except (ValueError, SyntaxError):
            return [answer.strip()]
        if isinstance(value, list) and value and all(isinstance(v, (str, int, float)) for v in value):
            return [str(v).strip() for v in value]
    return [answer.strip()]


@converter("videommmu", LAYOUT_VIDEOMMMU)
def videommmu(path: Path) -> list[Question]:
    files = [f for f in data_files(path, ("*.parquet",)) if f.parent.name in VIDEOMMMU_TRACKS or path.is_file()]
    if not files:
        raise LayoutError(f"benchmark data {path}: no {'/'.join(VIDEOMMMU_TRACKS)} parquet files; "
                          f"expected {LAYOUT_VIDEOMMMU}")
    index: dict[Path, dict[str, Path]] = {}
    out = []
    for f in files:
        if f.parent.name not in VIDEOMMMU_TRACKS:
            raise LayoutError(f"benchmark file {f}: its folder {f.parent.name!r} is not a track; expected one of "
                              f"{VIDEOMMMU_TRACKS} ({LAYOUT_VIDEOMMMU})")
        root = _root(path, f)
        if root not in index:
            index[root] = _video_index(root)
        for _, row in read_rows(f, ["id", "question", "options", "answer", "question_type"], LAYOUT_VIDEOMMMU):
            out.append(_videommmu_item(f, row, _indexed_video(index[root], field(row, "id", f), root, f, "id",
                                                              LAYOUT_VIDEOMMMU)))
    return out


def _has_image(cell) -> bool:
    """Whether an optional Image cell holds one (an absent image is None or an empty {bytes, path})."""
    if isinstance(cell, dict):
        return bool(cell.get("bytes") or cell.get("path"))
    return bool(cell)


def _videommmu_item(f: Path, row: dict, video: str) -> Question:
    track, qid, text = f.parent.name, field(row, "id", f), field(row, "question", f).strip()
    answer, kind = field(row, "answer", f), field(row, "question_type", f)
    cell = row.get("image")
    images = [image_ref(cell, f, "image")] if _has_image(cell) else []
    if not images and track == "Adaptation":
        text = f"{LAST_FRAME_NOTE}\n\n{text}"
    common = dict(images=images, videos=[video], task=track, question_type=kind,
                  subject="_".join(qid.split("_")[1:-1]))  # ids are <split>_<Subject>_<n>
    if kind in _MC_TYPES:
        options = _unletter(_string_list(row["options"], f, "options"), f, "options", required=False)
        return question("videommmu", f"{track}-{qid}", with_options(text, options), _letter(answer, options, f),
                        options=options, rule="choice", **common)
    answers = _open_answers(answer)
    # Video-MMMU's own scorer compares numbers rounded to 2 decimals; other answers by text.
    rule = {"rule": "number", "precision": 2} if all(_number(a) for a in answers) else {"rule": "exact"}
    return question("videommmu", f"{track}-{qid}", text, answers[0], answers=answers if len(answers) > 1 else (),
                    **rule, **common)
