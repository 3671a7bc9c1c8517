"""Tiny offline models for the CPU demo and the tests: a character tokenizer and Qwen3 checkpoints.

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

PAD, EOS = "<pad>", "<|endoftext|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
# Whole tokens for the answer format: shorter sequences, and each is one decision for the model.
WORDS = ["<think>", "</think>", "\\boxed{", "<candidate>", "</candidate>", "WRONG"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# name -> (hidden, layers, heads, kv heads, ffn)
SIZES = {
    "tiny": (32, 1, 2, 1, 64),
    "small": (64, 2, 4, 2, 128),
    "medium": (96, 3, 4, 2, 256),
    "large": (128, 4, 4, 2, 384),
}


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
    """A randomly initialised Qwen3 of one of `SIZES`, saved with the tokenizer as an HF checkpoint."""
    if size not in SIZES:
        raise ValueError(f"toy model size {size!r} unknown; expected one of {sorted(SIZES)}")
    hidden, layers, heads, kv, ffn = SIZES[size]
    cfg = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, rope_theta=10000.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).float()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model
