#!/usr/bin/env bash
# The whole toy comparison in one command (about 45 minutes on 2 CPU cores, toy models included):
#   bash examples/cpu_toy/compare/run.sh [--jobs N]
# Results: runs/compare/results.md, results.json, results.png (docs/RESULTS.md shows one run's).
set -euo pipefail
cd "$(dirname "$0")/../../.."
bash scripts/install.sh
export TORCHDYNAMO_DISABLE=1
.venv/bin/python tools/make_toy_models.py --out toy_models
exec .venv/bin/python tools/compare.py --plan examples/cpu_toy/compare/plan.yaml --out runs/compare "$@"
