"""A tiny random Qwen3.5 vision-language checkpoint, a fixed PPO mini-batch with images, and one PPO
step on it under a TP/PP layout (torchrun).

``save_tiny_qwen35_vl`` writes the checkpoint (and its image processor) the VL trainer tests share.
Run as a script (from test_qwen35_vl.py), it is qwen35_worker.py's PPO step on this mini-batch.
"""

import dataclasses
import io
import os
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from megatron_zppo.toy.shapes import QWEN35_VISION  # noqa: E402
from tests.train.qwen35_worker import TINY  # noqa: E402

# Vision tokens at the top of the 250-token vocabulary; the rows below use ids < 240 otherwise.
START, IMAGE, END, VIDEO = 246, 247, 248, 249
# The shared vision tower with two blocks instead of one, so a slip in the per-block weight mapping
# shows; initializer_range as the text model's (qwen35_worker.py).
VISION = dict(QWEN35_VISION, depth=2, out_hidden_size=TINY["hidden_size"], initializer_range=0.2)
# (prompt with one placeholder per image, response, image sizes): a one-image row, a text row, a
# two-image row, and an image-only prompt. Images are 1x1 to 3x2 grids of 2x2-merged 16-px patches.
ROWS = [
    ([5, 17, START, IMAGE, END, 3], [7, 8, 9, 10, 11, 12], [(64, 48)]),
    ([9, 30], [42, 43], []),
    ([START, IMAGE, END, 100, START, IMAGE, END, 101], [200, 239, 0], [(32, 32), (96, 64)]),
    ([START, IMAGE, END], [60, 61, 62, 63], [(32, 64)]),
]
ADVANTAGES = torch.tensor([1.0, -0.5, 0.25, -1.0])


def save_tiny_qwen35_vl(path: Path, seed: int = 0) -> str:
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    from tests.train.tiny_qwen3 import save_with_perturbed_norms

    torch.manual_seed(seed)
    cfg = Qwen3_5Config(text_config=TINY, vision_config=VISION, image_token_id=IMAGE, video_token_id=VIDEO,
                        vision_start_token_id=START, vision_end_token_id=END, tie_word_embeddings=False)
    save_with_perturbed_norms(Qwen3_5ForConditionalGeneration(cfg).float(), path)
    Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                          max_pixels=128 * 128).save_pretrained(path)
    return str(path)


def png(seed: int, size: tuple[int, int]) -> bytes:
    """A noise image: every patch differs, so a patch-order slip changes the embeddings."""
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def row_images() -> list[tuple[bytes, ...]]:
    return [tuple(png(10 * i + k, size) for k, size in enumerate(sizes)) for i, (_, _, sizes) in enumerate(ROWS)]


def vl_batch(hf_dir: str, rows: slice = slice(None), response_width: int | None = None):
    """The SequenceBatch of ``ROWS[rows]``: placeholders expanded, images through the processor."""
    from transformers import AutoImageProcessor

    from megatron_zppo.train.logprobs import SequenceBatch
    from megatron_zppo.train.vision_batch import expand_images

    prompts, responses, _ = zip(*ROWS[rows])
    images = row_images()[rows]
    processor = AutoImageProcessor.from_pretrained(hf_dir)
    expanded, pixels, grid = expand_images(prompts, images, processor, IMAGE, [f"row {i}" for i in range(len(images))])
    batch = SequenceBatch.from_lists(expanded, responses, response_width=response_width)
    return dataclasses.replace(batch, pixel_values=pixels, image_grid_thw=grid)


def old_logprobs(hf_dir: str, seed: int = 0):
    """The full batch and off-policy 'old' log-probs, so ratios differ from 1 and clipping triggers."""
    batch = vl_batch(hf_dir)
    noise = torch.randn(batch.response_mask().shape, generator=torch.Generator().manual_seed(seed))
    return batch, (-3.0 + 0.3 * noise) * batch.response_mask()


def ppo_micro_batches(hf_dir: str, rows_per_micro: int):
    from megatron_zppo.train.steps import PPOMicroBatch

    full, old = old_logprobs(hf_dir)
    out = []
    for start in range(0, len(ROWS), rows_per_micro):
        rows = slice(start, start + rows_per_micro)
        out.append(PPOMicroBatch(vl_batch(hf_dir, rows, full.response_width), old[rows], ADVANTAGES[rows]))
    return out


if __name__ == "__main__":
    from tests.train.qwen35_worker import main

    main(lambda hf_dir: ppo_micro_batches(hf_dir, rows_per_micro=2))
