#!/usr/bin/env bash
# Drive rxt-chat in tmux as a user would and save a text screenshot (capture-pane) of the
# conversation with the status line and the memory panel. The scenario: three turns; a message of
# two lines (ctrl+j); two messages typed at once (the second waits for the first answer); a new
# conversation (ctrl+n, its welcome) and back to the first through the palette ("Switch to:");
# the terminal shrunk to 60x20 and back; the memory panel (ctrl+t).
#
# usage: benchmarks/tmux_chat.sh [MODEL_DIR] [OUT_FILE]
#   MODEL_DIR  an MLX model folder, e.g. rxt_mlx/demo (default: a tiny random model from tests/factories.py)
#   OUT_FILE   default benchmarks/screenshots/chat.txt; beside it go the new conversation's welcome
#              (-welcome.txt) and the 60x20 screen (-60x20.txt)
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
send() {  # send TEXT: type a message and press Enter
    tmux -L "$socket" send-keys -t chat -l "$1"
    tmux -L "$socket" send-keys -t chat Enter
}
answered() {  # answered TURN: wait until TURN is answered and its memory update is saved
    wait_for "turn $1 │ TTFT"
    wait_for "memory: ready"
}

wait_for "memory: ready"
turn=0
for message in "My name is Ann." "My favourite color is blue." "What is my name?"; do
    turn=$((turn + 1))
    send "$message"
    answered $turn
done

# a message of two lines: ctrl+j starts the second
tmux -L "$socket" send-keys -t chat -l "I live in Oslo."
tmux -L "$socket" send-keys -t chat C-j
send "I have a cat named Tom."
answered 4
wait_for "I have a cat named Tom."

# two messages typed at once: the second is queued, then sent after the first answer
tmux -L "$socket" send-keys -t chat -l "My lucky number is 7."
tmux -L "$socket" send-keys -t chat Enter
send "Where do I live?"
answered 6

# a new conversation shows its welcome; one turn there; back to the first through the palette
tmux -L "$socket" send-keys -t chat C-n
wait_for "Try (click one"
tmux -L "$socket" capture-pane -p -t chat >"${out%.txt}-welcome.txt"
send "Tell me my lucky number."
answered 1
tmux -L "$socket" send-keys -t chat C-p
wait_for "Search for commands"
tmux -L "$socket" send-keys -t chat -l "Switch to: My name"
wait_for "6 turns"
tmux -L "$socket" send-keys -t chat Enter
wait_for "turn 6 │ TTFT"

# smaller and back: nothing is cut that matters, the status line wraps
tmux -L "$socket" resize-window -t chat -x 60 -y 20
wait_for "memory: ready"
sleep 1
tmux -L "$socket" capture-pane -p -t chat >"${out%.txt}-60x20.txt"
tmux -L "$socket" resize-window -t chat -x "${COLS:-120}" -y "${ROWS:-34}"
sleep 1

tmux -L "$socket" send-keys -t chat C-t
wait_for "mean per turn"
tmux -L "$socket" capture-pane -p -t chat >"$out"
tmux -L "$socket" send-keys -t chat C-q
echo "saved $out, ${out%.txt}-welcome.txt and ${out%.txt}-60x20.txt"
