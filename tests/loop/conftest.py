"""A toy world built on the fly: a tokenizer trained here and random tiny Qwen3 models."""

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory):
    from transformers.utils import logging

    logging.disable_progress_bar()
    from megatron_zppo.core.prompts import PromptTemplates
    from megatron_zppo.toy.corpus import corpus
    from megatron_zppo.toy.models import build_tokenizer, new_qwen3

    root = tmp_path_factory.mktemp("toy")
    templates = PromptTemplates.load("examples/cpu_toy/templates")
    examples = corpus(templates, 300, seed=0)
    tok = build_tokenizer(root / "tok", (t for e in examples for t in (e.prompt, e.response)), vocab_size=300)
    new_qwen3(root / "student", "tiny", tok, seed=1)
    new_qwen3(root / "teacher", "tiny", tok, seed=2)
    return {"root": root, "student": str(root / "student"), "teacher": str(root / "teacher"),
            "templates": templates, "tokenizer": tok}
