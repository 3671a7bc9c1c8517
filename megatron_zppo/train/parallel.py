"""Start torch.distributed and Megatron's model-parallel groups for one training job.

Megatron-Core keeps its process groups in the global ``parallel_state``; this module is the one
place that creates and destroys them, from a small typed config.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_zppo.train import cpu_compat


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    # CPU initialisation draws from the CPU RNG, so every rank must use the same seed.
    seed: int = 1234


def check_layout(world_size: int, cfg: ParallelConfig) -> int:
    """Return the data-parallel size, or explain why the layout cannot tile the world."""
    if cfg.tensor_parallel < 1 or cfg.pipeline_parallel < 1:
        raise ValueError(
            f"tensor_parallel={cfg.tensor_parallel} and pipeline_parallel={cfg.pipeline_parallel}"
            " must both be >= 1"
        )
    model_parallel = cfg.tensor_parallel * cfg.pipeline_parallel
    if world_size % model_parallel != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by tensor_parallel ({cfg.tensor_parallel})"
            f" x pipeline_parallel ({cfg.pipeline_parallel}) = {model_parallel}"
        )
    return world_size // model_parallel


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _init_process_group() -> None:
    on_gpu = torch.cuda.is_available()
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group(backend=backend)
    else:  # a single process (tests, notebooks): a world of one, without touching os.environ
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        dist.init_process_group(backend=backend, init_method=init_method, rank=0, world_size=1)


def initialize(cfg: ParallelConfig) -> int:
    """Initialise distributed state and Megatron's groups; returns the data-parallel size.

    The process's entry point must have switched the CPU shims on (``cpu_compat.enable()``)."""
    cpu_compat.require_enabled("parallel.initialize")
    from megatron.core import parallel_state

    if not dist.is_initialized():
        _init_process_group()
    data_parallel = check_layout(dist.get_world_size(), cfg)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tensor_parallel,
        pipeline_model_parallel_size=cfg.pipeline_parallel,
    )
    torch.manual_seed(cfg.seed)
    cpu_compat.seed_model_parallel_rng(cfg.seed)
    return data_parallel


def destroy() -> None:
    """Tear down Megatron's groups and the default process group (safe to call twice)."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
