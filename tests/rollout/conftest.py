"""Fixtures for the SGLang client tests: a fake server in its own process, and engines on it."""

import pytest

from megatron_zppo.rollout.sglang_engine import SGLangEngine
from megatron_zppo.rollout.sync import policy_engine
from tests.rollout.fake_sglang import FakeSGLang


def pytest_configure(config):
    # Registered here too so the marks stay valid where pytest-timeout is not installed.
    config.addinivalue_line("markers", "timeout(seconds): fail a test that runs longer (pytest-timeout)")


@pytest.fixture
def server():
    with FakeSGLang() as fake:
        yield fake


@pytest.fixture
def make_engine():
    """Engines with quick back-off so retry tests stay fast; all are shut down afterwards. Given
    `weight_sync`, the engine is a student of that one server, with its sync (as build.make_engine
    makes it)."""
    engines = []

    def make(url, weight_sync=None, **kwargs):
        kwargs.setdefault("backoff_s", 0.05)
        kwargs.setdefault("timeout_s", 20.0)
        engine = SGLangEngine(url, **kwargs)
        engines.append(engine)
        return engine if weight_sync is None else policy_engine([engine], engine.name, weight_sync)

    yield make
    for engine in engines:
        engine.shutdown()
