"""rxt-serve under load: 8 clients x 10 turns on different conversations at once, then the same load
with the server killed (-9) in the middle and started again.

Nothing may be lost or half-stored: every turn a client saw stored is there, every snapshot
loads, SQLite's integrity check passes, and each conversation's transcript is what a plain
Session gives for the same turns played one by one (greedy).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from rxt_app.storage import Storage

from rxt_mlx.stm import load_stm
from tests.factories import tiny_config, write_model_folder
from tests.serve_helpers import MODEL_ID, SAMPLING, LiveServer, free_socket, play, post_turn, reference_session
from tests.tokenizer_factories import write_bpe_tokenizer

CLIENTS, TURNS = 8, 10
QUERIES = [
    "Hi, I'm Ann.",
    "What is my name?",
    "I like tea.",
    "Where is the café?",
    "My cat is Tom.",
    "What do I like?",
    "I live in Paris.",
    "Numbers: 1, 2, 3.",
    "Ça va très bien.",
    "What did I say?",
]
DEADLINE_SECONDS = 240


def client_queries(client: int) -> list[str]:
    """Client ``client``'s ten queries (each client's conversation differs)."""
    return QUERIES[client:] + QUERIES[:client]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return write_model_folder(root / "a", tiny_config(), seed=0, tokenizer_writer=write_bpe_tokenizer)


class Client(threading.Thread):
    """Plays its ten turns through the native API (SSE), recording the turns it saw stored."""

    def __init__(self, url: str, index: int, stop: threading.Event | None = None):
        super().__init__(daemon=True)
        self.url, self.index, self.stop = url, index, stop or threading.Event()
        self.conversation_id: str | None = None
        self.committed: list[tuple[str, str]] = []
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=60) as http:
                self.conversation_id = http.post("/api/conversations", json={}).json()["id"]
                for query in client_queries(self.index):
                    if self.stop.is_set():
                        return
                    self.sent += 1
                    events = dict(post_turn(http, self.conversation_id, query))
                    assert "memory" in events, events
                    self.committed.append((query, events["answer"]["text"]))
        except BaseException as error:  # noqa: BLE001 - reported by the test (or expected after the kill)
            self.error = error


class OpenAIClient(Client):
    """Plays its ten turns as chat completions, resending the whole history each time."""

    def run(self) -> None:
        try:
            client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=60)
            messages = []
            for query in client_queries(self.index):
                messages.append({"role": "user", "content": query})
                self.sent += 1
                chunks = list(client.chat.completions.create(model=MODEL_ID, messages=messages, stream=True))
                answer = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
                self.conversation_id = chunks[0].model_extra["rxt"]["conversation_id"]
                messages.append({"role": "assistant", "content": answer})
                self.committed.append((query, answer))
        except BaseException as error:  # noqa: BLE001
            self.error = error


def run_all(clients: list[Client]) -> None:
    for client in clients:
        client.start()
    deadline = time.monotonic() + DEADLINE_SECONDS
    for client in clients:
        client.join(max(0.0, deadline - time.monotonic()))
        assert not client.is_alive(), f"client {client.index} did not finish in {DEADLINE_SECONDS} s"


def stored_conversations(data_dir: Path, fingerprint: str) -> dict[str, list[tuple[str, str]]]:
    """Every conversation's turns, after checking the database and that every snapshot loads."""
    database = sqlite3.connect(data_dir / "chat.sqlite3")
    assert database.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    database.close()
    storage = Storage(data_dir)
    try:
        conversations = {}
        for conversation in storage.conversations():
            messages = storage.messages(conversation.id)
            turns = sorted({m.turn for m in messages})
            assert turns == list(range(1, conversation.turn_count + 1)), (conversation, turns)
            queries = {m.turn: m.text for m in messages if m.role == "user"}
            answers = {m.turn: m.text for m in messages if m.role == "assistant"}
            assert set(queries) == set(answers) == set(turns), "a turn is half stored"
            _, snapshots = storage.committed_snapshots(conversation.id)
            assert len(snapshots) == conversation.turn_count
            for turn, snapshot in enumerate(snapshots, 1):
                _, metadata = load_stm(snapshot, model_fingerprint=fingerprint)
                assert int(metadata["turn"]) == turn
            kept = {path.name for path in (storage.snapshot_root / conversation.id).glob("*")}
            assert kept <= {path.name for path in snapshots}, "a file of an unstored turn was left"
            conversations[conversation.id] = [(queries[turn], answers[turn]) for turn in turns]
        return conversations
    finally:
        storage.close()


