"""The video converters (MMVU, MVBench, Video-MME with and without subtitles, Video-MMMU) read
fixtures written in each release's published layout, with tiny real MP4 files where a video must
exist, and give questions checked field by field."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from megatron_zppo.evaluation.benchmarks import video
from megatron_zppo.evaluation.benchmarks.layout import LayoutError
from megatron_zppo.evaluation.benchmarks.registry import CONVERTERS, convert

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.fixture(scope="module")
def mp4() -> bytes:
    """A real MP4: three 32x32 frames."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 60 * i, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data, encoding="utf-8")
    return path


def _png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path: Path, rows: list[dict], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


# ---------------------------------------------------------------------------------------------- MMVU

def _mmvu_row(n: int, subject: str, kind: str, question: str, choices, answer: str) -> dict:
    folder = subject.replace(" ", "_")
    return {"id": f"validation_{n}",
            "video": f"https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main/videos/{folder}/{n}.mp4",
            "youtube_url": "https://www.youtube.com/watch?v=x", "question_type": kind,
            "metadata": {"subject": subject, "textbook": "T", "knowledge": [], "rationale": "R"},
            "question": question, "choices": choices, "answer": answer}


def _mmvu(tmp_path: Path, mp4: bytes, rows: list[dict]) -> Path:
    for row in rows:
        _write(tmp_path / row["video"].split("/resolve/main/")[1], mp4)
    return _write(tmp_path / "validation.json", json.dumps(rows))


def test_mmvu_letters_multiple_choice_keeps_open_answers_and_finds_each_video_in_the_repository(tmp_path, mp4):
    empty = {k: "" for k in "ABCDE"}
    _mmvu(tmp_path, mp4, [
        _mmvu_row(0, "Art", "open-ended", "Which technique is shown?", empty, "Dolly Zoom"),
        _mmvu_row(1, "Chemistry", "multiple-choice", "How many grams?",
                  {"A": "10.0", "B": "5.0", "C": "12.0", "D": "15.0", "E": "20.0"}, "A"),
        _mmvu_row(2, "Computer Science", "multiple-choice", "Which search?", ["BFS", "DFS", "A*", "", ""], "b"),
    ])
    _write(tmp_path / "test.json", "[]")  # the unlabelled split beside it is not read

    qs = convert("mmvu", tmp_path)

    assert [q.id for q in qs] == ["mmvu:validation_0", "mmvu:validation_1", "mmvu:validation_2"]
    assert qs[0].text == "Which technique is shown?" and qs[0].answer == "Dolly Zoom"
    assert qs[0].metadata == {"benchmark": "mmvu", "rule": "exact", "task": "Art", "question_type": "open-ended"}
    assert qs[1].text == "How many grams?\n\nA. 10.0\nB. 5.0\nC. 12.0\nD. 15.0\nE. 20.0" and qs[1].answer == "A"
    assert qs[1].metadata["options"] == ["10.0", "5.0", "12.0", "15.0", "20.0"]
    assert qs[1].metadata["rule"] == "choice" and qs[1].metadata["task"] == "Chemistry"
    # a list of choices, padded with empty ones: only the real ones are options; the gold letter is upper-cased
    assert qs[2].text == "Which search?\n\nA. BFS\nB. DFS\nC. A*" and qs[2].answer == "B"
    assert qs[2].videos == (str(tmp_path / "videos/Computer_Science/2.mp4"),)
    assert all(Path(q.videos[0]).read_bytes() == mp4 and not q.images for q in qs)


