"""Helper processes that die with the process that started them, however it dies.

`kill -9` (what the OOM killer and Slurm's last resort do) runs no handler, no `finally` and no
atexit in the killed process, so its children must notice on their own. Every helper process the
run starts calls `die_with_parent` first: grader workers and their grading processes, and the
process Megatron's checkpoint writer starts (see train/dist_checkpoint.py).
"""

from __future__ import annotations

import os
import signal
import threading
import time


def die_with_parent(parent: int) -> None:
    """The kernel kills us when the parent dies (Linux: PR_SET_PDEATHSIG; strictly, when the
    parent's thread that started us ends, so start helpers from a thread that lives as long as
    they should); elsewhere a watchdog thread polls the parent pid. SIGINT and SIGTERM are the
    parent's to handle: Ctrl-C reaches the whole process group, and so does torchrun's SIGTERM
    to each rank, which must not take away the checkpoint writer or the graders the rank needs
    for its last step and checkpoint. So helpers ignore both, and are stopped with SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) == 0:  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # it died before the call
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
