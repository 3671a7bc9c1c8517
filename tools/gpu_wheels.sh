#!/usr/bin/env bash
# Download, on a CPU machine with a package registry, the wheels that benchmarks/gpu_check.py needs on
# the lent GPU machine (no network, its own python3 with torch 2.11 and transformers 5.17, no
# Megatron). They land in an ignored .whl/ that the device tool carries
# (`carry: [".whl"]`); tools/gpu_check.sh installs them there with pip --no-index --no-deps --target.
#
#   tools/gpu_wheels.sh            # fills .whl/ (emptied first), fails if it would exceed 56 MiB
#   WHL_DIR=/tmp/w tools/gpu_wheels.sh
#
# What is carried, and why: the device's image lacks Megatron-Core and Megatron-Bridge and the bridge's
# import-time needs omegaconf (+ its antlr4 runtime) and hydra-core. Everything else the check imports is
# in the image (KINDS.md's list: accelerate, einops, rich, regex, tqdm, six, safetensors, tokenizers,
# huggingface-hub, pyyaml, psutil, pillow, packaging). transformers: see CARRY_TRANSFORMERS below.
# Versions come from the requirement files (one place for pins); none is repeated here.
set -euo pipefail
cd "$(dirname "$0")/.."

WHL_DIR=${WHL_DIR:-.whl}
LIMIT_MIB=${LIMIT_MIB:-56}  # the device tool carries 64 MiB in all, working tree included
# megatron-bridge 0.6.2 declares transformers<=5.12.1, but the device's transformers 5.17 imports and
# runs every path of the check (the CPU rehearsal, tools/gpu_rehearsal.sh, runs it with 5.17), so it is
# not carried by default. CARRY_TRANSFORMERS=1 carries the pinned 5.12.1 and the tokenizers it accepts
# (its import-time check refuses the device's tokenizers 0.23.2); huggingface-hub 1.33.0 is the same.
CARRY_TRANSFORMERS=${CARRY_TRANSFORMERS:-0}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

pin() {  # the "name==version" line of requirements*.txt for a distribution name (case and -/_ folded)
  local want
  want=$(echo "$1" | tr 'A-Z_' 'a-z-')
  local line
  line=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' requirements*.txt | awk -F'==' -v w="$want" \
    'NF==2 { n=tolower($1); gsub("_","-",n); if (n==w) print $1"=="$2 }' | sort -u)
  if [ "$(echo "$line" | grep -c .)" != 1 ]; then
    echo "gpu_wheels.sh: expected exactly one '$1==VERSION' pin in requirements*.txt, found: '${line}'" >&2
    exit 1
  fi
  echo "$line"
}

BINARY=(megatron-core megatron-bridge omegaconf hydra-core)
if [ "$CARRY_TRANSFORMERS" = 1 ]; then BINARY+=(transformers tokenizers); fi
SPECS=()
for name in "${BINARY[@]}"; do SPECS+=("$(pin "$name")"); done

rm -rf "$WHL_DIR"
mkdir -p "$WHL_DIR"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$WHL_DIR" "${SPECS[@]}"

# omegaconf's parser runtime has no wheel on PyPI (sdist only) and no pin of ours: take the exact
# requirement omegaconf's own metadata declares and build it here (pure Python, so py3-none-any).
antlr=$(unzip -p "$WHL_DIR"/omegaconf-*.whl '*/METADATA' | sed -n 's/^Requires-Dist: *\(antlr4-python3-runtime[^;]*\).*/\1/p' \
  | tr -d ' ()')
[ -n "$antlr" ] || { echo "gpu_wheels.sh: omegaconf's METADATA names no antlr4-python3-runtime" >&2; exit 1; }
"$PY" -m pip wheel --quiet --no-deps -w "$WHL_DIR" "$antlr"

# One version of each distribution: two would stop the install on the device.
dupes=$(ls "$WHL_DIR" | sed 's/-[0-9].*//' | tr 'A-Z_' 'a-z-' | sort | uniq -d)
[ -z "$dupes" ] || { echo "gpu_wheels.sh: two wheels of: $dupes" >&2; exit 1; }
size=$(du -sb "$WHL_DIR" | cut -f1)
ls -l "$WHL_DIR"
echo "gpu_wheels.sh: $(ls "$WHL_DIR" | wc -l) wheels, $((size / 1024)) KiB in $WHL_DIR (limit ${LIMIT_MIB} MiB)"
if [ "$size" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "gpu_wheels.sh: $WHL_DIR is over ${LIMIT_MIB} MiB; the device tool carries 64 MiB in all" >&2
  exit 1
fi
# What the device tool sends in all: tracked and untracked-not-ignored files (shared/ included), plus .whl/.
if [ "$WHL_DIR" = .whl ] && git rev-parse --git-dir > /dev/null 2>&1; then
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2> /dev/null \
    | awk '{ s += $1 } END { print s + 0 }')
  echo "gpu_wheels.sh: working tree $((tree / 1024)) KiB + .whl $((size / 1024)) KiB travel (limit 65536 KiB)"
  if [ $((tree + size)) -gt $((64 * 1024 * 1024)) ]; then
    echo "gpu_wheels.sh: the working tree plus .whl/ is over the device tool's 64 MiB" >&2
    exit 1
  fi
fi
