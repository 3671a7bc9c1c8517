"""Shared fixtures for the Megatron trainer tests: a tiny Qwen3 checkpoint and a world of one."""

import os

# The GDN/rotary paths may call torch.compile; compiling on CPU costs tens of seconds per test run.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import pytest  # noqa: E402

from tests.train.tiny_qwen3 import save_tiny_qwen3  # noqa: E402


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory):
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"))


@pytest.fixture(scope="session")
def megatron_world():
    """Megatron's parallel_state is process-global: initialise TP=1/PP=1 once per test session."""
    from megatron_zppo.train import cpu_compat, parallel

    cpu_compat.enable()  # the test process is the entry point here
    parallel.initialize(parallel.ParallelConfig(seed=1234))
    yield
    parallel.destroy()

