"""Stopping a run on request: SIGTERM ends it at the next safe point with a checkpoint.

Slurm tells a job about its time limit or a preemption with SIGTERM (ahead of time with
`sbatch --signal`), and torchrun forwards it to every rank. The handler only notes the request;
the loop asks `stop_now()` at the end of each rollout step, where every rank has finished the
step, so the ranks agree (one all-reduce) and all save the same checkpoint before leaving.
SIGINT (Ctrl-C) is left to Python: it raises KeyboardInterrupt at once and the main job reports
it in one line; the last complete checkpoint stays loadable either way (run_checkpoint.py).
"""

from __future__ import annotations

import signal

import torch


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None
        signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame) -> None:
        if self.signal_name is None:
            print(f"pretrain_zppo: {signal.Signals(signum).name} received: stopping after this step, with a "
                  "checkpoint", flush=True)
        self.signal_name = signal.Signals(signum).name

    def stop_now(self) -> bool:
        """True on every rank if any rank was asked to stop (a collective: call it on all ranks)."""
        flag = self.signal_name is not None
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            on_gpu = torch.distributed.get_backend() == "nccl"  # NCCL reduces GPU tensors only
            t = torch.tensor([int(flag)], device=torch.cuda.current_device() if on_gpu else "cpu")
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
            self.signal_name = self.signal_name or ("SIGTERM" if flag else None)
        return flag

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
