#!/usr/bin/env bash
# Install what is needed (first run only), then run the whole test suite, slow tests included.
# ZPPO_SGLANG_LANE=1 also runs tests_live/ against a real SGLang server on the CPU (installs
# SGLang into .venv-sglang first: ~11 GB, a few minutes); CI sets it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pytest -q "$@" tests
if [ "${ZPPO_SGLANG_LANE:-0}" = "1" ]; then
  bash scripts/sglang_cpu_lane.sh
fi
