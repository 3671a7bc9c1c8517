"""The tiny Qwen3.5 vision-language checkpoint of qwen35_vl_worker.py with a video processor and a
tokenizer for the frames' timestamp text, a fixed PPO mini-batch with videos, and (run as a
script, under torchrun) one PPO step on it under a TP/PP layout.
"""

import dataclasses
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.train.qwen35_vl_worker import END, IMAGE, START, VIDEO, png, save_tiny_qwen35_vl  # noqa: E402

# (prompt with one placeholder per image/video, response, image sizes, video (frames, height, width)):
# a video row, a text row, an image-then-video row and a two-video row.
ROWS = [
    ([5, 17, START, VIDEO, END, 3], [7, 8, 9, 10, 11], [], [(8, 64, 64)]),
    ([9, 30], [42, 43], [], []),
    ([START, IMAGE, END, START, VIDEO, END, 100], [200, 239, 0], [(32, 32)], [(6, 32, 64)]),
    ([START, VIDEO, END, 101, START, VIDEO, END], [60, 61, 62, 63], [], [(4, 32, 32), (8, 64, 32)]),
]
ADVANTAGES = torch.tensor([1.0, -0.5, 0.25, -1.0])
FPS = 4


def save_tiny_qwen35_vl_video(path: Path) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    save_tiny_qwen35_vl(path)
    # Timestamp text ("<1.5 seconds>") needs a tokenizer; its ids stay below the vision tokens.
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    stamps = [f"<{t / 10:.1f} seconds>" for t in range(60)]
    core.train_from_iterator(stamps, trainers.BpeTrainer(vocab_size=60, show_progress=False))
    assert core.get_vocab_size() < START
    PreTrainedTokenizerFast(tokenizer_object=core).save_pretrained(path)
    Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, fps=2, min_frames=4, max_frames=8,
                          size={"shortest_edge": 32 * 32 * 4, "longest_edge": 64 * 64 * 8}).save_pretrained(path)
    return str(path)


def mp4(seed: int, frames: int, height: int, width: int) -> bytes:
    """Noise frames (every patch differs, so a frame- or patch-order slip changes the embeddings)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from make_toy_video import encode_mp4

    video = (np.random.default_rng(seed).random((frames, height, width, 3)) * 255).astype("uint8")
    return encode_mp4(video)


def row_media() -> tuple[list[tuple[bytes, ...]], list[tuple[bytes, ...]]]:
    images = [tuple(png(10 * i + k, size) for k, size in enumerate(r[2])) for i, r in enumerate(ROWS)]
    videos = [tuple(mp4(10 * i + k, *shape) for k, shape in enumerate(r[3])) for i, r in enumerate(ROWS)]
    return images, videos


def vl_video_batch(hf_dir: str, rows: slice = slice(None), response_width: int | None = None):
    """The SequenceBatch of ``ROWS[rows]``: placeholders expanded, images and videos processed."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    from megatron_zppo.train.logprobs import SequenceBatch
    from megatron_zppo.train.vision_batch import expand_images, expand_videos_of_rows
    from megatron_zppo.videos import VideoTokens, load_video_processor

    prompts = [r[0] for r in ROWS[rows]]
    responses = [r[1] for r in ROWS[rows]]
    images, videos = (m[rows] for m in row_media())
    names = [f"row {i}" for i in range(len(prompts))]
    expanded, pixels, grid = expand_images(prompts, images, AutoImageProcessor.from_pretrained(hf_dir), IMAGE, names)
    expanded, video_pixels, video_grid = expand_videos_of_rows(
        expanded, videos, load_video_processor(hf_dir), AutoTokenizer.from_pretrained(hf_dir),
        VideoTokens.of(AutoConfig.from_pretrained(hf_dir)), names)
    batch = SequenceBatch.from_lists(expanded, responses, response_width=response_width)
    return dataclasses.replace(batch, pixel_values=pixels, image_grid_thw=grid, pixel_values_videos=video_pixels,
                               video_grid_thw=video_grid)


def old_logprobs(hf_dir: str, seed: int = 0):
    batch = vl_video_batch(hf_dir)
    noise = torch.randn(batch.response_mask().shape, generator=torch.Generator().manual_seed(seed))
    return batch, (-3.0 + 0.3 * noise) * batch.response_mask()


def ppo_micro_batches(hf_dir: str, rows_per_micro: int):
    from megatron_zppo.train.steps import PPOMicroBatch

    full, old = old_logprobs(hf_dir)
    return [PPOMicroBatch(vl_video_batch(hf_dir, slice(s, s + rows_per_micro), full.response_width),
                          old[s : s + rows_per_micro], ADVANTAGES[s : s + rows_per_micro])
            for s in range(0, len(ROWS), rows_per_micro)]


if __name__ == "__main__":
    from tests.train.qwen35_worker import main

    random.seed(0)
    main(lambda hf_dir: ppo_micro_batches(hf_dir, rows_per_micro=2))
