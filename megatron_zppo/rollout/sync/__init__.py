"""Weight sync: new weights from the trainer into the student's rollout servers, in one place.

- `buckets`: the one bucketing rule (`bucketed`) every sender, disk writer and export uses;
- `groups`: the process groups that join the trainer's sending rank with the servers, and the wire format;
- `disk`, `ipc`: the other two transports' payloads (safetensors directories, CUDA-IPC handles);
- `servers`: `ServerSync`, the frame over every server of the student (pause, send, verify, resume)
  with its three transports, and `policy_engine`, the one place a student's sync is built;
- `config`: `WeightSyncConfig`, the `student.weight_sync` section.
"""

from megatron_zppo.rollout.sync.buckets import DEFAULT_BUCKET_BYTES, bucketed
from megatron_zppo.rollout.sync.config import WeightSyncConfig

# The servers' frame imports the SGLang client (httpx) and the pool: loaded when first asked for,
# so that the trainer's export (`bucketed`) and the config (`WeightSyncConfig`) do not pull them in.
_SERVERS = ("DiskSync", "DistributedSync", "IpcSync", "ServerSync", "SyncReport", "make_sync", "policy_engine")


def __getattr__(name: str):
    if name in _SERVERS:
        from megatron_zppo.rollout.sync import servers

        return getattr(servers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_BUCKET_BYTES", "DiskSync", "DistributedSync", "IpcSync", "ServerSync", "SyncReport",
           "WeightSyncConfig", "bucketed", "make_sync", "policy_engine"]
