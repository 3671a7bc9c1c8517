"""Tiny offline models for the CPU demo and the tests: the toy tokenizer and random Qwen3 and Qwen3.5-VL
checkpoints, of the shapes in shapes.py.

Nothing here downloads anything. The tokenizer is a byte-level BPE trained here on the toy
corpus with the `tokenizers` library, plus whole tokens for the answer format, saved as a
HuggingFace `PreTrainedTokenizerFast` with a chat template, so every code path that serves a real
checkpoint (chat template, special tokens, decode) runs unchanged on the toy.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from megatron_zppo.toy.shapes import QWEN3_SIZES, QWEN35_TEXT, QWEN35_VISION

PAD, EOS = "<pad>", "<|endoftext|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
# Whole tokens for the answer format: shorter sequences, and each is one decision for the model.
WORDS = ["<think>", "</think>", "\\boxed{", "<candidate>", "</candidate>", "WRONG"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (offline). Digits stay single tokens, as in Qwen's own
    tokenizer, so that arithmetic is done digit by digit rather than on arbitrary chunks."""
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    core.decoder = decoders.ByteLevel()
    specials = [PAD, EOS, USER, ASSISTANT]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS,
                                  additional_special_tokens=[USER, ASSISTANT])
    tok.add_tokens(WORDS)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok


def new_qwen3(out_dir: str | Path, size: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0,
              max_positions: int = 1024) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3 of one of `shapes.QWEN3_SIZES`, saved with the tokenizer as an HF checkpoint."""
    if size not in QWEN3_SIZES:
        raise ValueError(f"toy model size {size!r} unknown; expected one of {sorted(QWEN3_SIZES)}")
    cfg = Qwen3Config(
        vocab_size=len(tokenizer), **QWEN3_SIZES[size], max_position_embeddings=max_positions,
        tie_word_embeddings=True, rope_theta=10000.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    return _save(Qwen3ForCausalLM(cfg).float(), tokenizer, out_dir)


def _save(model, tokenizer, out_dir: str | Path):
    """The checkpoint with the tokenizer, generation stopping at the tokenizer's EOS."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


VISION_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
# The toy chat template, with Qwen's image and video entries: one placeholder per image or video
# before the text.
VL_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% else %}<|assistant|>{{ m['content'] }}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def new_qwen35_vl(out_dir: str | Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0):
    """A randomly initialised, tiny Qwen3.5 vision-language checkpoint (hybrid Gated-DeltaNet +
    attention text model, one-block vision tower) with the toy tokenizer, Qwen's vision tokens and
    image and video processors, saved as an HF checkpoint. For tests of the vision path; it knows nothing."""
    import copy

    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(VISION_TOKENS, special_tokens=True)
    tok.chat_template = VL_CHAT_TEMPLATE
    start, pad, end, video = tok.convert_tokens_to_ids(VISION_TOKENS)
    text = dict(QWEN35_TEXT, vocab_size=len(tok), max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id)
    vision = dict(QWEN35_VISION, out_hidden_size=text["hidden_size"])
    cfg = Qwen3_5Config(text_config=text, vision_config=vision, image_token_id=pad, video_token_id=video,
                        vision_start_token_id=start, vision_end_token_id=end)
    torch.manual_seed(seed)
    model = _save(Qwen3_5ForConditionalGeneration(cfg).float(), tok, out_dir)
    # Small images stay small: 32x32 to 128x128 pixels, 16-px patches merged 2x2 into vision tokens.
    Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                          max_pixels=128 * 128).save_pretrained(out_dir)
    # Videos: 2 frames a second, 4 to 8 frames, each 32x32 to 64x64 pixels (size bounds count all frames).
    Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, fps=2, min_frames=4, max_frames=8,
                          size={"shortest_edge": 32 * 32 * 4, "longest_edge": 64 * 64 * 8}).save_pretrained(out_dir)
    return model
