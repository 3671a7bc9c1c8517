#!/usr/bin/env bash
# One-GPU acceptance check of the trainer (log-prob parity, bf16/FP8 throughput and MFU, weight
# export): benchmarks/gpu_check.py, under a hard 8-minute limit so it fits a short device lease.
#
#   tools/gpu_check.sh                 # writes $OUT/gpu_check.md (or ./gpu_check.md without $OUT)
#   tools/gpu_check.sh --cpu-smoke     # the same code on a tiny model on CPU, < 1 minute
#   TIME_LIMIT_S=300 tools/gpu_check.sh --steps 2
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
OUT=${OUT:-.}
mkdir -p "$OUT"
export TORCHDYNAMO_DISABLE=${TORCHDYNAMO_DISABLE:-1}  # compile time would dominate an 8-minute budget
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
# SIGTERM first, SIGKILL 20 s later: a report is only written at the end, so a hung NCCL call must not
# hold the lease past its limit.
exec timeout --kill-after=20 "${TIME_LIMIT_S:-480}" "$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.md" "$@"