def test_mmvu_a_missing_column_or_video_or_a_gold_outside_the_options_names_file_and_column(tmp_path, mp4):
    row = _mmvu_row(1, "Chemistry", "multiple-choice", "Q?", {"A": "x", "B": "y", "C": "", "D": "", "E": ""}, "C")
    f = _mmvu(tmp_path, mp4, [row])
    with pytest.raises(LayoutError, match=rf"{f}.*'answer'.*'C'.*among 'AB'"):
        convert("mmvu", tmp_path)
    del row["answer"]
    _mmvu(tmp_path, mp4, [row])
    with pytest.raises(LayoutError, match=rf"{f}.*column 'answer' is missing.*yale-nlp/MMVU"):
        convert("mmvu", f)
    row.update(answer="A", video="https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main/videos/Art/9.mp4")
    _write(f, json.dumps([row]))
    with pytest.raises(LayoutError, match=rf"{f}.*column 'video'.*videos/Art/9.mp4.*not found"):
        convert("mmvu", f)


# ------------------------------------------------------------------------------------------- MVBench

def _mvbench_row(name: str, question: str, candidates: list[str], answer: str, **bounds) -> dict:
    return {"video": name, "question": question, "candidates": candidates, "answer": answer, **bounds}


def test_mvbench_gives_the_right_candidates_letter_and_prefers_the_precut_video_branch(tmp_path, mp4):
    _write(tmp_path / "json/action_sequence.json", json.dumps([
        _mvbench_row("A1.mp4", "What happened after the person took the box?", ["Sat down.", "Ate.", "Left."],
                     "Left.", start=3.5, end=9.0)]))
    _write(tmp_path / "json/action_antonym.json", json.dumps([
        _mvbench_row("42.webm", "What is the action performed?", ["pushing", "pulling", "not sure"], "pushing")]))
    _write(tmp_path / "json/object_interaction.json", json.dumps([
        _mvbench_row("B2.mp4", "Which object was thrown?", ["The cup.", "The bag."], "The bag.", start=1.0, end=2.0)]))
    precut = _write(tmp_path / "video/star/Charades_segment/A1.mp4", mp4)
    _write(tmp_path / "video/star/Charades_v1_480/A1.mp4", mp4)  # the uncut original is not used when a cut exists
    reencoded = _write(tmp_path / "video/ssv2_video_mp4/42.mp4", mp4)  # the `video` branch's .mp4 of 42.webm
    uncut = _write(tmp_path / "star/Charades_v1_480/B2.mp4", mp4)  # main's zip unpacked at the root

    qs = {q.id: q for q in convert("mvbench", tmp_path)}

    assert sorted(qs) == ["mvbench:action_antonym-0", "mvbench:action_sequence-0", "mvbench:object_interaction-0"]
    q = qs["mvbench:action_sequence-0"]
    assert q.text == "What happened after the person took the box?\n\nA. Sat down.\nB. Ate.\nC. Left."
    assert q.answer == "C" and q.videos == (str(precut),)
    assert q.metadata == {"benchmark": "mvbench", "options": ["Sat down.", "Ate.", "Left."], "rule": "choice",
                          "task": "action_sequence"}
    assert qs["mvbench:action_antonym-0"].answer == "A" and qs["mvbench:action_antonym-0"].videos == (str(reencoded),)
    # main's uncut file: the span the question is about is kept for a loader that can cut
    q = qs["mvbench:object_interaction-0"]
    assert q.answer == "B" and q.videos == (str(uncut),) and q.metadata["clip"] == [1.0, 2.0]


def test_mvbench_an_answer_no_candidate_holds_a_missing_video_or_an_unknown_task_fail_naming_the_file(tmp_path, mp4):
    f = _write(tmp_path / "json/action_count.json", json.dumps([_mvbench_row("v.mp4", "How many?", ["1", "2"], "3")]))
    with pytest.raises(LayoutError, match=rf"{f}, item 0: column 'answer' holds '3'"):
        convert("mvbench", tmp_path)
    _write(f, json.dumps([_mvbench_row("v.mp4", "How many?", ["1", "2"], "2")]))
    with pytest.raises(LayoutError, match=rf"{f}, item 0: column 'video' holds 'v.mp4'.*perception/videos"):
        convert("mvbench", tmp_path)
    g = _write(tmp_path / "json/dancing.json", "[]")
    with pytest.raises(LayoutError, match=rf"{g}: task 'dancing' unknown"):
        convert("mvbench", g)


