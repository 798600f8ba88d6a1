#!/usr/bin/env bash
# The latency benchmark of the README: BLAS check, decode profile, then rxt-bench for 32 turns
# (Q=32 query tokens, A=32 answer tokens) with the PyTorch reference, results in benchmarks/results/.
#
#   benchmarks/run_latency.sh [MODEL_DIR]
#
# MODEL_DIR defaults to the bundled demo model (rxt_mlx/demo), else a dense D=256, 6-layer model
# with random weights written by benchmarks/make_bench_model.py. Environment: PYTHON (default
# .venv/bin/python), OUT (default benchmarks/results), TURNS (default 32).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
TURNS=${TURNS:-32}
MODEL=${1:-}
if [ -z "$MODEL" ]; then
  if [ -f rxt_mlx/demo/config.json ]; then
    MODEL=rxt_mlx/demo
  else
    MODEL=${TMPDIR:-/tmp}/rxt-bench-model
    [ -f "$MODEL/config.json" ] || "$PYTHON" benchmarks/make_bench_model.py "$MODEL"
  fi
fi
mkdir -p "$OUT"
"$PYTHON" benchmarks/blas_check.py --json "$OUT/blas_check.json" | tee "$OUT/blas_check.txt"
"$PYTHON" benchmarks/profile_decode.py "$MODEL" --json "$OUT/profile.json" | tee "$OUT/profile.txt"
"$PYTHON" -m rxt_mlx.bench --model "$MODEL" --turns "$TURNS" --query-tokens 32 --answer-tokens 32 \
  --reference --out "$OUT" --no-progress | tee "$OUT/bench.txt"
