#!/usr/bin/env bash
# Rehearse, on a CPU machine, the GPU check as the lent GPU machine will run it (no network, its own
# python3 with torch 2.11 and transformers 5.17, no Megatron), before any lease is spent on it:
#
# 1. a throwaway venv holding only what that machine holds that matters here: transformers 5.17 and
#    the other Hugging Face packages at the device's versions (the device tool's KINDS.md), their
#    pure-Python needs, and torch. Torch is the project's own 2.14.1 (symlinked from .venv; the device
#    has 2.11): PyPI's torch 2.11 for Linux is the CUDA build, 530 MB plus its CUDA libraries, too
#    heavy to fetch on every CI run (REHEARSAL_TORCH below takes it). No Megatron, no .venv, no
#    project install;
# 2. the carried wheels (tools/gpu_wheels.sh);
# 3. a copy of the tree as the device tool sends it (tracked and untracked-not-ignored files, plus .whl/),
#    checked against the tool's 64 MiB limit;
# 4. `tools/gpu_check.sh --cpu-smoke` in that copy with that venv's `python3` first on PATH, which installs
#    the wheels with pip --no-index --no-deps --target and runs every section on tiny models.
#
#   tools/gpu_rehearsal.sh                      # report: $OUT/gpu_check.md ($CACHE/report/ without $OUT)
#   tools/gpu_rehearsal.sh --steps 1 --warmup 1 # extra arguments go to gpu_check.py
#
# The venv and the wheels are cached under $ZPPO_REHEARSAL_CACHE (default ~/.cache/megatron_zppo/
# gpu-rehearsal), keyed by the package lists and pins, so a second run downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# The lent machine's versions (KINDS.md's pip list) of what the check imports from its image; the
# unversioned ones are in its image at a version KINDS.md does not give.
DEVICE_PACKAGES=(transformers==5.17.0 tokenizers==0.23.2 huggingface-hub==1.33.0 safetensors==0.8.0 numpy==2.5.2
                 einops pyyaml psutil pillow packaging rich regex tqdm six httpx requests
                 filelock typing-extensions setuptools sympy networkx jinja2 fsspec)
DEVICE_NODEPS=(accelerate==1.15.0)  # declares torch, which comes from the project instead
TORCH_ENTRIES=(torch torchgen functorch torchvision torchvision.libs triton nvidia cuda)
# REHEARSAL_TORCH="torch==2.11.0 torchvision==0.26.0 triton==3.6.0" rehearses with the device's torch
# itself: PyPI's CUDA build (530 MB) and Triton (Megatron-Core imports it), the CUDA 13 libraries taken
# from the project's .venv. Too heavy for every CI run; run by hand when the device's torch is in question.
if [ -n "${REHEARSAL_TORCH:-}" ]; then
  read -r -a extra <<< "$REHEARSAL_TORCH"
  DEVICE_NODEPS+=("${extra[@]}")
  TORCH_ENTRIES=(nvidia cuda)
fi

CACHE=${ZPPO_REHEARSAL_CACHE:-$HOME/.cache/megatron_zppo/gpu-rehearsal}
OUT=${OUT:-$CACHE/report}
mkdir -p "$CACHE" "$OUT"
BASE_PY=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')  # the project's Python 3.12
SITE_SRC=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

venv_key=$(printf '%s\n' "${DEVICE_PACKAGES[@]}" "${DEVICE_NODEPS[@]}" "${TORCH_ENTRIES[@]}" "$BASE_PY" "$SITE_SRC" \
  | sha256sum | cut -c1-16)
VENV=$CACHE/venv-$venv_key
if [ ! -f "$VENV/.ready" ]; then
  rm -rf "$VENV"
  "$BASE_PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet "${DEVICE_PACKAGES[@]}"
  "$VENV/bin/python" -m pip install --quiet --no-deps "${DEVICE_NODEPS[@]}"
  farm=$VENV/torch-from-project
  mkdir -p "$farm"
  for name in "${TORCH_ENTRIES[@]}"; do
    for entry in "$SITE_SRC/$name" "$SITE_SRC/${name//-/_}"-[0-9]*.dist-info; do
      if [ -e "$entry" ]; then ln -sfn "$entry" "$farm/"; fi
    done
  done
  ln -sfn "$SITE_SRC"/cuda_*.dist-info "$farm/"
  purelib=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$farm" > "$purelib/torch_from_project.pth"
  touch "$VENV/.ready"
fi
if "$VENV/bin/python" -c 'import megatron' 2> /dev/null; then
  echo "gpu_rehearsal.sh: $VENV can import megatron; it must hold only what the device holds" >&2
  exit 1
fi

whl_key=$( (cat requirements*.txt tools/gpu_wheels.sh; echo "CARRY_TRANSFORMERS=${CARRY_TRANSFORMERS:-0}") | sha256sum \
  | cut -c1-16)
WHL=$CACHE/whl-$whl_key
if [ ! -f "$WHL/.ready" ]; then
  WHL_DIR=$WHL bash tools/gpu_wheels.sh
  touch "$WHL/.ready"
fi

TREE=$(mktemp -d /tmp/gpu_rehearsal_tree.XXXXXX)
trap 'rm -rf "$TREE"' EXIT
# Regular files only: a symbolic link (a worktree's .venv, say) travels there only as a link.
git ls-files -z --cached --others --exclude-standard | xargs -0 -r sh -c 'for f; do [ -f "$f" ] && [ ! -L "$f" ] \
  && printf "%s\0" "$f"; done; true' sh | tar --null -T - -cf - | tar -xf - -C "$TREE"
mkdir -p "$TREE/.whl"
cp "$WHL"/*.whl "$TREE/.whl/"
size=$(du -sb "$TREE" | cut -f1)
echo "gpu_rehearsal.sh: tree as the device tool would send it: $((size / 1024)) KiB (limit 65536 KiB)"
if [ "$size" -gt $((64 * 1024 * 1024)) ]; then
  echo "gpu_rehearsal.sh: the tree plus .whl/ is over the device tool's 64 MiB" >&2
  exit 1
fi
cd "$TREE"
# No PY and no .venv in the copy: gpu_check.sh picks `python3` from PATH, as it will there.
env -u PYTHONPATH -u VIRTUAL_ENV -u PY PATH="$VENV/bin:$PATH" OUT="$OUT" CUDA_VISIBLE_DEVICES="" \
  bash tools/gpu_check.sh --cpu-smoke "$@"
