"""Videos through data, prompts and rollouts: the toy video task says what its answers say, bad
videos are bad records named by file and line, a video placeholder counts as its timestamped
frames in the length limit, and the in-process engine sees the video (and scores what it sampled)."""

import base64
import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest

from megatron_zppo import build
from megatron_zppo.data import DataError, SourceConfig, load_questions
from megatron_zppo.core.records import PromptKind, Question
from megatron_zppo.rollout.collect import PromptSpec, generate_groups
from megatron_zppo.rollout.engine import GenerateRequest, SamplingParams
from megatron_zppo.rollout.hf_engine import HFEngine
from megatron_zppo.videos import frame_timestamps, open_video, video_problem

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_toy_video", REPO / "tools" / "make_toy_video.py")
toy_video = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy_video)
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=4)


@pytest.fixture(scope="module")
def vl(toy_world):
    from megatron_zppo.toy.models import new_qwen35_vl

    path = toy_world["root"] / "vl_video_student"
    if not path.exists():
        new_qwen35_vl(path, toy_world["tokenizer"], seed=1)
    return str(path)


def _quadrants(frame) -> set[int]:
    return {k for k, (y, x) in enumerate([(0, 0), (0, 32), (32, 0), (32, 32)]) if (frame[y:y + 32, x:x + 32] < 200).any()}


def test_each_toy_video_shows_as_many_squares_as_its_answer_and_no_frame_shows_them_all(tmp_path):
    rows = toy_video.write_videos(tmp_path, "train", 8, seed=3)
    assert [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()] == rows
    for row in rows:
        frames, fps = open_video(row["videos"][0])  # decoded from the MP4 file, not the generator's arrays
        assert frames.shape == (8, 64, 64, 3) and fps == 4.0
        seen = [_quadrants(f) for f in frames]
        assert len(set().union(*seen)) == int(row["answer"])  # each square in a quadrant of its own
        assert max(map(len, seen)) == 1  # one square at a time: the count is read across frames
    assert len({r["answer"] for r in rows}) > 1


def test_bad_videos_are_bad_records_named_by_file_and_line(tmp_path):
    good = tmp_path / "ok.mp4"
    good.write_bytes(toy_video.toy_video(random.Random(0), 2))
    uri = "data:video/mp4;base64," + base64.b64encode(good.read_bytes()).decode()
    (tmp_path / "cut.mp4").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "text.mp4").write_text("not a video")
    rows = [{"id": "a", "question": "q", "answer": "2", "videos": [str(good)]},
            {"id": "b", "question": "q", "answer": "2", "videos": uri},
            {"id": "c", "question": "q", "answer": "2", "videos": [str(tmp_path / "cut.mp4")]},
            {"id": "d", "question": "q", "answer": "2", "videos": [str(tmp_path / "nope.mp4")]},
            {"id": "e", "question": "q", "answer": "2", "videos": [str(tmp_path / "text.mp4")]},
            {"id": "f", "question": "q", "answer": "2", "videos": 7}]
    src = tmp_path / "v.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError) as e:
        load_questions([SourceConfig(kind="jsonl", path=str(src))])
    msg = str(e.value)
    assert "4 bad record(s)" in msg
    assert f"{src} line 3: video {tmp_path / 'cut.mp4'} cannot be read" in msg
    assert f"{src} line 4: video {tmp_path / 'nope.mp4'} cannot be read" in msg and "does not exist" in msg
    assert f"{src} line 5: video {tmp_path / 'text.mp4'} cannot be read" in msg
    assert f"{src} line 6: field 'videos' must be a video or a list of videos" in msg
    kept = load_questions([SourceConfig(kind="jsonl", path=str(src), skip_bad_records=True)], log=lambda _: None)
    assert [q.id for q in kept] == ["a", "b"] and kept[0].videos == (str(good),) and kept[1].videos == (uri,)
    assert video_problem(uri) is None and Question.from_dict(kept[1].to_dict()) == kept[1]


