"""The ``--verify`` of both conversion tools: a Megatron policy's logits against a Hugging Face model's.

Both sides run the same few fixed token prompts (for a vision-language checkpoint each prompt also
holds one fixed picture, through the checkpoint's image processor, so the vision tower is checked
too); the check passes when the largest absolute logit difference is within the tolerance.
Under pipeline parallelism only the last stage has logits,
under tensor parallelism the vocabulary is gathered first; the figure is then all-reduced so every
rank returns the same verdict (and the same exit code).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_zppo.train.model import Policy

N_PROMPTS, PROMPT_LEN = 3, 12


def fixed_prompts(vocab_size: int) -> torch.Tensor:
    """[N_PROMPTS, PROMPT_LEN] token ids, the same on every rank and every run."""
    return torch.randint(0, vocab_size, (N_PROMPTS, PROMPT_LEN), generator=torch.Generator().manual_seed(0))


def is_vl(hf_dir: str) -> bool:
    from transformers import AutoConfig

    from megatron_zppo.images import is_vision_language

    return is_vision_language(AutoConfig.from_pretrained(hf_dir))


def fixed_inputs(hf_dir: str, vocab_size: int) -> tuple[torch.Tensor, dict]:
    """The fixed prompts, and for a vision-language checkpoint a fixed noise picture placed after
    each prompt's third token: (token ids, the model's image inputs)."""
    from transformers import AutoConfig

    tokens = fixed_prompts(vocab_size)
    if not is_vl(hf_dir):
        return tokens, {}
    config = AutoConfig.from_pretrained(hf_dir)
    import io

    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor

    from megatron_zppo.images import vision_inputs

    special = [getattr(config, k, None) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                  "vision_end_token_id")]
    tokens = tokens.masked_fill(torch.isin(tokens, torch.tensor([t for t in special if t is not None])), 0)
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8")).save(buf, format="PNG")
    inputs, (count,) = vision_inputs(AutoImageProcessor.from_pretrained(hf_dir), [buf.getvalue()])
    # As chat templates write it: start, the placeholder expanded, end (Megatron finds images by the start token).
    image = [config.vision_start_token_id] + [config.image_token_id] * count + [config.vision_end_token_id]
    tokens = torch.cat([tokens[:, :3], torch.tensor([image]).expand(N_PROMPTS, -1), tokens[:, 3:]], dim=1)
    return tokens, {"pixel_values": inputs["pixel_values"].repeat(N_PROMPTS, 1),
                    "image_grid_thw": inputs["image_grid_thw"].repeat(N_PROMPTS, 1)}


def megatron_logits(policy: Policy, tokens: torch.Tensor, vision: dict | None = None) -> torch.Tensor | None:
    """Full-vocabulary float32 logits [B, S, V] on the last pipeline stage; None on other stages."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    def keep_logits(local_logits):
        full = gather_from_tensor_model_parallel_region(local_logits)[..., : policy.vocab_size].float()
        # The schedule's per-token-loss contract: (loss, token count, reported values).
        return full.new_zeros(()), torch.tensor(full.shape[0] * full.shape[1]), {"logits": full}

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        position_ids = torch.arange(batch.shape[1]).expand_as(batch)
        return model(batch, position_ids, None, **(vision or {})), keep_logits

    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter([tokens]),
            model=policy.chunks,
            num_microbatches=1,
            seq_length=tokens.shape[1],
            micro_batch_size=tokens.shape[0],
            forward_only=True,
        )
    return outputs[0]["logits"] if outputs else None


def hf_logits(hf_dir: str, tokens: torch.Tensor, vision: dict | None = None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if not vision:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        with torch.no_grad():
            return model(tokens).logits.float()
    # The causal-LM class would drop the vision tower; the image positions are needed for M-RoPE.
    model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=tokens, mm_token_type_ids=(tokens == model.config.image_token_id).long(),
                     **vision).logits.float()


def max_logit_difference(policy: Policy, hf_dir: str) -> float:
    """max |Megatron - HF| over the fixed prompts; collective, the same value on every rank."""
    from megatron.core import parallel_state

    tokens, vision = fixed_inputs(hf_dir, policy.vocab_size)
    ours = megatron_logits(policy, tokens, vision)
    # One rank loads the HF model: the last stage's first TP rank of the first DP replica.
    compares = (
        ours is not None
        and parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_data_parallel_rank() == 0
    )
    diff = torch.tensor([-1.0], dtype=torch.float64)
    if compares:
        theirs = hf_logits(hf_dir, tokens, vision)
        if theirs.shape != ours.shape:
            raise ValueError(f"logit shapes differ: Megatron {tuple(ours.shape)} vs HF {tuple(theirs.shape)}")
        diff[0] = float((ours - theirs).abs().max())
    if dist.is_initialized():
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff[0])


def verify(policy: Policy, hf_dir: str, tolerance: float, what: str) -> int:
    """Print the figure on rank 0; return 0 if within ``tolerance``, 1 otherwise (on every rank)."""
    diff = max_logit_difference(policy, hf_dir)
    ok = 0 <= diff <= tolerance
    if not dist.is_initialized() or dist.get_rank() == 0:
        verdict = "OK" if ok else "FAILED"
        print(
            f"verify {verdict}: {what}: max |logit diff| = {diff:.3e} (tolerance {tolerance:.1e}) "
            f"on {N_PROMPTS} fixed prompts of {PROMPT_LEN} tokens" + (" and a picture" if is_vl(hf_dir) else ""),
            flush=True,
        )
    return 0 if ok else 1
