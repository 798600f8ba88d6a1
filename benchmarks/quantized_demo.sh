#!/usr/bin/env bash
# Issue 7's comparison: the demo model at fp32 / bf16 / 8-bit / 4-bit — folder size, rxt-eval
# recall and perplexity, rxt-bench decode tokens/s. Needs the demo's rxlm export (benchmarks/train_demo.sh).
#
#   benchmarks/quantized_demo.sh RUN_DIR/6-letters/rxlm [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
SRC=$1
OUT=${2:-${TMPDIR:-/tmp}/rxt-demo-precisions}
CONVERSATIONS=${CONVERSATIONS:-100}
mkdir -p "$OUT"
"$BIN/rxt-convert" "$SRC" "$OUT/fp32" --dtype float32 --overwrite --no-progress
"$BIN/rxt-convert" "$SRC" "$OUT/bf16" --dtype bfloat16 --overwrite --no-progress
"$BIN/rxt-convert" "$SRC" "$OUT/q8" -q --q-bits 8 --q-group-size 64 --overwrite --no-progress
"$BIN/rxt-convert" "$SRC" "$OUT/q4" -q --q-bits 4 --q-group-size 64 --overwrite --no-progress
for name in fp32 bf16 q8 q4; do
    echo "== $name: $(du -sk "$OUT/$name" | cut -f1) KiB (model.safetensors $(stat -c %s "$OUT/$name/model.safetensors") B)"
    "$BIN/rxt-eval" --model "$OUT/$name" --split heldout --conversations "$CONVERSATIONS" \
        --json "$OUT/$name-eval.json" | grep -E "^ +(1-6|all) |perplexity"
    "$BIN/rxt-bench" --model "$OUT/$name" --turns 4 --query-tokens 16 --answer-tokens 16 --repeats 3 \
        --no-progress --no-plot --out "$OUT/$name-bench" | grep -E "^ +[1-4] " || true
done