def test_only_the_sampled_frames_are_decoded_and_the_processor_sees_what_it_would_sample_itself(vl, tmp_path):
    import torch
    from transformers import AutoTokenizer
    from transformers.video_utils import VideoMetadata

    from megatron_zppo.videos import VideoTokens, load_video_processor, probe_video, video_inputs

    processor, tokenizer = load_video_processor(vl), AutoTokenizer.from_pretrained(vl)
    path = tmp_path / "long.mp4"  # 40 frames at 4 fps: the processor (2 fps) samples 20 of them
    path.write_bytes(toy_video.encode_mp4(np.concatenate([toy_video.frames(random.Random(i), 3) for i in range(5)])))
    info = probe_video(str(path))
    assert (info.frames, info.fps) == (40, 4.0)
    meta = VideoMetadata(total_num_frames=40, fps=4.0, height=info.height, width=info.width, video_backend="pyav")
    indices = processor.sample_frames(meta)
    kept, _ = open_video(str(path), indices)
    every, _ = open_video(str(path))
    assert len(kept) == len(indices) < len(every) and np.array_equal(kept, every[np.asarray(indices)])
    # The processor sampling from every frame itself gives the same tensors as from ours alone.
    got, replacements = video_inputs(processor, tokenizer, VideoTokens.of(_config(vl)), [str(path)])
    ref = processor(videos=[every], video_metadata=[meta], do_sample_frames=True, return_tensors="pt")
    assert torch.equal(got["pixel_values_videos"], ref["pixel_values_videos"])
    assert torch.equal(got["video_grid_thw"], ref["video_grid_thw"])
    times = frame_timestamps(list(indices), 4.0, processor.temporal_patch_size)  # the sampled frames' times
    assert tokenizer.decode(replacements[0]).count(" seconds>") == len(times) == int(got["video_grid_thw"][0, 0])
    assert all(f"<{t:.1f} seconds>" in tokenizer.decode(replacements[0]) for t in times) and times[-1] > 4.0


def test_a_processed_video_is_remembered_by_content_and_the_cache_stays_within_its_budget(vl, tmp_path, monkeypatch):
    import torch
    from transformers import AutoTokenizer

    from megatron_zppo import videos

    processor, tokenizer = videos.load_video_processor(vl), AutoTokenizer.from_pretrained(vl)
    tokens = videos.VideoTokens.of(_config(vl))
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"v{i}.mp4")
        paths[-1].write_bytes(toy_video.toy_video(random.Random(10 + i), 1 + i))
    first = videos.video_inputs(processor, tokenizer, tokens, [str(p) for p in paths])
    decoded = []
    real = videos._decode
    monkeypatch.setattr(videos, "_decode", lambda data, keep=None: decoded.append(keep) or real(data, keep))
    copy = tmp_path / "copy.mp4"  # the same content under another name: no decoding again
    copy.write_bytes(paths[1].read_bytes())
    again = videos.video_inputs(processor, tokenizer, tokens, [str(paths[0]), str(copy), str(paths[2])])
    assert decoded == [] and again[1] == first[1]
    assert all(torch.equal(again[0][k], first[0][k]) for k in first[0])
    # Over the budget the least recently used videos go; the newest always stays.
    monkeypatch.setattr(videos, "CACHE_BYTES", 1)
    new = tmp_path / "new.mp4"
    new.write_bytes(toy_video.toy_video(random.Random(20), 4))
    videos.video_inputs(processor, tokenizer, tokens, [str(new)])  # probed (nothing kept), then decoded
    assert len(videos._PROCESSED) == 1 and decoded == [(), {0, 2, 5, 7}]  # the frames the processor samples
    videos.video_inputs(processor, tokenizer, tokens, [str(paths[0])])  # dropped: decoded again, not probed
    assert len(videos._PROCESSED) == 1 and decoded[2:] == [{0, 2, 5, 7}]


