#!/usr/bin/env bash
# The whole toy comparison in one command (about 2 hours on 2 CPU cores for 18 presets x 2 students x
# 3 seeds, toy models included; finished runs are not repeated, so it can be stopped and resumed):
#   bash examples/cpu_toy/compare/run.sh [--jobs N]
# Results: runs/compare/results.md, results.json, results.png (docs/RESULTS.md shows one run's).
set -euo pipefail
cd "$(dirname "$0")/../../.."
bash scripts/install.sh
export TORCHDYNAMO_DISABLE=1
.venv/bin/python tools/make_toy_models.py --out toy_models
exec .venv/bin/python tools/compare.py --plan examples/cpu_toy/compare/plan.yaml --out runs/compare "$@"
