"""Videos as datasets give them (a file path, raw bytes, a base64 data URI or an http(s) URL, as
images are), decoded with PyAV and sampled to frames by the checkpoint's own video processor.

`open_video` decodes every frame once (a truncated or corrupt file fails here, at load time, not
in the middle of a rollout); `video_problem` says in words what is wrong with one, or None.

In the prompt a video is ONE placeholder token (``<|video_pad|>``, between the vision-start and
vision-end tokens the chat template writes), as images are. The model sees more: Qwen3-VL's
processor replaces it, for each temporal patch of sampled frames, by the frames' timestamp as text
(``<0.5 seconds>``), a vision-start token, the frame's vision tokens and a vision-end token.
`video_inputs` gives the processor's tensors and those replacement ids, which the rollout engine
and the trainer both splice in with `expand_videos`, so the two see the same sequence. SGLang is
sent the unexpanded prompt and the video, and expands it itself.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from megatron_zppo.images import describe, image_bytes, replace_placeholders

DEFAULT_FPS = 24.0  # what transformers assumes for a stream that states no frame rate


def video_bytes(ref: str | bytes) -> bytes:
    """The encoded file (path, URL with images.URL_TIMEOUT_S, data URI or bytes as given)."""
    try:
        return image_bytes(ref)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(str(e).replace("image", "video")) from None


def open_video(ref: str | bytes):
    """(frames [T, H, W, 3] uint8, the container's frame rate) with every frame decoded."""
    import av
    import numpy as np

    with av.open(io.BytesIO(video_bytes(ref))) as container:
        if not container.streams.video:
            raise ValueError("the file holds no video stream")
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        fps = float(stream.average_rate) if stream.average_rate else DEFAULT_FPS
    if not frames:
        raise ValueError("the video stream holds no frame")
    return np.stack(frames), fps


def video_problem(ref: str | bytes) -> str | None:
    """Why `ref` is unusable (missing, not a video, undecodable, no frames), or None."""
    try:
        open_video(ref)
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


def video_inputs(video_processor, tokenizer, tokens: VideoTokens, refs) -> tuple[dict, list[list[int]]]:
    """The processor's ``pixel_values_videos``/``video_grid_thw`` for `refs`, frames sampled by its
    own settings (fps, min/max frames), and each video's replacement ids for its placeholder."""
    from transformers.video_utils import VideoMetadata

    decoded = [open_video(r) for r in refs]
    metadata = [VideoMetadata(total_num_frames=len(f), fps=fps, height=f.shape[1], width=f.shape[2],
                              video_backend="pyav") for f, fps in decoded]
    out = video_processor(videos=[f for f, _ in decoded], video_metadata=metadata, do_sample_frames=True,
                          return_metadata=True, return_tensors="pt")
    merge, temporal = video_processor.merge_size, video_processor.temporal_patch_size
    replacements = []
    for grid, meta in zip(out["video_grid_thw"].tolist(), out["video_metadata"], strict=True):
        per_frame = grid[1] * grid[2] // merge**2
        ids: list[int] = []
        for t in frame_timestamps(list(meta.frames_indices), meta.fps, temporal)[: grid[0]]:
            ids += tokenizer(f"<{t:.1f} seconds>", add_special_tokens=False)["input_ids"]
            ids += [tokens.vision_start] + [tokens.video] * per_frame + [tokens.vision_end]
        replacements.append(ids)
    return {"pixel_values_videos": out["pixel_values_videos"], "video_grid_thw": out["video_grid_thw"]}, replacements


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