def test_eight_clients_ten_turns_each_lose_nothing(model_folder, tmp_path):
    data_dir = tmp_path / "data"
    with LiveServer(model_folder, data_dir) as server:
        clients = [Client(server.url, index) for index in range(CLIENTS // 2)]
        clients += [OpenAIClient(server.url, index) for index in range(CLIENTS // 2, CLIENTS)]
        started = time.monotonic()
        run_all(clients)
        seconds = time.monotonic() - started
        fingerprint = server.worker.fingerprint
        with httpx.Client(base_url=server.url, timeout=60) as http:  # answers come before their memory
            for client in clients:
                while http.get(f"/api/conversations/{client.conversation_id}").json()["turn_count"] < TURNS:
                    time.sleep(0.02)
    for client in clients:
        assert client.error is None, f"client {client.index}: {client.error!r}"
    conversations = stored_conversations(data_dir, fingerprint)
    assert len(conversations) == CLIENTS, f"{len(conversations)} conversations for {CLIENTS} clients"
    for client in clients:
        queries = client_queries(client.index)
        expected = list(zip(queries, play(reference_session(model_folder), queries, SAMPLING), strict=True))
        assert client.committed == expected, f"client {client.index} got other answers than a Session"
        assert conversations[client.conversation_id] == expected
    print(f"{CLIENTS} clients x {TURNS} turns in {seconds:.1f} s")


def start_server(model_folder: Path, data_dir: Path) -> tuple[subprocess.Popen, str]:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    command = [sys.executable, "-m", "rxt_app.serve", "--model", str(model_folder), "--data-dir", str(data_dir)]
    command += ["--port", str(port), "--max-tokens", str(SAMPLING.max_tokens), "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"rxt-serve did not start: {process.communicate()[1].decode()[-2000:]}")
        time.sleep(0.1)


@pytest.mark.slow
def test_kill_9_in_the_middle_of_the_load_keeps_every_stored_turn(model_folder, tmp_path):
    data_dir = tmp_path / "data"
    process, url = start_server(model_folder, data_dir)
    stop = threading.Event()
    clients = [Client(url, index, stop) for index in range(CLIENTS)]
    try:
        for client in clients:
            client.start()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while sum(len(client.committed) for client in clients) < CLIENTS * TURNS // 3:
            assert time.monotonic() < deadline and process.poll() is None, "the load did not get going"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        stop.set()
        run_all([])
        for client in clients:
            client.join(60)
    finally:
        if process.poll() is None:
            process.kill()
    in_flight = sum(client.sent - len(client.committed) for client in clients)
    assert in_flight > 0, "the kill came after the load"
    seen = sum(len(client.committed) for client in clients)

    process, url = start_server(model_folder, data_dir)  # its start removes what the kill left
    try:
        model_fingerprint = httpx.get(f"{url}/api/conversations").json()["data"][0]["model_fingerprint"]
        conversations = stored_conversations(data_dir, model_fingerprint)
        reference = {}
        for client in clients:
            queries = client_queries(client.index)
            answers = play(reference_session(model_folder), queries, SAMPLING)
            reference[client.index] = list(zip(queries, answers, strict=True))
            stored = conversations[client.conversation_id]
            assert stored[: len(client.committed)] == client.committed, "a turn the client saw stored is gone"
            assert len(stored) <= client.sent, "a turn never sent is stored"
            assert stored == reference[client.index][: len(stored)]
        stored_turns = sum(len(turns) for turns in conversations.values())
        print(f"killed with {seen} turns seen stored and {in_flight} in flight; {stored_turns} stored after restart")
        with httpx.Client(base_url=url, timeout=60) as http:  # every memory continues where it was stored
            for client in clients:
                turn = len(conversations[client.conversation_id])
                if turn < TURNS:
                    events = dict(post_turn(http, client.conversation_id, client_queries(client.index)[turn]))
                    assert events["answer"]["text"] == reference[client.index][turn][1]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
