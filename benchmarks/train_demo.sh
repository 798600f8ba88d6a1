#!/usr/bin/env bash
# Reproduce the bundled demo model (rxt_mlx/demo/): train on the PyTorch reference, convert to
# MLX, evaluate on the held-out split, copy the MLX folder into the package.
# Usage: benchmarks/train_demo.sh [RUN_DIR]   (default runs/demo; run from the repository root)
set -euo pipefail
RUN=${1:-runs/demo}
BIN=${BIN:-.venv/bin}
start=$(date +%s)
"$BIN/rxt-train" --config configs/demo.json --out "$RUN"
echo "training wall time: $(( $(date +%s) - start )) s"
"$BIN/rxt-convert" "$RUN/rxlm" "$RUN/mlx"
"$BIN/rxt-eval" --model "$RUN/mlx" --split heldout --conversations 200 --json "$RUN/eval.json"
cp "$RUN/mlx/config.json" "$RUN/mlx/model.safetensors" "$RUN/mlx/tokenizer.model" rxt_mlx/demo/
