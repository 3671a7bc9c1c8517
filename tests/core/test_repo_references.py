"""The repository stands on its own: no file points at notes outside it, and every test that
docs/method.md names as holding a rule exists."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METHOD = ROOT / "docs" / "method.md"
# Built from pieces so that this file does not match itself.
OUTSIDE = ("SPEC" + ".md", "SPEC" + ' "', ".." + "/shared", "shared" + "/notes", "shared" + "/zppo")
CITED = re.compile(r"(tests/[\w./-]+\.py)::(\w+)")


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout here ({e}): the tracked files cannot be listed")
    return [ROOT / name for name in out.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary file (or one deleted in the working tree)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_tracked_file_points_outside_the_repository():
    hits = []
    for path in _tracked_files():
        text = _text(path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            hits += [f"{path.relative_to(ROOT)}:{n}: {s}" for s in OUTSIDE if s in line]
    assert not hits, "files that point outside the repository (point at docs/method.md instead):\n" + "\n".join(hits)


def _defined_names(path: Path) -> set[str]:
    """Module-level functions and classes, and the methods of those classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(m.name for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return names


def test_every_test_the_method_page_cites_exists():
    cited = CITED.findall(METHOD.read_text(encoding="utf-8"))
    assert len(cited) > 20, f"docs/method.md cites only {len(cited)} tests; each rule names the test that holds it"
    missing = []
    for file, name in sorted(set(cited)):
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{file}::{name} (no such file)")
        elif name not in _defined_names(path):
            missing.append(f"{file}::{name} (no such function or method)")
    assert not missing, "docs/method.md cites tests that do not exist:\n" + "\n".join(missing)
