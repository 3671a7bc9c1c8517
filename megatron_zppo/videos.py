"""Videos as datasets give them (a file path, raw bytes, a base64 data URI or an http(s) URL, as
images are), decoded with PyAV and sampled to frames by the checkpoint's own video processor.

`probe_video` decodes every frame once, keeping none (a truncated or corrupt file fails here, at
load time, not in the middle of a rollout); `video_problem` says in words what is wrong with one,
or None. Later uses decode only the frames the processor samples.

In the prompt a video is ONE placeholder token (``<|video_pad|>``, between the vision-start and
vision-end tokens the chat template writes), as images are. The model sees more: Qwen3-VL's
processor replaces it, for each temporal patch of sampled frames, by the frames' timestamp as text
(``<0.5 seconds>``), a vision-start token, the frame's vision tokens and a vision-end token.
`video_inputs` gives the processor's tensors and those replacement ids, which the rollout engine
and the trainer both splice in with `expand_videos`, so the two see the same sequence. SGLang is
sent the unexpanded prompt and the video, and expands it itself.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

from megatron_zppo.images import describe, image_bytes, replace_placeholders

DEFAULT_FPS = 24.0  # what transformers assumes for a stream that states no frame rate


def video_bytes(ref: str | bytes) -> bytes:
    """The encoded file (path, URL with images.URL_TIMEOUT_S, data URI or bytes as given)."""
    try:
        return image_bytes(ref)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(str(e).replace("image", "video")) from None


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # decoded frames (a container's stated count can be missing or wrong)
    fps: float
    height: int
    width: int


_INFO: dict[str, VideoInfo] = {}  # by content digest: a few numbers each, read once per video


def _digest(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def _decode(data: bytes, keep=None):
    """(frames kept [n, H, W, 3] uint8 (all if `keep` is None, else those whose index it holds),
    VideoInfo of the whole stream). Frames are dropped as they are decoded: a long benchmark video
    (an hour at 30 fps is ~100,000 frames) fits in memory only as the frames sampled from it."""
    import av
    import numpy as np

    kept, count, height, width = [], 0, 0, 0
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise ValueError("the file holds no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else DEFAULT_FPS
        for frame in container.decode(stream):
            if keep is None or count in keep:
                kept.append(frame.to_ndarray(format="rgb24"))
            count, height, width = count + 1, frame.height, frame.width
    if not count:
        raise ValueError("the video stream holds no frame")
    frames = np.stack(kept) if kept else np.zeros((0, height, width, 3), np.uint8)
    return frames, VideoInfo(count, fps, height, width)


def probe_video(ref: str | bytes) -> VideoInfo:
    """Frame count, rate and size, every frame decoded once (so a truncated file fails here, at
    load time) and none kept. Remembered per content, so later uses decode only sampled frames."""
    data = video_bytes(ref)
    return _probe(data, _digest(data))


def _probe(data: bytes, digest: str) -> VideoInfo:
    if digest not in _INFO:
        _INFO[digest] = _decode(data, keep=())[1]
    return _INFO[digest]


def open_video(ref: str | bytes, indices=None):
    """(frames [T, H, W, 3] uint8, the stream's frame rate): every frame, or those at `indices`."""
    frames, info = _decode(video_bytes(ref), None if indices is None else set(int(i) for i in indices))
    return frames, info.fps


def video_problem(ref: str | bytes) -> str | None:
    """Why `ref` is unusable (missing, not a video, undecodable, no frames), or None."""
    try:
        probe_video(ref)
    except Exception as e:  # noqa: BLE001 - FFmpeg raises many types for bad files; all mean "unusable"
        return f"video {describe(ref)} cannot be read: {type(e).__name__}: {e}"
    return None


@dataclass(frozen=True)
class VideoTokens:
    """Special token ids a video's placeholder expands with."""

    video: int
    vision_start: int
    vision_end: int

    @classmethod
    def of(cls, hf_config) -> VideoTokens:
        return cls(hf_config.video_token_id, hf_config.vision_start_token_id, hf_config.vision_end_token_id)


CACHE_BYTES = 1 << 30  # processed videos kept (pixel tensors), least recently used dropped first
_PROCESSED: OrderedDict[tuple, tuple] = OrderedDict()
_LOCK = threading.Lock()


def video_inputs(video_processor, tokenizer, tokens: VideoTokens, refs) -> tuple[dict, list[list[int]]]:
    """The processor's ``pixel_values_videos``/``video_grid_thw`` for `refs`, frames sampled by its
    own settings (fps, min/max frames), and each video's replacement ids for its placeholder.

    Each video is processed once and remembered (by content, up to CACHE_BYTES): a sample's video
    is needed for its length in every rank's plan, for the old-log-prob pass and for the update,
    and its BCQ/NCQ prompts and replays carry it again."""
    import torch

    done = [_processed(video_processor, tokenizer, tokens, ref) for ref in refs]
    pixels, grids, replacements = zip(*done)
    return {"pixel_values_videos": torch.cat(pixels), "video_grid_thw": torch.cat(grids)}, [list(r) for r in replacements]


def _processed(video_processor, tokenizer, tokens: VideoTokens, ref) -> tuple:
    """(pixel_values_videos, video_grid_thw [1, 3], replacement ids) of one video, from the cache."""
    data = video_bytes(ref)  # read (or fetched) once per use, however it is processed
    digest = _digest(data)
    # By what decides the result (not by object identity, which a later processor may reuse).
    key = (digest, video_processor.to_json_string(), tokenizer.name_or_path, tokens)
    with _LOCK:  # the rollout thread of run.overlap=one_step processes videos beside the trainer
        if key in _PROCESSED:
            _PROCESSED.move_to_end(key)
            return _PROCESSED[key]
    value = _process(video_processor, tokenizer, tokens, data, digest)
    with _LOCK:
        _PROCESSED[key] = value
        while len(_PROCESSED) > 1 and sum(v[0].nbytes for v in _PROCESSED.values()) > CACHE_BYTES:
            _PROCESSED.popitem(last=False)
    return value


def _process(video_processor, tokenizer, tokens: VideoTokens, data: bytes, digest: str) -> tuple:
    from transformers.video_utils import VideoMetadata

    info = _probe(data, digest)  # the processor's own sampling rule picks the frames; only those are decoded
    meta = VideoMetadata(total_num_frames=info.frames, fps=info.fps, height=info.height, width=info.width,
                         video_backend="pyav")
    meta.frames_indices = [int(i) for i in video_processor.sample_frames(meta)]
    frames, _ = _decode(data, set(meta.frames_indices))
    out = video_processor(videos=[frames], video_metadata=[meta], do_sample_frames=False, return_metadata=True,
                          return_tensors="pt")
    merge, temporal = video_processor.merge_size, video_processor.temporal_patch_size
    (grid,), (meta,) = out["video_grid_thw"].tolist(), out["video_metadata"]
    per_frame = grid[1] * grid[2] // merge**2
    ids: list[int] = []
    for t in frame_timestamps(list(meta.frames_indices), meta.fps, temporal)[: grid[0]]:
        ids += tokenizer(f"<{t:.1f} seconds>", add_special_tokens=False)["input_ids"]
        ids += [tokens.vision_start] + [tokens.video] * per_frame + [tokens.vision_end]
    return out["pixel_values_videos"], out["video_grid_thw"], tuple(ids)


def frame_timestamps(indices: list[int], fps: float, temporal_patch_size: int) -> list[float]:
    """One time per temporal patch: the mean of its first and last frame's times, as Qwen3-VL's
    processor computes them (the last patch padded with its last frame)."""
    if len(indices) % temporal_patch_size:
        indices = indices + [indices[-1]] * (temporal_patch_size - len(indices) % temporal_patch_size)
    times = [i / fps for i in indices]
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]


def expand_videos(prompt_ids: list[int], video_token_id: int, replacements: list[list[int]], where: str = "") -> list[int]:
    """Each single video placeholder of `prompt_ids` (one per video) replaced by its ids, in order."""
    return replace_placeholders(prompt_ids, video_token_id, replacements, "video", where)


def load_video_processor(model_dir: str):
    """The checkpoint's video processor, or None when it ships none (videos are then refused)."""
    from pathlib import Path

    if not (Path(model_dir) / "video_preprocessor_config.json").is_file():
        return None
    from transformers import AutoVideoProcessor

    return AutoVideoProcessor.from_pretrained(model_dir)
