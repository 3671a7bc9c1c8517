"""Images as datasets give them: a file path, raw bytes, a base64 data URI, or an http(s) URL.

`open_image` decodes one fully (a truncated or corrupt file fails here, not in the middle of a
rollout); `image_problem` says in words what is wrong with one, or None. Both are used when data
is loaded and by tools/prepare_vl_data.py.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

URL_TIMEOUT_S = 30.0


def image_bytes(ref: str | bytes) -> bytes:
    if isinstance(ref, bytes):
        return ref
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"an image reference must be a path, URL, data URI or bytes, got {type(ref).__name__}")
    if ref.startswith("data:"):
        _, _, payload = ref.partition("base64,")
        if not payload:
            raise ValueError("data URI without a base64 payload")
        return base64.b64decode(payload)
    if ref.startswith(("http://", "https://")):
        import httpx

        resp = httpx.get(ref, timeout=URL_TIMEOUT_S, follow_redirects=True)
        resp.raise_for_status()
        return resp.content
    path = Path(ref)
    if not path.is_file():
        raise FileNotFoundError(f"image file {ref} does not exist")
    return path.read_bytes()


def open_image(ref: str | bytes):
    """The decoded image (PIL), converted to RGB."""
    from PIL import Image

    img = Image.open(io.BytesIO(image_bytes(ref)))
    img.load()  # decode all of it now: a truncated file raises here
    return img.convert("RGB")


def fit_pixels(ref: str | bytes, min_pixels: int = 0, max_pixels: int = 0) -> str | bytes:
    """The image scaled (aspect kept) so that its area is within [min_pixels, max_pixels] (0: no
    bound), as PNG bytes; an image already within the bounds is returned as given. Evaluation's
    pixel bounds act here, on the data, so an in-process model and an SGLang server see the same
    pixels whatever their processors' own bounds."""
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes(ref))) as img:
        w, h = img.size
        area = w * h
        scale = (max_pixels / area) ** 0.5 if max_pixels and area > max_pixels else \
            (min_pixels / area) ** 0.5 if min_pixels and area < min_pixels else 1.0
        if scale == 1.0:
            return ref
        rounded = math.ceil if scale > 1 else math.floor  # so the new area is within the bound it meets
        size = (max(1, rounded(w * scale)), max(1, rounded(h * scale)))
        buf = io.BytesIO()
        img.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(buf, format="PNG")
        return buf.getvalue()


def describe(ref: str | bytes) -> str:
    return f"<{len(ref)} bytes>" if isinstance(ref, bytes) else (ref if len(ref) < 120 else ref[:60] + "...")


def image_problem(ref: str | bytes, min_side: int = 0) -> str | None:
    """Why `ref` is unusable (missing, undecodable, smaller than `min_side` px on a side), or None."""
    try:
        img = open_image(ref)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files; all mean "unusable"
        return f"image {describe(ref)} cannot be read: {type(e).__name__}: {e}"
    if min(img.size) < min_side:
        return f"image {describe(ref)} is {img.size[0]}x{img.size[1]} px, smaller than {min_side} px on a side"
    return None


def expand_placeholders(prompt_ids: list[int], image_token_id: int, counts: list[int], where: str = "") -> list[int]:
    """Each single image placeholder of `prompt_ids` (one per image, as the chat template writes
    them) repeated to that image's number of vision tokens, in order."""
    return replace_placeholders(prompt_ids, image_token_id, [[image_token_id] * n for n in counts], "image", where)


def replace_placeholders(prompt_ids: list[int], token_id: int, replacements: list[list[int]], kind: str,
                         where: str = "") -> list[int]:
    """Each single `kind` placeholder (`token_id`, one per image or video) replaced by its ids, in order."""
    found = prompt_ids.count(token_id)
    if found != len(replacements):
        raise ValueError(f"{where}: the prompt holds {found} {kind} placeholder(s) for {len(replacements)} {kind}(s); "
                         f"encode it with its {kind}s (encode_prompt(..., n_{kind}s=...))")
    out, k = [], 0
    for t in prompt_ids:
        if t == token_id:
            out += replacements[k]
            k += 1
        else:
            out.append(t)
    return out


def is_vision_language(hf_config) -> bool:
    """A checkpoint config with a vision tower (Qwen3.5-VL and kin)."""
    return getattr(hf_config, "vision_config", None) is not None


def vision_token_counts(image_processor, refs) -> list[int]:
    """Each image's number of vision tokens from its size alone, by the processor's own resize rule
    (what a prompt-length check needs, without resizing and normalising the pixels); processors
    without that rule process the images."""
    patches = getattr(image_processor, "get_number_of_image_patches", None)
    if patches is None:
        return vision_inputs(image_processor, refs)[1]
    from PIL import Image

    counts = []
    for ref in refs:
        with Image.open(io.BytesIO(image_bytes(ref))) as img:  # reads the header, not the pixels
            width, height = img.size
        counts.append(patches(height, width, {}) // image_processor.merge_size**2)
    return counts


def vision_inputs(image_processor, refs) -> tuple[dict, list[int]]:
    """The processor's tensors for `refs` and each image's number of vision tokens (patches merged
    `merge_size` x `merge_size`): what one image placeholder in a prompt stands for."""
    inputs = image_processor(images=[open_image(r) for r in refs], return_tensors="pt")
    return inputs, [int(g.prod()) // image_processor.merge_size**2 for g in inputs["image_grid_thw"]]
