"""tools/replay_dockerfile.py stops at the first failing instruction and names it (the full replay
runs in the SGLang lane, tests_live/test_dockerfile_replay.py, where the SGLang venv exists)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import replay_dockerfile  # noqa: E402


def _replay(tmp_path, text: str):
    tmp_path.mkdir()
    df = tmp_path / "Dockerfile"
    df.write_text(text)
    return subprocess.run([sys.executable, "tools/replay_dockerfile.py", "--root", str(tmp_path / "root"),
                           "--dockerfile", str(df)], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_instructions_join_continuations_and_keep_their_line_numbers(tmp_path):
    df = tmp_path / "Dockerfile"
    df.write_text("# c\nARG X=1\n\nRUN a \\\n  # inside\n  && b\nCMD [\"bash\"]\n")
    assert replay_dockerfile.instructions(df) == [(2, "ARG", "X=1"), (4, "RUN", "a  && b"), (7, "CMD", '["bash"]')]


def test_a_failing_run_and_a_missing_copy_source_are_named(tmp_path):
    base = "FROM img\nWORKDIR /opt/app\n"
    proc = _replay(tmp_path / "a", base + "RUN test -d /opt/app && echo ok > /tmp/marker\nRUN false\n")
    assert proc.returncode == 1 and "Dockerfile:4: RUN exited with 1" in proc.stderr
    assert (tmp_path / "a" / "root" / "tmp" / "marker").read_text() == "ok\n"  # /opt, /tmp live in the sandbox
    proc = _replay(tmp_path / "b", base + "COPY no_such_file ./\n")
    assert proc.returncode == 1 and "Dockerfile:3: COPY source no_such_file does not exist" in proc.stderr
