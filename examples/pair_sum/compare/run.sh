#!/usr/bin/env bash
# The method's effect in one command (docs/RESULTS.md, "The method's effect"): install, the pair_sum
# world's toy models (cached), the BCQ premise measured on the student, then the comparison plan
# (finished runs are kept, so it can be stopped and resumed), tables and a plot:
#   bash examples/pair_sum/compare/run.sh [--jobs N] [--out DIR]     # DIR: runs/pair_sum
#   bash examples/pair_sum/compare/run.sh --smoke [--out DIR]        # the same pipeline, 2 steps (CI)
set -euo pipefail
cd "$(dirname "$0")/../../.."
smoke="" out=runs/pair_sum jobs=2
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=--smoke; shift ;;
    --out) out=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1 (expected --smoke, --out DIR, --jobs N)" >&2; exit 2 ;;
  esac
done
bash scripts/install.sh
export TORCHDYNAMO_DISABLE=1
plan=examples/pair_sum/compare/plan.yaml models=toy_models_pair_sum
if [ -n "$smoke" ]; then  # its own tiny models, 2 steps of two methods, one seed
  models=$out/models plan=$out/smoke_plan.yaml
  mkdir -p "$out"
  cat > "$plan" <<PLAN
config: examples/pair_sum/zppo.yaml
methods: [grpo_buffer, zppo]
students: [{name: tiny, hf_path: $models/student_tiny}]
seeds: [0]
overrides: [run.steps=2, run.save_every=1000, teacher.hf_path=$models/teacher, rollout.n_new=4, rollout.group_size=4]
PLAN
fi
.venv/bin/python tools/make_toy_models.py --world pair_sum --out "$models" $smoke
.venv/bin/python tools/bcq_premise.py --config examples/pair_sum/zppo.yaml --questions "$([ -n "$smoke" ] && echo 4 || echo 64)" \
  --out "$out/premise" "student.hf_path=$models/student_tiny" "teacher.hf_path=$models/teacher"
exec .venv/bin/python tools/compare.py --plan "$plan" --out "$out/compare" --jobs "$jobs"
