#!/usr/bin/env bash
# Reproduce the bundled demo model (rxt_mlx/demo/): the chain of rxt-train runs that made it
# (each later segment starts from the previous segment's weights with a fresh optimizer),
# then rxt-convert, rxt-eval and the copy into the package.
# Usage: benchmarks/train_demo.sh [RUN_DIR]   (default runs/demo; run from the repository root)
set -euo pipefail
RUN=${1:-runs/demo}
BIN=${BIN:-.venv/bin}
start=$(date +%s)
# 1. tokenizer (values cut out of the text), joint pre-training, history SFT (conversations growing from 2 turns)
"$BIN/rxt-train" --config configs/demo.json --out "$RUN/1-joint-sft"
# 2. more history SFT on full-length conversations, until the decoder recalls from the encoded history
"$BIN/rxt-train" --config configs/demo_sft.json --out "$RUN/2-sft" \
    --tokenizer "$RUN/1-joint-sft/tokenizer.model" --init-from "$RUN/1-joint-sft/checkpoint.pt" --start-stage sft
# 3. memory-attention pre-training, then memory-aware training (conversations growing from 2 turns),
#    stopped at step 700 of a 2500-step schedule
"$BIN/rxt-train" --config configs/demo_memory.json --out "$RUN/3-memory-smat" \
    --tokenizer "$RUN/1-joint-sft/tokenizer.model" --init-from "$RUN/2-sft/checkpoint.pt" --start-stage memory
# 4. memory-aware training on full-length conversations whose job, color and food values include
#    made-up words (segments 1-3 had only the real words, and the model learned to name a known color),
#    stopped at step 1300 of 2500
"$BIN/rxt-train" --config configs/demo_smat.json --out "$RUN/4-smat" \
    --tokenizer "$RUN/1-joint-sft/tokenizer.model" --init-from "$RUN/3-memory-smat/checkpoint.pt" --start-stage smat
# 5. memory-aware training where half of the values are made-up words drawn anew every time
#    (with fixed value lists the model learned them by heart and miscopied unseen ones)
"$BIN/rxt-train" --config configs/demo_fresh.json --out "$RUN/5-fresh" \
    --tokenizer "$RUN/1-joint-sft/tokenizer.model" --init-from "$RUN/4-smat/checkpoint.pt" --start-stage smat
# 6. the same, with 70% of the fresh words spelled like real words (doubled letters, ph, ch...):
#    syllable words alone left real held-out words miscopied ("sapphire" -> "sappren")
"$BIN/rxt-train" --config configs/demo_letters.json --out "$RUN/6-letters" \
    --tokenizer "$RUN/1-joint-sft/tokenizer.model" --init-from "$RUN/5-fresh/checkpoint.pt" --start-stage smat
"$BIN/rxt-convert" "$RUN/6-letters/rxlm" "$RUN/6-mlx"
# 7. natural dialogues (issue 18): real names, cities, jobs, colors and foods from the data packages,
#    free-form filler lines with short generic replies, two facts in one message, questions about facts
#    never stated, 256 tokens per interaction. Starts from segment 6's MLX folder. The 3000-step schedule
#    was run in three parts across two sessions: a part pauses at the config's stop_at; the next raises
#    stop_at and continues with the same command plus --resume (the committed run folder is
#    benchmarks/demo_training/7-natural).
"$BIN/rxt-train" --config configs/demo_natural.json --out "$RUN/7-natural" \
    --tokenizer "$RUN/1-joint-sft/tokenizer.model" --init-from "$RUN/6-mlx" --start-stage smat
echo "training wall time: $(( $(date +%s) - start )) s"
"$BIN/rxt-convert" "$RUN/7-natural/rxlm" "$RUN/mlx"
"$BIN/rxt-eval" --model "$RUN/mlx" --split heldout --conversations 400 --json "$RUN/eval-heldout.json"
"$BIN/rxt-eval" --model "$RUN/mlx" --split train --conversations 200 --json "$RUN/eval-train.json"
"$BIN/rxt-eval" --model "$RUN/mlx" --natural --conversations 400 --json "$RUN/eval-natural.json"
cp "$RUN/mlx/config.json" "$RUN/mlx/model.safetensors" "$RUN/mlx/tokenizer.model" rxt_mlx/demo/
