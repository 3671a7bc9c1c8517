#!/usr/bin/env bash
# Install what is needed (first run only), then run the whole test suite, slow tests included.
# ZPPO_SGLANG_LANE=1 also runs tests_live/ against a real SGLang server on the CPU (installs SGLang
# into .venv-sglang first, ~11 GB, while the suite runs); CI sets it. ZPPO_SLURM_LANE=1 then runs the real
# zppo.sbatch under a single-host Slurm (scripts/slurm_lane.sh: installs Debian's Slurm, needs root; CI sets it).
# The suite runs in ZPPO_TEST_WORKERS pytest-xdist processes (default 2, one per core; 0 runs it in
# this process), each file in one worker, every torch process at one thread (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
phase() { echo "test.sh: $1 took $((SECONDS / 60))m$((SECONDS % 60))s"; SECONDS=0; }
SECONDS=0
# Fail now, not 25 minutes in, on a disk that cannot hold what follows (GB: the suite's largest tests at once
# on two workers, and each environment not yet installed).
need=4; [ -d .venv ] || need=$((need + 7))
[ "${ZPPO_SGLANG_LANE:-0}" = "1" ] && [ ! -d .venv-sglang ] && need=$((need + 12))
for dir in . "${TMPDIR:-/tmp}"; do
  free=$(df -Pk "$dir" | awk 'NR == 2 {print int($4 / 1048576)}')
  if [ "$free" -lt "$need" ]; then
    echo "test.sh: $(cd "$dir" && pwd) has $free GB free; the tests need about $need GB there" >&2
    exit 1
  fi
done
bash scripts/install.sh
phase install
lane=${ZPPO_SGLANG_LANE:-0}
if [ "$lane" = "1" ]; then  # downloading and unpacking SGLang overlaps the suite instead of following it
  mkdir -p runs
  bash scripts/install_sglang.sh > runs/install_sglang.log 2>&1 &
  installing=$!
fi
status=0
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest -q -n "${ZPPO_TEST_WORKERS:-2}" --dist loadfile --durations=20 \
  "$@" tests || status=$?
phase suite
if [ "$lane" = "1" ]; then
  if ! wait "$installing"; then
    tail -n 40 runs/install_sglang.log >&2
    echo "test.sh: installing SGLang failed (runs/install_sglang.log)" >&2
    exit 1
  fi
  phase "waiting for the SGLang install after the suite"
  [ "$status" = "0" ] || exit "$status"
  bash scripts/sglang_cpu_lane.sh || status=$?  # its own last line says how long it took
fi
if [ "${ZPPO_SLURM_LANE:-0}" = "1" ] && [ "$status" = "0" ]; then
  bash scripts/slurm_lane.sh || status=$?  # its own last line says how long it took
fi
exit "$status"
