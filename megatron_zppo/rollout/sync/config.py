"""The settings of the student's weight sync (`student.weight_sync`), chosen once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from megatron_zppo.config_io import Range
from megatron_zppo.rollout.sync.buckets import DEFAULT_BUCKET_BYTES


# Said in every weight-update request, not left to SGLang's default (False for these requests in
# 0.5.23, True for /update_weight_version): an update must never abort generations nobody stopped.
KEEP_REQUESTS = {"abort_all_requests": False}


@dataclass(frozen=True)
class WeightSyncConfig:
    """How the trainer pushes new weights into an inference server (chosen once at start-up)."""

    # "distributed": process-group broadcast | "disk": safetensors files | "ipc": CUDA-IPC handles to a
    # server on the same GPUs (co-located; GPU only)
    strategy: str = "distributed"
    bucket_bytes: Annotated[int, Range(ge=1)] = DEFAULT_BUCKET_BYTES  # bytes per broadcast bucket (disk: per shard)
    # distributed
    backend: str = "nccl"  # torch.distributed backend; "gloo" for CPU servers and tests
    # an address of the trainer's sending rank that every server can reach; "auto": that rank's host
    # name (multi-node jobs, where which node holds rank 0 is decided at start-up)
    master_addr: str = "127.0.0.1"
    master_port: Annotated[int, Range(ge=0, le=65535)] = 0  # 0: pick a free port when the group is first made
    # each server's tp_size: server i's ranks start at 1 + i * server_world_size
    server_world_size: Annotated[int, Range(ge=1)] = 1
    group_name: str = "zppo_weight_sync"  # prefix of the process group's name (a random suffix is added)
    # Several servers (a pool): "one_group" joins the trainer and every server in one process group, so
    # each bucket is broadcast once for all of them; "per_server" gives each server its own group
    # (name suffixed _i, port + i when fixed) for setups where one group cannot span them.
    fanout: str = "one_group"
    # None: one broadcast per tensor; "flattened_bucket": one per bucket (SGLang's flat layout).
    # Per tensor is the default: on CPU/gloo it measured faster (benchmarks/bench_weight_sync.py),
    # since the flat path adds a copy on each side; with thousands of tensors on NCCL, try flat.
    load_format: str | None = None
    timeout_s: Annotated[float, Range(gt=0)] = 600.0  # bounds every rendezvous and broadcast, so a dead peer cannot hang us
    # disk
    disk_dir: str | None = None  # a directory the server can read; one sub-directory per version
    disk_support_dir: str | None = None  # HF model dir whose config/tokenizer files are copied along

    def __post_init__(self):
        if self.strategy not in ("distributed", "disk", "ipc"):
            raise ValueError(f"weight_sync.strategy must be 'distributed', 'disk' or 'ipc', got {self.strategy!r}")
        if self.strategy == "disk" and not self.disk_dir:
            raise ValueError("weight_sync.disk_dir is required when weight_sync.strategy is 'disk'")
        if self.fanout not in ("one_group", "per_server"):
            raise ValueError(f"weight_sync.fanout must be 'one_group' or 'per_server', got {self.fanout!r}")
