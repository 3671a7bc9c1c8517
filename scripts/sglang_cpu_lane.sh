#!/usr/bin/env bash
# Opt-in test lane: install SGLang 0.5.23 into its own environment (.venv-sglang, ~11 GB, a few
# minutes), serve a toy model with it on the CPU, and run tests_live/ against the real server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [ ! -x .venv-sglang/bin/python ]; then
  py=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
  "$py" -m venv .venv-sglang
  .venv-sglang/bin/python -m pip install --quiet --upgrade pip
  .venv-sglang/bin/python -m pip install --quiet -r requirements-sglang.txt
fi
export TORCHDYNAMO_DISABLE=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests_live
