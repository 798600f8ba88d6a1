"""Helpers for rxt-serve's tests: a live server on a loopback port, reference transcripts, SSE parsing."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import mlx.core as mx
import uvicorn
from rxt_app.server import ServerSettings, create_app, start_worker
from rxt_app.serving_worker import ServingWorker

import rxt_mlx
from rxt_mlx.sampling import SamplingOptions
from rxt_mlx.session import AnswerDone, Session

MODEL_ID = "tiny"
SAMPLING = SamplingOptions(max_tokens=8, temperature=0.0)


def free_socket() -> socket.socket:
    """A listening TCP socket on 127.0.0.1 and a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class LiveServer:
    """rxt-serve's app under uvicorn on a thread, on a free loopback port; a context manager.

    ``worker``: a started ServingWorker to use instead of loading ``model_folder`` (tests that
    slow it down); ``settings`` fields override the defaults (data dir, model id, sampling).
    """

    def __init__(self, model_folder: Path, data_dir: Path, worker: tuple | None = None, **settings):
        self.worker, relay = worker or start_worker(model_folder, SAMPLING)
        fields = {"data_dir": data_dir, "model_id": MODEL_ID, "defaults": SAMPLING, **settings}
        self.app = create_app(self.worker, relay, ServerSettings(**fields))
        self.socket = free_socket()
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.socket.close()

    @property
    def service(self):
        return self.app.state.service

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


def slow_worker(model_folder: Path, seconds_per_token: float) -> tuple[ServingWorker, object]:
    """A started worker that takes ``seconds_per_token`` longer per streamed piece of text."""
    from rxt_app.conversation_service import EventRelay
    from rxt_app.worker import TokenText

    relay = EventRelay()

    def post(event):
        if isinstance(event, TokenText):
            time.sleep(seconds_per_token)
        relay.post(event)

    worker = ServingWorker(model_folder, post, SAMPLING.as_kwargs())
    return worker.start(), relay


def reference_session(model_folder: Path, system: str | None = None) -> Session:
    model, tokenizer = rxt_mlx.load(model_folder)
    return Session(model, tokenizer, system_prompt=system)


def play(session: Session, queries: Sequence[str], options: SamplingOptions = SAMPLING) -> list[str]:
    """The answers of ``queries`` played one by one through ``session`` (memory updated after each)."""
    answers = []
    for query in queries:
        for event in session.interact(query, options):
            if isinstance(event, AnswerDone):
                answers.append(event.text)
    return answers


def absorb(session: Session, query: str, answer: str) -> Session:
    """``session`` with a turn written into its memory without decoding (what the server does with
    the turns a client resends)."""
    ids = session.tokenizer.interaction_ids(query, answer)
    stm = session.model.update_memory(session.stm, mx.array([ids], dtype=mx.uint32))
    return Session(session.model, session.tokenizer, stm=stm, turn=session.turn + 1)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str | None, str]]:
    """``(event name or None, data)`` of a server-sent event stream's lines."""
    name, data = None, []
    for line in lines:
        if line == "":
            if data:
                yield name, "\n".join(data)
            name, data = None, []
        elif line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
    if data:
        yield name, "\n".join(data)


def post_turn(client: httpx.Client, conversation_id: str, query: str, **fields) -> list[tuple[str, dict]]:
    """Post a turn of the native API and read its whole event stream: ``[(event, data), ...]``."""
    body = {"query": query, **fields}
    with client.stream("POST", f"/api/conversations/{conversation_id}/turns", json=body) as response:
        assert response.status_code == 200, response.read()
        return [(name, json.loads(data)) for name, data in sse_events(response.iter_lines())]


def assert_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    """The response is an OpenAI-shaped error with ``status`` (and ``param``/``code`` when given)."""
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error
