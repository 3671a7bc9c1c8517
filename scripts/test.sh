#!/usr/bin/env bash
# Install what is needed (first run only), then run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -q "$@" tests
