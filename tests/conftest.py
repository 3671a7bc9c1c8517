"""Fixtures shared by every test package."""

import pytest


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The real pretrained model (tests/real_model.py): built once, then cached on disk."""
    from tests.real_model import smollm2_dir

    return smollm2_dir()


@pytest.fixture
def own_megatron_world():
    """For a test that builds Megatron's process-global world itself, in-process, and tears it down
    (tools/make_toy_vl.py's trainer). Under pytest-xdist the same worker process may already hold the
    TP=1 world of tests/train's session fixture: it is torn down first and set up again afterwards."""
    from megatron.core import parallel_state

    from megatron_zppo.train import cpu_compat, parallel

    cpu_compat.enable()  # the test process is the entry point here

    held = parallel_state.model_parallel_is_initialized()
    if held:
        parallel.destroy()
    yield
    if held and not parallel_state.model_parallel_is_initialized():
        parallel.initialize(parallel.ParallelConfig(seed=1234))


# The files that take longest (scripts/test.sh on 2 cores; docs/testing.md), collected first. Under
# pytest-xdist this decides only among files of equal test count: xdist hands out the files with the
# most tests first, so the one-test real-model main job (about 2 minutes) runs last, alone.
# `--no-loadscope-reorder` would let this list decide; it is not yet measured. Nothing is skipped.
LONGEST_FIRST = ["loop/test_vl_e2e.py", "loop/test_pretrain_e2e.py", "train/test_parallel_equivalence.py",
                 "loop/test_overlap_e2e.py", "loop/test_main_job_failures.py", "train/test_qwen35_vl.py",
                 "loop/test_real_model_e2e.py", "train/test_real_model.py", "loop/test_hostile_inputs.py",
                 "train/test_logit_distill.py", "loop/test_baselines_e2e.py", "loop/test_toy_vl.py",
                 "train/test_checkpointing.py", "train/test_conversion.py", "train/test_qwen35.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item):
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return rank.get(path, len(rank))

    items.sort(key=key)  # stable: the order within a file, and of the rest, is unchanged