# ----------------------------------------------------------------------------------------- Video-MME

VIDEOMME_SCHEMA = pa.schema([(c, pa.list_(pa.string()) if c == "options" else pa.string()) for c in
                             ["video_id", "duration", "domain", "sub_category", "url", "videoID", "question_id",
                              "task_type", "question", "options", "answer"]])
SRT = ('1\n00:00:00,000 --> 00:00:02,000\n<font color="white" size=".72c">Hello there.</font>\n\n'
       '2\r\n00:00:02,000 --> 00:00:04,000\r\n<font color="white" size=".72c">Two</font>\r\nlines.\r\n\r\n'
       '3\n00:00:05,000 --> 00:00:06,000\n<font color="white" size=".72c">Bye.</font>\n')


def _videomme_row(vid: str, n: int, task: str, answer: str) -> dict:
    return {"video_id": f"00{n}", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy",
            "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid, "question_id": f"00{n}-1",
            "task_type": task, "question": f"What is shown in video {n}?",
            "options": ["A. A star.", "B. A planet.", "C. A moon.", "D. A comet."], "answer": answer}


def _videomme(tmp_path: Path, mp4: bytes, rows: list[dict] | None = None) -> Path:
    rows = rows or [_videomme_row("fFjv93ACGo8", 1, "Counting Problem", "B"),
                    _videomme_row("JdBeQqz9XKI", 2, "OCR Problems", "D")]
    _write(tmp_path / "data/fFjv93ACGo8.mp4", mp4)
    _write(tmp_path / "data/JdBeQqz9XKI.mkv", mp4)
    _write(tmp_path / "subtitle/fFjv93ACGo8.srt", SRT)  # JdBeQqz9XKI has no speech, hence no subtitle file
    return _parquet(tmp_path / "videomme/test-00000-of-00001.parquet", rows, VIDEOMME_SCHEMA)


def test_videomme_reletters_the_prefixed_options_and_finds_videos_by_youtube_id(tmp_path, mp4):
    f = _videomme(tmp_path, mp4)
    qs = convert("videomme", f)  # the parquet file itself: the videos are one folder up

    assert [q.id for q in qs] == ["videomme:001-1", "videomme:002-1"]
    assert qs[0].text == "What is shown in video 1?\n\nA. A star.\nB. A planet.\nC. A moon.\nD. A comet."
    assert [q.answer for q in qs] == ["B", "D"]
    assert qs[0].videos == (str(tmp_path / "data/fFjv93ACGo8.mp4"),)
    assert qs[1].videos == (str(tmp_path / "data/JdBeQqz9XKI.mkv"),)
    assert qs[0].metadata == {"benchmark": "videomme", "options": ["A star.", "A planet.", "A moon.", "A comet."],
                              "rule": "choice", "task": "Counting Problem", "duration": "short",
                              "domain": "Knowledge", "sub_category": "Astronomy", "video_id": "001"}


def test_videomme_subtitles_go_before_the_question_as_text_only_and_a_video_without_them_has_none(
        tmp_path, mp4, caplog):
    _videomme(tmp_path, mp4)
    with caplog.at_level(logging.WARNING):
        qs = convert("videomme_subtitles", tmp_path)

    assert [q.id for q in qs] == ["videomme_subtitles:001-1", "videomme_subtitles:002-1"]
    assert qs[0].text == ("Subtitles:\nHello there.\nTwo lines.\nBye.\n\n"
                          "What is shown in video 1?\n\nA. A star.\nB. A planet.\nC. A moon.\nD. A comet.")
    assert qs[0].metadata["subtitle_lines"] == qs[0].metadata["subtitle_lines_total"] == 3
    assert qs[1].text == convert("videomme", tmp_path)[1].text  # no subtitle file: the question alone
    assert qs[1].metadata["subtitle_lines"] == qs[1].metadata["subtitle_lines_total"] == 0
    assert "videomme_subtitles: 1 of 2 items have no subtitle file" in caplog.text


