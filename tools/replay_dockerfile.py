"""Run the Dockerfile's steps without Docker, against stand-ins for the base image, to prove they work.

    python tools/replay_dockerfile.py --root /tmp/replay [--image-env .venv] [--sglang-env .venv-sglang]

There is no Docker engine on the CPU machines and the NGC base image cannot be pulled there, so this
executes the Dockerfile itself, instruction by instruction, in a sandbox directory:

- FROM: a fresh virtual environment stands in for the image's Python. A `.pth` file makes the
  packages of `--image-env` visible in it, the way the NGC image ships torch preinstalled, plus a
  metadata-only `transformer_engine` entry (the real one needs CUDA) so the step that reads its
  version runs. Nothing else of the image is imitated.
- ARG/ENV/WORKDIR/COPY: as Docker does them, with absolute paths (`/opt`, `/tmp`) moved under the
  sandbox root.
- RUN: the exact command text through `bash -c` (Docker's /bin/sh -c; the commands are POSIX),
  with `python` on PATH being the stand-in and the same path rewriting. A non-zero exit stops the
  replay and names the instruction.
- `--sglang-env`: a pre-made environment linked (again by `.pth`) into the `/opt/sglang` venv the
  Dockerfile creates, so its pinned `pip install` resolves against the packages CI installed in the
  SGLang lane instead of downloading 11 GB a second time. Without it the step installs for real.

What this proves: every command, path, pin and inline check of the Dockerfile runs to completion
with the same pins the tests run against. What it does not: that NVIDIA's image contains what the
Dockerfile assumes (torch build, TE, the pip constraint file) — only a real `docker build` shows that.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def instructions(dockerfile: Path) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out, pending, start = [], "", 0
    for no, raw in enumerate(dockerfile.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction too
        start = start or no
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        out.append((start, word.upper(), rest.strip()))
        pending, start = "", 0
    return out


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out)


def make_venv(path: Path, base_python: str, linked: Path | None) -> Path:
    """A venv at `path` that also sees `linked`'s site-packages (a stand-in for preinstalled packages)."""
    subprocess.run([base_python, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    if linked is not None:
        (site_packages(python) / "_replay_base_image.pth").write_text(str(site_packages(linked / "bin" / "python")) + "\n")
    return python


def fake_transformer_engine(site: Path) -> None:
    """Metadata only: `importlib.metadata.version('transformer_engine')` answers, `import` does not."""
    info = site / "transformer_engine-0.0.0+replay.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformer_engine\nVersion: 0.0.0+replay\n")
    (info / "RECORD").write_text("")


class Replay:
    def __init__(self, root: Path, image_env: Path, sglang_env: Path | None, log=print):
        self.root, self.log = root, log
        self.base_python = subprocess.run([str(image_env / "bin" / "python"), "-c",
                                           "import sys; print(sys._base_executable)"],
                                          check=True, capture_output=True, text=True).stdout.strip()
        self.image_env, self.sglang_env = image_env, sglang_env
        self.args: dict[str, str] = {}
        # The host's pip settings (index, mirror) stay; its active venv and Python paths do not.
        self.env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        self.workdir = root

    def path(self, text: str) -> str:
        """Absolute image paths moved under the sandbox root."""
        return re.sub(r"(?<![\w.])/(opt|tmp)/", lambda m: f"{self.root}/{m.group(1)}/", text)

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), m.group(0)), text)

    def run(self, dockerfile: Path) -> None:
        for no, word, rest in instructions(dockerfile):
            self.log(f"[replay] {dockerfile.name}:{no} {word} {rest[:100]}")
            getattr(self, f"do_{word.lower()}")(rest, no)

    def do_arg(self, rest, no):
        name, _, default = rest.partition("=")
        self.args[name] = default

    def do_from(self, rest, no):
        image = self.root / "image"
        python = make_venv(image, self.base_python, self.image_env)
        fake_transformer_engine(site_packages(python))
        self.env["PATH"] = f"{image / 'bin'}:{self.env.get('PATH', '')}"
        self.log(f"[replay]   base {self.expand(rest)} -> stand-in {image} (+ packages of {self.image_env})")
        if self.sglang_env is not None:  # the Dockerfile's `python -m venv /opt/sglang` keeps what is here
            make_venv(self.root / "opt" / "sglang", self.base_python, self.sglang_env)

    def do_env(self, rest, no):
        for pair in re.findall(r"(\w+)=(\S*)", rest):
            self.env[pair[0]] = pair[1]

    def do_workdir(self, rest, no):
        self.workdir = Path(self.path(rest if rest.endswith("/") else rest + "/"))
        self.workdir.mkdir(parents=True, exist_ok=True)

    def do_copy(self, rest, no):
        *sources, dest = rest.split()
        target = self.workdir / dest if not dest.startswith("/") else Path(self.path(dest))
        for src in sources:
            s = REPO / src
            if not s.exists():
                raise FileNotFoundError(f"Dockerfile:{no}: COPY source {src} does not exist in {REPO}")
            d = target / s.name if dest.endswith("/") or dest == "." or len(sources) > 1 else target
            if s.is_dir():
                shutil.copytree(s, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                d.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s, d)

    def do_run(self, rest, no):
        cmd = self.path(rest)
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=self.workdir, env=self.env)
        if proc.returncode != 0:
            raise RuntimeError(f"Dockerfile:{no}: RUN exited with {proc.returncode}: {rest[:200]}")

    def do_cmd(self, rest, no):
        pass  # what the container runs when started; nothing to build


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="sandbox directory (must not exist)")
    ap.add_argument("--dockerfile", default=str(REPO / "Dockerfile"))
    ap.add_argument("--image-env", default=str(REPO / ".venv"), help="packages the stand-in base image has")
    ap.add_argument("--sglang-env", default="", help="pre-made SGLang environment to link into /opt/sglang")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    if root.exists():
        print(f"replay_dockerfile: --root {root} exists; give a new directory", file=sys.stderr)
        return 2
    root.mkdir(parents=True)
    (root / "tmp").mkdir()
    replay = Replay(root, Path(args.image_env).resolve(), Path(args.sglang_env).resolve() if args.sglang_env else None)
    try:
        replay.run(Path(args.dockerfile))
    except (RuntimeError, FileNotFoundError) as e:
        print(f"replay_dockerfile: {e}", file=sys.stderr)
        return 1
    print(f"replay_dockerfile: every step of {args.dockerfile} ran (sandbox {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
