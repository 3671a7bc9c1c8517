#!/usr/bin/env bash
# The CPU demo: install (first run), build the toy teacher and students (cached), run ZPPO.
# Extra arguments are config overrides, e.g.  bash scripts/demo.sh run.steps=10
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export TORCHDYNAMO_DISABLE=1
.venv/bin/python tools/make_toy_models.py --out toy_models
exec .venv/bin/python pretrain_zppo.py --config examples/cpu_toy/zppo.yaml "$@"
