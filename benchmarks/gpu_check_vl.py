"""The vision-language rows of the GPU check (benchmarks/gpu_check.py): a random Qwen3.5-VL model
(hybrid Gated-DeltaNet text model + ViT) through our ``build_policy``, its response log-probs with
images against HF's model in float64 on CPU, and PPO steps on rows with images.

On a GPU with Transformer Engine and flash-linear-attention (the NGC image) this exercises TE's layers,
the bridge's own vision spec and FLA's GDN kernels; on the lent GPU machine, which has neither, the
local spec and Megatron's torch delta rule on CUDA. A failure becomes a FAILED row (gpu_check.py's
``Report.section``), so the rows of the other sections still come back.
"""

from __future__ import annotations

from collections.abc import Iterator

import dataclasses
import io

import numpy as np
import torch

from megatron_zppo.toy.shapes import QWEN35_TEXT, QWEN35_VISION

LAYERS = ["linear_attention"] * 3 + ["full_attention"]
TEXT = dict(hidden_size=1024, intermediate_size=3072, num_attention_heads=8, num_key_value_heads=2, head_dim=128,
            linear_num_key_heads=8, linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
            linear_conv_kernel_dim=4, vocab_size=32000, max_position_embeddings=8192)  # fmt: skip
VISION = dict(depth=4, hidden_size=512, num_heads=8, intermediate_size=2048, patch_size=16, spatial_merge_size=2,
              temporal_patch_size=2, num_position_embeddings=2304)  # fmt: skip
# The --cpu-smoke shapes; the layer pattern is LAYERS in both sizes.
TINY_TEXT = dict(QWEN35_TEXT, vocab_size=320, max_position_embeddings=TEXT["max_position_embeddings"])
TINY_VISION = QWEN35_VISION
IMAGE_TOKEN, START, END = 10, 11, 12


def save_random_vl(out_dir: str, smoke: bool) -> str:
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    text = dict(TINY_TEXT if smoke else TEXT, num_hidden_layers=len(LAYERS) * (1 if smoke else 2),
                layer_types=LAYERS * (1 if smoke else 2))
    vision = dict(TINY_VISION if smoke else VISION, out_hidden_size=text["hidden_size"])
    cfg = Qwen3_5Config(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN, video_token_id=13,
                        vision_start_token_id=START, vision_end_token_id=END, tie_word_embeddings=False)
    torch.manual_seed(0)
    Qwen3_5ForConditionalGeneration(cfg).float().save_pretrained(out_dir)
    side = 64 if smoke else 448
    Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                          max_pixels=side * side).save_pretrained(out_dir)
    return out_dir


def _png(seed: int, side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((side, side, 3)) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def image_batch(hf_dir: str, vocab: int, response: int, side: int, seed: int = 1):
    """Two rows, each an image then text, with ``response`` random response tokens."""
    from transformers import AutoImageProcessor

    from megatron_zppo.train.logprobs import SequenceBatch
    from megatron_zppo.train.vision_batch import expand_images

    g = torch.Generator().manual_seed(seed)
    text = [torch.randint(20, vocab, (n,), generator=g).tolist() for n in (12, 7)]
    prompts = [[START, IMAGE_TOKEN, END] + t for t in text]
    responses = [torch.randint(20, vocab, (n,), generator=g).tolist() for n in (response, response // 2)]
    images = [(_png(seed, side),), (_png(seed + 1, side // 2),)]
    expanded, pixels, grid = expand_images(prompts, images, AutoImageProcessor.from_pretrained(hf_dir), IMAGE_TOKEN,
                                           ["row 0", "row 1"])
    batch = SequenceBatch.from_lists(expanded, responses)
    return dataclasses.replace(batch, pixel_values=pixels, image_grid_thw=grid)


@torch.no_grad()
def reference_logprobs(hf_dir: str, batch) -> torch.Tensor:
    """HF's model in float64 on CPU, one row (and its one image) at a time."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float64).eval()
    grids = batch.image_grid_thw
    pixels = torch.split(batch.pixel_values, [int(g.prod()) for g in grids])
    out = torch.zeros(batch.response_mask().shape, dtype=torch.float64)
    for i in range(batch.tokens.shape[0]):
        p, r = int(batch.prompt_lens[i]), int(batch.response_lens[i])
        ids = batch.tokens[i : i + 1, : p + r]
        logits = model(input_ids=ids, pixel_values=pixels[i].double(), image_grid_thw=grids[i : i + 1],
                       mm_token_type_ids=(ids == IMAGE_TOKEN).long()).logits[0, p - 1 : p + r - 1]
        out[i, :r] = logits.log_softmax(-1).gather(-1, ids[0, p : p + r, None])[:, 0]
    return out


def vl_rows(check, smoke: bool, args) -> Iterator[str]:
    """The Markdown rows; ``check`` is the gpu_check module (its build, parity and timing helpers)."""
    import tempfile

    from megatron_zppo.train.steps import PPOMicroBatch

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = save_random_vl(tmp, smoke)
        vocab = (TINY_TEXT if smoke else TEXT)["vocab_size"]
        batch = image_batch(hf_dir, vocab, 16 if smoke else 1024, 64 if smoke else 448)
        ref = reference_logprobs(hf_dir, batch)
        policy, _ = check.build(hf_dir, "fp32")
        diff = (check.trainer_logprobs(policy, batch) - ref).abs().max().item()
        yield f"| Qwen3.5-VL log-prob parity | fp32 trainer vs float64 CPU, 2 rows with images | max abs diff {diff:.2e} |"
        del policy
        kind = check.train_kind()[0]
        policy, trainer = check.build(hf_dir, kind, train=True)  # its own log-probs: one build fewer
        yield check.parity_row("Qwen3.5-VL log-prob parity", "bf16 trainer vs float64 CPU, 2 rows with images",
                               policy, batch, ref)
        mb = [PPOMicroBatch(batch, torch.full(batch.response_mask().shape, -3.0), torch.ones(2))]
        seconds = check.time_steps(trainer, mb, args.warmup, args.steps)
        tokens, patches = int(batch.tokens.numel()), int(batch.pixel_values.shape[0])
        yield (f"| Qwen3.5-VL throughput | {kind} PPO step, 2 rows, {tokens} tokens + {patches} image "
               f"patches | {tokens / seconds:,.0f} tokens/s ({seconds * 1e3:.1f} ms) |")