def test_videomme_subtitles_are_capped_evenly_over_the_file_and_a_missing_subtitle_folder_fails(
        tmp_path, mp4, monkeypatch):
    _videomme(tmp_path, mp4)
    blocks = "\n\n".join(f"{i + 1}\n00:00:0{i},000 --> 00:00:0{i},900\nline {i}" for i in range(7))
    _write(tmp_path / "subtitle/fFjv93ACGo8.srt", blocks)
    monkeypatch.setattr(video, "SUBTITLE_LINES", 3)
    q = convert("videomme_subtitles", tmp_path)[0]
    assert q.text.startswith("Subtitles:\nline 0\nline 3\nline 6\n\nWhat is shown")
    assert (q.metadata["subtitle_lines"], q.metadata["subtitle_lines_total"]) == (3, 7)

    (tmp_path / "subtitle/fFjv93ACGo8.srt").unlink()
    (tmp_path / "subtitle").rmdir()
    with pytest.raises(LayoutError, match=r"no subtitle folder at .*subtitle \(unpack subtitle.zip"):
        convert("videomme_subtitles", tmp_path)


def test_videomme_a_gold_letter_outside_the_options_or_a_missing_video_names_file_and_column(tmp_path, mp4):
    f = _videomme(tmp_path, mp4, [_videomme_row("fFjv93ACGo8", 1, "Counting Problem", "E")])
    with pytest.raises(LayoutError, match=rf"{f}: column 'answer' holds 'E'; expected a letter among 'ABCD'"):
        convert("videomme", tmp_path)
    _videomme(tmp_path, mp4, [_videomme_row("missing0001", 1, "Counting Problem", "A")])
    with pytest.raises(LayoutError, match=rf"{f}: column 'videoID' holds 'missing0001', and no video"):
        convert("videomme", tmp_path)
    row = _videomme_row("fFjv93ACGo8", 1, "Counting Problem", "A")
    row["options"] = ["A star.", "A planet."]  # the release always prefixes its options
    _videomme(tmp_path, mp4, [row])
    with pytest.raises(LayoutError, match=rf"{f}: column 'options' holds .*prefixed 'A. '"):
        convert("videomme", tmp_path)


# ---------------------------------------------------------------------------------------- Video-MMMU

def _videommmu_row(vid: str, question: str, options: list[str], answer: str, kind: str, image=None) -> dict:
    row = {"id": vid, "question": question, "options": options, "answer": answer, "question_type": kind}
    return row if image is None else {**row, "image": image}


def _videommmu_schema(image: bool) -> pa.Schema:
    fields = [("id", pa.string()), ("question", pa.string()), ("options", pa.list_(pa.string())),
              ("answer", pa.string()), ("question_type", pa.string())]
    return pa.schema(fields + ([("image", IMAGE)] if image else []))


