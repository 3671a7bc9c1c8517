"""The Dockerfile, checked without Docker (no engine on the CPU machines): a pinned base image, pinned
pip installs, COPY sources that exist, and the same requirement files (with the same --no-deps
treatment) as scripts/install.sh, so the container and the CPU venv cannot drift apart."""

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def shell_commands() -> list[list[str]]:
    """Every simple command of every RUN, as shell words."""
    cmds = []
    for word, rest in instructions():
        if word == "RUN":
            lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words_all, part = list(lexer), []
            for word in words_all + ["&&"]:  # split on the shell operators between commands
                if word not in ("&&", "||", ";"):
                    part.append(word)
                    continue
                words, part = part, []
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
                    words = words[1:]
                if words:
                    cmds.append(words)
    return cmds


def pip_installs() -> list[list[str]]:
    """The arguments after `pip install` of every pip call (python -m pip / pip / venv pips)."""
    out = []
    for words in shell_commands():
        joined = " ".join(words)
        if re.search(r"(^|\s|/)pip install\b|-m pip install\b", joined):
            out.append(words[words.index("install") + 1:])
    return out


def requirement_files(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "-r"]


def test_base_image_is_an_ngc_pytorch_tag_never_latest():
    args = dict(re.match(r"(\w+)=(\S+)", rest).groups()
                for word, rest in instructions() if word == "ARG" and "=" in rest)
    (base,) = [rest for word, rest in instructions() if word == "FROM"]
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base.split()[0])
    name, _, tag = image.partition(":")
    assert name == "nvcr.io/nvidia/pytorch"
    assert re.fullmatch(r"\d\d\.\d\d-py3", tag), f"base image tag {tag!r} is not a pinned NGC release"


def test_every_pip_install_pins_its_packages():
    installs = pip_installs()
    assert len(installs) >= 4
    for args in installs:
        i, packages = 0, []
        while i < len(args):
            if args[i] in ("-r", "-e", "-c"):
                i += 2
                continue
            if not args[i].startswith("-"):
                packages.append(args[i])
            i += 1
        for p in packages:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", p), f"pip install {p!r} is not pinned"


def test_copied_files_exist():
    for word, rest in instructions():
        if word == "COPY":
            sources = [w for w in shlex.split(rest) if not w.startswith("--")][:-1]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: no such file in the repository"


def test_installs_the_same_requirement_files_as_install_sh():
    install_sh = [shlex.split(line) for line in (REPO / "scripts/install.sh").read_text().splitlines()
                  if "pip install" in line and not line.strip().startswith("#")]
    sh = {(f, "--no-deps" in words) for words in install_sh for f in requirement_files(words)}
    # The Dockerfile installs requirements.txt minus torch/torchvision (the image's own builds stay); map
    # the derived file back to its source, after checking the derivation removes those and nothing else.
    derived = {}
    for words in shell_commands():
        if words[0] == "grep" and "-v" in words:
            pattern, source = [w for w in words[1:] if not w.startswith("-")][:2]
            lines = [ln for ln in (REPO / source).read_text().splitlines() if ln.strip()]
            dropped = [ln for ln in lines if re.search(pattern, ln)]
            assert [d.split("==")[0] for d in dropped] == ["torch", "torchvision"], dropped
            derived[words[words.index(">") + 1] if ">" in words else None] = source
    docker = {(derived.get(f, f), "--no-deps" in args) for args in pip_installs() for f in requirement_files(args)}
    assert docker == sh, f"Dockerfile installs {sorted(docker)}, scripts/install.sh {sorted(sh)}"


def test_project_installed_editable_without_deps_and_sglang_in_its_own_venv():
    installs = pip_installs()
    assert any(a[-2:] == ["-e", "."] and "--no-deps" in a for a in installs)
    sglang = [words for words in shell_commands() if any("sglang==" in w for w in words)]
    assert sglang and all(w[0].startswith("/opt/sglang/") for w in sglang), "SGLang must not enter the trainer env"
    assert any(w[:3] == ["python", "-m", "venv"] and w[3] == "/opt/sglang" for w in shell_commands())
