"""Quiet by default: what upstream packages print goes to the run's log file, not the terminal.

A run prints screens of Megatron INFO lines, the whole ``OptimizerConfig``, parameter-bucket
listings, progress bars, Deprecation/UserWarnings and a harmless Megatron-Bridge import traceback
(``FP8GlobalStateManager`` is absent without Transformer Engine). ``route`` sends all of that to
``<run.dir>/upstream.log`` (``upstream.rank<N>.log`` on other ranks) and leaves on the terminal
what this project prints (progress, tables, errors) and upstream ERROR records. ``--verbose``
skips it.

Three channels carry upstream output, and each is routed where it starts:
- ``logging``: one file handler and one ERROR-level terminal handler on the root logger, installed
  before Megatron's import-time ``logging.basicConfig`` (which then does nothing); transformers'
  own stderr handler is replaced by propagation to the root.
- ``warnings``: captured into logging (``py.warnings``), so they reach the file.
- ``print`` and direct stream writes (Megatron-Core and the bridge print their parameter counts and
  configs; tqdm writes bars to stderr): stdout and stderr become routers that look at the module
  that called ``write`` and send the text to the file unless that module is ours. Tracebacks of
  uncaught errors are written by the interpreter itself (no calling module) and stay on the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# Modules whose writes stay on the terminal: this project, the main script, and the stdlib modules
# that format errors. Not `logging`: upstream loggers with their own stderr handler (Megatron-Bridge's
# import_utils has one) write through it; our terminal handler writes to sys.__stderr__ directly.
OURS = ("megatron_zppo", "__main__", "tools", "pretrain_zppo", "traceback", "argparse", "pdb")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _is_ours(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in OURS)


class _Router:
    """A text stream that forwards our writes to ``terminal`` and upstream writes to ``log``."""

    def __init__(self, terminal, log):
        self.terminal, self.log = terminal, log

    def write(self, text: str) -> int:
        try:
            module = sys._getframe(1).f_globals.get("__name__", "")
        except ValueError:  # no Python caller: the interpreter itself (an uncaught error's traceback)
            module = "__main__"
        target = self.terminal if _is_ours(module) else self.log
        target.write(text)
        if target is self.log:
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.log.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding...: the terminal's
        return getattr(self.terminal, name)


def log_path(run_dir: str | Path, rank: int) -> Path:
    return Path(run_dir) / ("upstream.log" if rank == 0 else f"upstream.rank{rank}.log")


def route(run_dir: str | Path, verbose: bool = False) -> Path | None:
    """Send upstream output to the run directory's log file; returns its path (None if verbose).

    Call once, early in ``main``: after the config is known, before Megatron is imported."""
    if verbose:
        return None
    path = log_path(run_dir, int(os.environ.get("RANK", "0")))
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 -- lives as long as the process
    # Progress bars: off (transformers reads this at import; plain tqdm users read TQDM_DISABLE).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    terminal = logging.StreamHandler(sys.__stderr__)
    terminal.setLevel(logging.ERROR)
    to_file = logging.StreamHandler(log)
    to_file.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[to_file, terminal], force=True)
    logging.captureWarnings(True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()
    sys.stdout, sys.stderr = _Router(sys.stdout, log), _Router(sys.stderr, log)
    return path