def test_videommmu_reads_the_three_tracks_with_choice_number_and_exact_rules_and_the_quiz_image(tmp_path, mp4):
    art, sci = "validation_Art_Theory_3", "validation_Physics_12"
    _write(tmp_path / f"Art/{art}.mp4", mp4)
    _write(tmp_path / f"videos/Science/{sci}.mp4", mp4)
    _parquet(tmp_path / "Perception/test-00000-of-00001.parquet", [_videommmu_row(
        art, "Which painter is named in the video?", ["A. Monet", "B. Manet"], "B", "multiple-choice")],
        _videommmu_schema(False))
    _parquet(tmp_path / "Comprehension/test-00000-of-00001.parquet", [_videommmu_row(
        sci, "What speed results, in m/s?", [], "3.14", "open")], _videommmu_schema(False))
    png = _png()
    _parquet(tmp_path / "Adaptation/test-00000-of-00001.parquet", [
        _videommmu_row(art, "Which style is in <image 1>?", ["Cubism", "Baroque", "Gothic"], "C", "multiple-choice",
                       {"bytes": png, "path": "q.png"}),
        _videommmu_row(sci, "Name the law used in <image 1>.", [], "Ohm's law", "open", {"bytes": None, "path": None}),
    ], _videommmu_schema(True))
    _parquet(tmp_path / "Comprehension_Engineering/test-00000-of-00001.parquet", [], _videommmu_schema(False))

    qs = {q.id: q for q in convert("videommmu", tmp_path)}

    assert sorted(qs) == [f"videommmu:Adaptation-{art}", f"videommmu:Adaptation-{sci}",
                          f"videommmu:Comprehension-{sci}", f"videommmu:Perception-{art}"]
    q = qs[f"videommmu:Perception-{art}"]
    assert q.text == "Which painter is named in the video?\n\nA. Monet\nB. Manet" and q.answer == "B"
    assert q.metadata == {"benchmark": "videommmu", "options": ["Monet", "Manet"], "rule": "choice",
                          "task": "Perception", "question_type": "multiple-choice", "subject": "Art_Theory"}
    assert q.videos == (str(tmp_path / f"Art/{art}.mp4"),) and q.images == ()
    q = qs[f"videommmu:Comprehension-{sci}"]
    assert (q.text, q.answer, q.videos) == ("What speed results, in m/s?", "3.14",
                                            (str(tmp_path / f"videos/Science/{sci}.mp4"),))
    assert q.metadata["rule"] == "number" and q.metadata["precision"] == 2 and "options" not in q.metadata
    q = qs[f"videommmu:Adaptation-{art}"]
    assert q.text == "Which style is in <image 1>?\n\nA. Cubism\nB. Baroque\nC. Gothic" and q.answer == "C"
    assert q.images == (png,) and q.metadata["task"] == "Adaptation"
    # no quiz image in the row: the question says where it is (the video's last frame)
    q = qs[f"videommmu:Adaptation-{sci}"]
    assert q.text == f"{video.LAST_FRAME_NOTE}\n\nName the law used in <image 1>."
    assert q.answer == "Ohm's law" and q.images == () and q.metadata["rule"] == "exact"


def test_videommmu_a_missing_column_or_video_names_file_and_column(tmp_path, mp4):
    schema = pa.schema([c for c in _videommmu_schema(False) if c.name != "question_type"])
    f = _parquet(tmp_path / "Perception/test-00000-of-00001.parquet",
                 [{"id": "validation_Art_1", "question": "Q?", "options": ["x", "y"], "answer": "A"}], schema)
    _write(tmp_path / "Art/validation_Art_1.mp4", mp4)
    with pytest.raises(LayoutError, match=rf"{f}, row 0: column 'question_type' is missing.*lmms-lab/VideoMMMU"):
        convert("videommmu", tmp_path)
    _parquet(f, [_videommmu_row("validation_Art_2", "Q?", ["x", "y"], "A", "multiple-choice")],
             _videommmu_schema(False))
    with pytest.raises(LayoutError, match=rf"{f}: column 'id' holds 'validation_Art_2', and no video"):
        convert("videommmu", f)


# ------------------------------------------------------------------------------------------- helpers

def test_srt_lines_keep_only_the_text_and_spread_keeps_first_and_last():
    assert video.srt_lines("\ufeff" + SRT) == ["Hello there.", "Two lines.", "Bye."]
    assert video.spread(list("abcdefg"), 4) == ["a", "c", "e", "g"]
    assert video.spread(["a", "b"], 4) == ["a", "b"]


def test_the_five_video_converters_are_registered_with_the_releases_they_follow():
    assert {n: CONVERTERS[n].layout.split()[0] for n in ("mmvu", "mvbench", "videomme", "videomme_subtitles",
                                                         "videommmu")} == {
        "mmvu": "yale-nlp/MMVU", "mvbench": "OpenGVLab/MVBench", "videomme": "lmms-lab/Video-MME",
        "videomme_subtitles": "lmms-lab/Video-MME", "videommmu": "lmms-lab/VideoMMMU"}
    assert len(video.TASK_FOLDERS) == 20
