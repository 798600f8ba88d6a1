"""rxt-chat driven for real in a terminal (tmux): type, read the screen, quit, come back.

Skips when tmux is not installed. Set RXT_CHAT_SCREENSHOT=path to keep the screen of the
conversation with its status line and memory panel (benchmarks/screenshots/chat.txt is one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.factories import SEQ_LEN, tiny_config, write_model_folder
from tests.tokenizer_factories import write_bpe_tokenizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

WIDTH, HEIGHT = 120, 34


class TmuxChat:
    """One rxt-chat process in a detached tmux session on a private server socket."""

    def __init__(self, command: list[str], cwd: Path):
        self.socket = f"rxt-test-{uuid.uuid4().hex[:8]}"
        self.command = command
        self.cwd = cwd

    def tmux(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=False)

    def start(self) -> None:
        # COLUMNS/LINES: a process that asks for its size before tmux has sized the new pane gets
        # 0x0 and falls back to 80x24 (seen on a loaded CI machine); the variables take precedence.
        environment = {"TERM": "xterm-256color", "COLORTERM": "truecolor", "COLUMNS": str(WIDTH), "LINES": str(HEIGHT)}
        exports = " ".join(f"{key}={value}" for key, value in environment.items())
        shell_command = f"cd {self.cwd} && {exports} exec " + " ".join(self.command)
        result = self.tmux("new-session", "-d", "-s", "chat", "-x", str(WIDTH), "-y", str(HEIGHT), shell_command)
        assert result.returncode == 0, result.stderr

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "chat").stdout

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "chat").returncode == 0

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", "chat", *(["-l"] if literal else []), *keys)

    def wait_for(self, predicate, what: str, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            if not self.alive():
                raise AssertionError(f"rxt-chat exited while waiting for {what}")
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{self.screen()}")

    def wait_exit(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise AssertionError(f"rxt-chat did not quit; screen:\n{self.screen()}")
            time.sleep(0.25)

    def kill(self) -> None:
        self.tmux("kill-server")


def rxt_chat_command() -> list[str]:
    script = Path(sys.executable).with_name("rxt-chat")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rxt_app.cli"]


def test_chat_in_a_real_terminal(tmp_path):
    model = write_model_folder(tmp_path / "tiny-rxt", tiny_config(), seed=0, tokenizer_writer=write_bpe_tokenizer)
    data = tmp_path / "data"
    command = [*rxt_chat_command(), "--model", str(model), "--data-dir", str(data), "--max-tokens", "24"]

    first = TmuxChat(command, tmp_path)
    try:
        first.start()
        first.wait_for(lambda s: "memory: ready" in s and "Message RxT" in s, "the chat to load")
        first.keys("Hi, I'm Ann. I like green tea.", literal=True)
        first.keys("Enter")
        screen = first.wait_for(lambda s: "TTFT" in s and "turn 1 │" in s and "memory: ready" in s, "the answer")
        assert "You · turn 1" in screen and "RxT · turn 1" in screen
        assert "tok/s" in screen and "mem update" in screen
        first.keys("C-t")
        screen = first.wait_for(lambda s: "STM change at turn 1" in s and "L1" in s, "the memory panel")
        assert "L0 " in screen and "mean per turn, log scale" in screen
        if os.environ.get("RXT_CHAT_SCREENSHOT"):
            Path(os.environ["RXT_CHAT_SCREENSHOT"]).write_text(screen)
        first.keys("C-q")
        first.wait_exit()
    finally:
        first.kill()

    second = TmuxChat(command, tmp_path)
    try:
        second.start()
        screen = second.wait_for(lambda s: "memory: ready" in s and "turn 1 │" in s, "the restored conversation")
        assert "Hi, I'm Ann. I like green tea." in screen and "1 turn" in screen
        second.keys("C-q")
        second.wait_exit()
    finally:
        second.kill()


def test_the_tmux_scenario_switching_queued_multi_line_and_resizing(tmp_path):
    """benchmarks/tmux_chat.sh at 80x24 on a tiny model: every step it waits for shows up, and its
    screens hold the two conversations, the two-line message, the welcome and the 60x20 layout."""
    out = tmp_path / "chat.txt"
    script = Path(__file__).parents[1] / "benchmarks" / "tmux_chat.sh"
    environment = {**os.environ, "COLS": "80", "ROWS": "24"}
    result = subprocess.run(
        ["bash", str(script), "", str(out)], env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    screen = out.read_text()
    assert "Tell me my lucky" in screen and "My name is Ann." in screen and "6 turns" in screen
    assert "turn 6 │" in screen and "mean per turn, log scale" in screen and f"0/{SEQ_LEN - 1} tokens" in screen
    welcome = (tmp_path / "chat-welcome.txt").read_text()
    assert "Try (click one to put it in the input):" in welcome and "Hi, I'm Ann and I live in Oslo." in welcome
    small = (tmp_path / "chat-60x20.txt").read_text().splitlines()
    assert len(small) == 20 and max(len(line) for line in small) <= 60
    assert "memory: ready" in " ".join(small[-3:])
