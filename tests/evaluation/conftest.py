"""Fixtures of the evaluation tests: a small tokenizer with a chat template (trained here, in a second)."""

import pytest


@pytest.fixture(scope="session")
def toy_tokenizer(tmp_path_factory):
    from megatron_zppo.toy.models import build_tokenizer

    texts = ["What is 2 + 3? The answer is 5.", "hi hello and now? yes no", "Which colour? red blue green"] * 20
    return build_tokenizer(tmp_path_factory.mktemp("tok") / "tok", iter(texts), vocab_size=120)
