#!/usr/bin/env bash
# One-GPU acceptance check of the trainer (log-prob parity, PPO throughput and MFU, chunked log-prob
# memory, Qwen3.5 hybrid and VL rows, weight export): benchmarks/gpu_check.py, under a hard 8-minute
# limit so it fits a short device lease. Writes $OUT/gpu_check.md (./gpu_check.md without $OUT), row by
# row, so a run cut short still leaves what it measured.
#
#   tools/gpu_check.sh                 # on a GPU
#   tools/gpu_check.sh --cpu-smoke     # the same code on tiny models on CPU, < 1 minute
#   TIME_LIMIT_S=300 tools/gpu_check.sh --steps 2
#
# Which Python: $PY if set, else the project's .venv, else `python3` (the lent GPU machine's, or an NGC
# image's). When that Python cannot import Megatron-Core/Bridge (the lent machine: torch 2.11 and
# transformers 5.17 but no Megatron, and no network), the wheels carried in .whl/ (tools/gpu_wheels.sh,
# `carry: [".whl"]`) are installed with pip --no-index --no-deps into a temporary folder put first on
# PYTHONPATH; everything else, torch included, is the machine's own.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${OUT:-.}
mkdir -p "$OUT"
export TORCHDYNAMO_DISABLE=${TORCHDYNAMO_DISABLE:-1}  # compile time would dominate an 8-minute budget
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # no editable install of the project there

has_megatron() {
  "$PY" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("megatron.core") and u.find_spec("megatron.bridge")))' \
    2> /dev/null
}
if ! has_megatron; then
  shopt -s nullglob
  wheels=(.whl/*.whl)
  if [ ${#wheels[@]} = 0 ]; then
    echo "gpu_check.sh: $PY cannot import megatron.core/megatron.bridge and .whl/ holds no wheels:" \
      "run tools/gpu_wheels.sh on a machine with a package registry and carry .whl" >&2
    exit 2
  fi
  SITE=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
  trap 'rm -rf "$SITE"' EXIT
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}"
  export PYTHONPATH="$SITE:$PYTHONPATH"
  has_megatron || { echo "gpu_check.sh: megatron still not importable after installing .whl/" >&2; exit 2; }
  echo "gpu_check.sh: installed ${#wheels[@]} carried wheels into $SITE"
fi
"$PY" -c 'import sys, torch, transformers; print(f"gpu_check.sh: {sys.executable}: torch {torch.__version__},"
  f" transformers {transformers.__version__}, CUDA {torch.cuda.is_available()}")'
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
# SIGTERM first, SIGKILL 20 s later: rows are written as each section ends, so a hung NCCL call costs
# only the sections after it, not the lease.
timeout --kill-after=20 "${TIME_LIMIT_S:-480}" "$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.md" "$@"
