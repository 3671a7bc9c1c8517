"""Layout checks that run before any process group exists."""

import pytest

from megatron_zppo.train.parallel import ParallelConfig, check_layout


def test_check_layout_returns_the_data_parallel_size():
    assert check_layout(8, ParallelConfig(tensor_parallel=2, pipeline_parallel=2)) == 2
    assert check_layout(1, ParallelConfig()) == 1


def test_check_layout_names_the_sizes_when_world_does_not_divide():
    expected = r"world size 6 .*tensor_parallel \(2\).*pipeline_parallel \(2\) = 4"
    with pytest.raises(ValueError, match=expected):
        check_layout(6, ParallelConfig(tensor_parallel=2, pipeline_parallel=2))


def test_check_layout_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="tensor_parallel=0"):
        check_layout(2, ParallelConfig(tensor_parallel=0))


def test_initialize_gives_megatron_a_world_of_one(megatron_world):
    from megatron.core import parallel_state

    assert parallel_state.get_tensor_model_parallel_world_size() == 1
    assert parallel_state.get_pipeline_model_parallel_world_size() == 1
    assert parallel_state.get_data_parallel_world_size() == 1
