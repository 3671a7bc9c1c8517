"""Stopping a run on request: SIGTERM ends it at the next safe point with a checkpoint.

Slurm tells a job about its time limit or a preemption with SIGTERM (ahead of time with
`sbatch --signal`), and torchrun forwards it to every rank. The handler only notes the request;
the loop asks `stop_now()` at the end of each rollout step, where every rank has finished the
step, so the ranks agree (one all-reduce) and all save the same checkpoint before leaving.
A step may not finish in time (a grader that hits its limit on every item needs items x limit /
workers): the step gets `run.stop_timeout_s` after the signal, well inside Slurm's lead (the
sbatch asks for 600 s); past it the step is abandoned and the process exits 143 at once, on the
last complete checkpoint (every save is atomic: run_checkpoint.py). Its helper processes die with
it (die_with_parent.py).
SIGINT (Ctrl-C) is left to Python: it raises KeyboardInterrupt at once and the main job reports
it in one line; the last complete checkpoint stays loadable either way (run_checkpoint.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import torch

from megatron_zppo import run_checkpoint


class StopRequest:
    def __init__(self, limit_s: float, run_dir: str | Path):
        self.limit_s, self.run_dir = limit_s, Path(run_dir)
        self.signal_name: str | None = None
        self._deadline: threading.Timer | None = None
        signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame) -> None:
        if self.signal_name is None:
            print(f"pretrain_zppo: {signal.Signals(signum).name} received: stopping after this step, with a "
                  f"checkpoint (the step has run.stop_timeout_s={self.limit_s:g} s to finish)", flush=True)
            self._deadline = threading.Timer(self.limit_s, self._abandon)
            self._deadline.daemon = True
            self._deadline.start()
        self.signal_name = signal.Signals(signum).name

    def _abandon(self) -> None:
        """On the timer's thread, whatever the main thread is doing: leave now, without a checkpoint."""
        try:
            last = run_checkpoint.latest(self.run_dir, log=lambda _: None)
        except run_checkpoint.CheckpointError as e:
            last = e
        print(f"pretrain_zppo: the step in progress did not finish within run.stop_timeout_s={self.limit_s:g} s "
              f"of {self.signal_name}: abandoned; last complete checkpoint: {last or 'none'}; resume with "
              "--load auto", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(143)  # 128 + SIGTERM, as when the step finishes in time

    def stop_now(self) -> bool:
        """True on every rank if any rank was asked to stop (a collective: call it on all ranks)."""
        flag = any_rank(self.signal_name is not None)
        self.signal_name = self.signal_name or ("SIGTERM" if flag else None)
        if flag and self._deadline is not None:  # the step finished in time: its checkpoint follows
            self._deadline.cancel()
        return flag

    def restore(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any (a collective: call it on all ranks)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        on_gpu = torch.distributed.get_backend() == "nccl"  # NCCL reduces GPU tensors only
        t = torch.tensor([int(flag)], device=torch.cuda.current_device() if on_gpu else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())
    return flag
