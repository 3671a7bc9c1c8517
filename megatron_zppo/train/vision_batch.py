"""Images into a trainer micro-batch: the checkpoint's HF image processor turns each row's images
into patches, and each image placeholder of the prompt (one per image, as rollouts carry them) is
expanded to that image's number of vision tokens, the positions the model fills with its image
embeddings. Those positions are prompt tokens: the loss, which covers response positions only,
never sees them. Videos go the same way through the checkpoint's video processor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_zppo.images import expand_placeholders, vision_inputs
from megatron_zppo.videos import expand_videos, video_inputs


def expand_images(prompts: Sequence[Sequence[int]], images: Sequence[Sequence], image_processor,
                  image_token_id: int, where: Sequence[str], vision_start_id: int | None = None):
    """(expanded prompts, pixel_values, image_grid_thw) for rows with `images` (a tuple per row;
    empty for text rows); (prompts, None, None) when no row has an image. `where` names each row
    in errors. With `vision_start_id`, every placeholder must follow that token, as Qwen's chat
    template writes it: Megatron's Qwen3-VL finds images by it for their multimodal positions,
    while HF's model does not, so without it the two would silently disagree."""
    refs = [ref for row in images for ref in row]
    if not refs:
        return [list(p) for p in prompts], None, None
    if image_processor is None:
        raise ValueError(f"{where[0]}: samples carry images but the policy is a text-only model")
    inputs, counts = vision_inputs(image_processor, refs)
    expanded, k = [], 0
    for prompt, row, name in zip(prompts, images, where, strict=True):
        if vision_start_id is not None:
            prompt = list(prompt)
            bad = [i for i, t in enumerate(prompt) if t == image_token_id
                   and (i == 0 or prompt[i - 1] != vision_start_id)]  # fmt: skip
            if bad:
                raise ValueError(f"{name}: image placeholder at position {bad[0]} does not follow the vision-start "
                                 f"token {vision_start_id}; prompts must place images as the checkpoint's chat "
                                 "template does")
        expanded.append(expand_placeholders(list(prompt), image_token_id, counts[k : k + len(row)], name))
        k += len(row)
    return expanded, inputs["pixel_values"], inputs["image_grid_thw"].to(torch.long)


def expand_videos_of_rows(prompts: Sequence[Sequence[int]], videos: Sequence[Sequence], video_processor, tokenizer,
                          tokens, where: Sequence[str]):
    """(prompts with each video placeholder replaced by its timestamped frames, pixel_values_videos,
    video_grid_thw) for rows with `videos` (a tuple per row, empty for rows without); (prompts,
    None, None) when no row has one. The same expansion the in-process engine does
    (megatron_zppo/videos.py), so trainer and engine score one sequence."""
    refs = [ref for row in videos for ref in row]
    if not refs:
        return [list(p) for p in prompts], None, None
    if video_processor is None:
        raise ValueError(f"{where[0]}: samples carry videos but the policy checkpoint has no video processor")
    inputs, replacements = video_inputs(video_processor, tokenizer, tokens, refs)
    expanded, k = [], 0
    for prompt, row, name in zip(prompts, videos, where, strict=True):
        expanded.append(expand_videos(list(prompt), tokens.video, replacements[k : k + len(row)], name))
        k += len(row)
    return expanded, inputs["pixel_values_videos"], inputs["video_grid_thw"].to(torch.long)