def _config(model_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def test_timestamps_are_the_mean_time_of_each_temporal_patch():
    assert frame_timestamps([0, 2, 5, 7], 4.0, 2) == [0.25, 1.5]
    assert frame_timestamps([0, 3, 6], 2.0, 2) == [0.75, 3.0]  # the last patch padded with its last frame


def test_a_video_placeholder_counts_as_its_timestamped_frames_in_the_prompt_limit(vl):
    encode = build.make_encoder(vl)
    video = toy_video.toy_video(random.Random(0), 3)
    ids = encode("How many squares appear in the video?", 0, 1)
    tok = encode.tokenizer
    assert ids.count(tok.convert_tokens_to_ids("<|video_pad|>")) == 1
    # 8 frames at 4 fps, sampled at 2 fps (4 frames), 2 frames a temporal patch: 2 patches of 2x2
    # merged tokens, each with its timestamp text and vision start/end.
    stamps = sum(len(tok(f"<{t} seconds>", add_special_tokens=False)["input_ids"]) for t in ("0.2", "1.5"))
    assert encode.video_tokens([video]) == 2 * (4 + 2) + stamps
    q = Question("v", "How many squares appear in the video?", "3", videos=(video,))
    full = len(ids) - 1 + encode.video_tokens([video])
    spec = PromptSpec(q, PromptKind.PLAIN, "v:plain", q.text)
    groups, too_long = generate_groups(HFEngine(vl), encode, [spec], 2, GREEDY, max_prompt_tokens=full - 1)
    assert groups == [] and too_long == [spec]  # one token over: refused, though the unexpanded prompt is short
    groups, too_long = generate_groups(HFEngine(vl), encode, [spec], 2, GREEDY, max_prompt_tokens=full)
    assert too_long == [] and all(s.videos == (video,) and s.images == () for s in groups[0].samples)


def test_the_engine_sees_the_video_and_scores_what_it_sampled(vl):
    engine, encode = HFEngine(vl), build.make_encoder(vl)
    ids = encode("How many squares appear in the video?", 0, 1)
    one, three = (toy_video.toy_video(random.Random(k), c) for k, c in ((1, 1), (0, 3)))
    out = engine.generate([GenerateRequest(ids, 2, (), "a", videos=(three,)), GenerateRequest(ids, 1, (), "b", videos=(one,))],
                          GREEDY)
    assert [len(g) for g in out] == [2, 1] and out[0][0].response_ids == out[0][1].response_ids
    assert out[0][0].logprobs[0] != out[1][0].logprobs[0]  # another video, another distribution
    scored = engine.score([ids], [out[0][0].response_ids], videos=[(three,)])[0]
    np.testing.assert_allclose(scored, out[0][0].logprobs, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="request 'c': the prompt holds 0 video placeholder.*for 1 video"):
        engine.generate([GenerateRequest(encode("How many?"), 1, (), "c", videos=(one,))], GREEDY)


def test_a_text_model_refuses_a_video_question(toy_world):
    encode = build.make_encoder(toy_world["student"])
    q = Question("v", "How many?", "1", videos=("x.mp4",))
    with pytest.raises(ValueError, match="video"):
        generate_groups(HFEngine(toy_world["student"]), encode, [PromptSpec(q, PromptKind.PLAIN, "g", q.text)], 1,
                        GREEDY, max_prompt_tokens=100)


def test_prepare_vl_data_keeps_decodable_videos_and_names_the_rest(tmp_path):
    import subprocess
    import sys

    good = tmp_path / "ok.mp4"
    good.write_bytes(toy_video.toy_video(random.Random(0), 2))
    small = tmp_path / "small.mp4"
    small.write_bytes(toy_video.encode_mp4(np.zeros((4, 32, 32, 3), np.uint8)))
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    rows = [{"id": "v", "question": "q", "answer": "2", "videos": [str(good)]},
            {"id": "s", "question": "q", "answer": "2", "videos": [str(small)]},
            {"id": "b", "question": "q", "answer": "2", "videos": [str(tmp_path / "bad.mp4")]}]
    src = tmp_path / "src.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "tools/prepare_vl_data.py", "--source", str(src), "--out", str(out),
                           "--min-side", "64"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == 1 and report["dropped"] == {"video too small": 1, "video unreadable": 1}
    (kept,) = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert kept["id"] == "v" and Path(kept["videos"][0]).read_bytes() == good.read_bytes()
    assert load_questions([SourceConfig(kind="jsonl", path=str(out / "questions.jsonl"))])[0].videos == tuple(kept["videos"])
