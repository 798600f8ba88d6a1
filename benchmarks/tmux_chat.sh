#!/usr/bin/env bash
# Drive rxt-chat in tmux for a few turns and save a text screenshot (capture-pane) of the
# conversation with the status line and the memory panel.
#
# usage: benchmarks/tmux_chat.sh [MODEL_DIR] [OUT_FILE]
#   MODEL_DIR  an MLX model folder, e.g. rxt_mlx/demo (default: a tiny random model from tests/factories.py)
#   OUT_FILE   default benchmarks/screenshots/chat.txt
# The terminal is COLS x ROWS (default 120 x 34), e.g. COLS=80 ROWS=24 benchmarks/tmux_chat.sh rxt_mlx/demo out.txt
set -euo pipefail
cd "$(dirname "$0")/.."
command -v tmux >/dev/null || { echo "tmux is not installed" >&2; exit 1; }
work=$(mktemp -d)
socket="rxt-shot-$$"
trap 'tmux -L "$socket" kill-server 2>/dev/null || true; rm -rf "$work"' EXIT
model=${1:-}
out=${2:-benchmarks/screenshots/chat.txt}
if [ -z "$model" ]; then
    model="$work/tiny-rxt"
    .venv/bin/python -c "
from pathlib import Path
from tests.factories import tiny_config, write_model_folder
from tests.tokenizer_factories import write_bpe_tokenizer
write_model_folder(Path('$model'), tiny_config(), seed=0, tokenizer_writer=write_bpe_tokenizer)"
fi

wait_for() {  # wait_for TEXT: poll the screen until TEXT shows, also wrapped over lines (90 s at most)
    for _ in $(seq 360); do
        tmux -L "$socket" capture-pane -p -t chat | tr -d '\n' | tr -s ' ' | grep -qF -- "$1" && return 0
        sleep 0.25
    done
    echo "timed out waiting for: $1" >&2
    tmux -L "$socket" capture-pane -p -t chat >&2
    exit 1
}

tmux -L "$socket" new-session -d -s chat -x "${COLS:-120}" -y "${ROWS:-34}" \
    "TERM=xterm-256color .venv/bin/rxt-chat --model '$model' --data-dir '$work/data' --max-tokens 24"
wait_for "memory: ready"
turn=0
for message in "My name is Ann." "My favourite color is blue." "What is my name?"; do
    turn=$((turn + 1))
    tmux -L "$socket" send-keys -t chat -l "$message"
    tmux -L "$socket" send-keys -t chat Enter
    wait_for "turn $turn │ TTFT"
    wait_for "memory: ready"
done
tmux -L "$socket" send-keys -t chat C-t
wait_for "mean per turn"
tmux -L "$socket" capture-pane -p -t chat >"$out"
tmux -L "$socket" send-keys -t chat C-q
echo "saved $out"
