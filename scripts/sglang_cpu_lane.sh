#!/usr/bin/env bash
# Opt-in test lane: install SGLang into .venv-sglang (scripts/install_sglang.sh; nothing to do when
# scripts/test.sh already did it), serve toy models and a real one with it on the CPU, and run
# tests_live/ against the real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_sglang.sh
export TORCHDYNAMO_DISABLE=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests_live
