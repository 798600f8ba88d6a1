#!/usr/bin/env bash
# The latency benchmark of the README: BLAS check, decode profile, then rxt-bench for 32 turns
# (Q=32 query tokens, A=32 answer tokens) with the PyTorch reference, then the targets
# (benchmarks/check_targets.py); results in benchmarks/results/
#
#   benchmarks/run_latency.sh [MODEL_DIR]
#
# MODEL_DIR defaults to a dense D=256, 6-layer RxT with random weights written by
# benchmarks/make_bench_model.py (timing does not depend on the weights). Environment: PYTHON
# (default .venv/bin/python), OUT (default benchmarks/results), TURNS (32), QUERY (32), ANSWER (32),
# REPEATS (timings per turn, best kept; 3). The bundled demo model has seq_len 48: use QUERY=16 ANSWER=16.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
TURNS=${TURNS:-32}
QUERY=${QUERY:-32}
ANSWER=${ANSWER:-32}
REPEATS=${REPEATS:-3}
MODEL=${1:-${TMPDIR:-/tmp}/rxt-bench-model}
[ -f "$MODEL/config.json" ] || "$PYTHON" benchmarks/make_bench_model.py "$MODEL"
mkdir -p "$OUT"
"$PYTHON" benchmarks/blas_check.py --json "$OUT/blas_check.json" | tee "$OUT/blas_check.txt"
"$PYTHON" benchmarks/profile_decode.py "$MODEL" --json "$OUT/profile.json" | tee "$OUT/profile.txt"
"$PYTHON" -m rxt_mlx.bench.cli bench --model "$MODEL" --turns "$TURNS" --query-tokens "$QUERY" --answer-tokens "$ANSWER" \
  --repeats "$REPEATS" --reference --out "$OUT" --no-progress | tee "$OUT/bench.txt"
"$PYTHON" benchmarks/check_targets.py "$OUT/latency.json" | tee "$OUT/targets.txt"
