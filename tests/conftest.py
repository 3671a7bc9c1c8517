"""Fixtures shared by every test package."""

import pytest


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The real pretrained model (tests/real_model.py): built once, then cached on disk."""
    from tests.real_model import smollm2_dir

    return smollm2_dir()
