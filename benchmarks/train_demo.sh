#!/usr/bin/env bash
# Reproduce the bundled demo model (rxt_mlx/demo/): the exact chain of rxt-train runs that made
# it (each later segment starts from the previous segment's weights with a fresh optimizer),
# then rxt-convert, rxt-eval and the copy into the package.
# Usage: benchmarks/train_demo.sh [RUN_DIR]   (default runs/demo; run from the repository root)
set -euo pipefail
RUN=${1:-runs/demo}
BIN=${BIN:-.venv/bin}
start=$(date +%s)
# 1. joint pre-training (100 steps) + history SFT on full conversations (stopped at step 250 of a 600-step schedule)
"$BIN/rxt-train" --config configs/demo.json --out "$RUN/1-joint-sft"
# 2. history SFT on 2-turn conversations (statement, question): dense recall signal
"$BIN/rxt-train" --config configs/demo_sft_short.json --out "$RUN/2-sft-short" \
    --tokenizer "$RUN/1-joint-sft/tokenizer.model" --init-from "$RUN/1-joint-sft/checkpoint.pt" --start-stage sft
# 3. memory-attention pre-training + memory-aware training, conversations growing from 2 to 6-10 turns
"$BIN/rxt-train" --config configs/demo_memory.json --out "$RUN/3-memory-smat" \
    --tokenizer "$RUN/1-joint-sft/tokenizer.model" --init-from "$RUN/2-sft-short/checkpoint.pt" --start-stage memory
# 4. more memory-aware training on full-length conversations
"$BIN/rxt-train" --config configs/demo_smat.json --out "$RUN/4-smat" \
    --tokenizer "$RUN/1-joint-sft/tokenizer.model" --init-from "$RUN/3-memory-smat/checkpoint.pt" --start-stage smat
# 5. SMAT, 400 more steps at a lower learning rate
"$BIN/rxt-train" --config configs/demo_smat2.json --out "$RUN/5-smat" \
    --tokenizer "$RUN/1-joint-sft/tokenizer.model" --init-from "$RUN/4-smat/checkpoint.pt" --start-stage smat
echo "training wall time: $(( $(date +%s) - start )) s"
"$BIN/rxt-convert" "$RUN/5-smat/rxlm" "$RUN/mlx"
"$BIN/rxt-eval" --model "$RUN/mlx" --split heldout --conversations 200 --json "$RUN/eval-heldout.json"
"$BIN/rxt-eval" --model "$RUN/mlx" --split train --seed 1234 --conversations 200 --json "$RUN/eval-train.json"
cp "$RUN/mlx/config.json" "$RUN/mlx/model.safetensors" "$RUN/mlx/tokenizer.model" rxt_mlx/demo/
