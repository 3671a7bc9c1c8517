#!/usr/bin/env bash
# SGLang 0.5.23 in its own environment, .venv-sglang (~11 GB, a few minutes; see requirements-sglang.txt
# for why it cannot share .venv). Idempotent: a re-run with an unchanged requirement file checks a stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
stamp=$(sha256sum requirements-sglang.txt | cut -d' ' -f1)
if [ -f .venv-sglang/.installed ] && [ "$(cat .venv-sglang/.installed)" = "$stamp" ]; then
  exit 0
fi
if [ ! -x .venv-sglang/bin/python ]; then
  py=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
  "$py" -m venv .venv-sglang
fi
.venv-sglang/bin/python -m pip install --quiet --upgrade pip
.venv-sglang/bin/python -m pip install --quiet -r requirements-sglang.txt
echo "$stamp" > .venv-sglang/.installed
echo "install_sglang.sh: .venv-sglang ready"
