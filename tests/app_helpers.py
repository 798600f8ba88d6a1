"""Helpers for the chat app's tests: a scripted stand-in for the inference worker, a controller
over a real worker pumped on the test's thread, and waiting on a Textual pilot."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path

from rxt_app.controller import ChatController, ChatEvent
from rxt_app.storage import Storage, TurnStats
from rxt_app.worker import (
    AnswerCancelled,
    AnswerFinished,
    InferenceWorker,
    SessionReady,
    SnapshotProblem,
    TokenText,
    TurnSaved,
    TurnStarted,
    WorkerEvent,
)

FINGERPRINT = "f" * 64


async def wait_until(pilot, predicate: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
    """Let the app run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await pilot.pause(0.02)


class ScriptedWorker:
    """Stands in for the InferenceWorker: records requests; the test decides when each event comes.

    Events go to ``deliver`` (the app's ``post_worker_event``, or a list the test hands to a
    controller). ``open`` answers at once: SessionReady, or SnapshotProblem while ``problem`` is set.
    A query is one token per word plus 3 for its template; the limit is ``query_limit``. ``opened``
    and ``sent_sampling`` record the system prompt and sampling each open and send had.
    """

    def __init__(self, fingerprint: str = FINGERPRINT):
        self.fingerprint = fingerprint
        self.model_dir = Path("tiny-model")
        self.description = "tiny-model: a scripted stand-in"
        self.sampling = {"max_tokens": 256, "temperature": 0.0, "top_p": 1.0}
        self.query_limit = 100
        self.system_prompt_of: Callable[[str], str | None] = lambda conversation_id: None
        self.sampling_of: Callable[[str], dict] = lambda conversation_id: {}
        self.system_prompts: list[str | None] = []
        self.sent_sampling: list[dict] = []
        self.deliver: Callable[[WorkerEvent], object] = lambda event: None
        self.opened: list[tuple[str, int]] = []
        self.sent: list[tuple[str, int, str, Path]] = []
        self.started: set[int] = set()
        self.forgotten: list[str] = []
        self.stops = 0
        self.cancelled: list[tuple[str, int]] = []
        self.problem: str | None = None

    def query_tokens(self, query: str) -> int:
        return len(query.split()) + 3

    def open(self, conversation_id, turn, snapshots):
        self.opened.append((conversation_id, turn))
        self.system_prompts.append(self.system_prompt_of(conversation_id) if turn == 0 else None)
        if self.problem and turn > 0:
            self.deliver(SnapshotProblem(conversation_id, turn, self.problem, turn - 1))
        else:
            self.deliver(SessionReady(conversation_id, turn))

    def send(self, conversation_id, turn, query, snapshot):
        self.sent.append((conversation_id, turn, query, snapshot))
        self.sent_sampling.append(self.sampling_of(conversation_id))

    def forget(self, conversation_id):
        self.forgotten.append(conversation_id)

    def stop(self):
        self.stops += 1

    def cancel(self, conversation_id, turn):
        """Cancelled before its first token: the worker skips or drops it and says so."""
        self.cancelled.append((conversation_id, turn))
        self.started.update(i for i, sent in enumerate(self.sent) if sent[:2] == (conversation_id, turn))
        self.deliver(AnswerCancelled(conversation_id, turn))

    def drop_queued(self):
        dropped: dict[str, list[int]] = {}
        for index, (conversation_id, turn, _, _) in enumerate(self.sent):
            if index not in self.started:
                dropped.setdefault(conversation_id, []).append(turn)
                self.started.add(index)  # never to start now
        return dropped

    def answer(self, index: int, fragments: list[str], stopped: bool = False) -> None:
        """Stream the answer of the ``index``-th sent query as ``fragments``, then finish it."""
        conversation_id, turn, _, _ = self.sent[index]
        self.started.add(index)
        self.deliver(TurnStarted(conversation_id, turn))
        for fragment in fragments:
            self.deliver(TokenText(conversation_id, turn, fragment))
        text = "".join(fragments)
        self.deliver(AnswerFinished(conversation_id, turn, text, len(fragments), 0.01, 0.02, 50.0, stopped))

    def save(self, index: int, answer: str, change=(0.5, 0.25), write: bool = True) -> None:
        """Finish the memory update of the ``index``-th sent query (``write``: its snapshot file exists)."""
        conversation_id, turn, query, snapshot = self.sent[index]
        if write:
            snapshot.parent.mkdir(parents=True, exist_ok=True)
            snapshot.write_bytes(b"stm")
        stats = TurnStats(3, 0.01, 0.02, 50.0, 0.03, False, tuple(change))
        self.deliver(TurnSaved(conversation_id, turn, query, answer, stats, snapshot))


class RealController:
    """A ChatController over a started InferenceWorker; worker events wait in an inbox until :meth:`pump`.

    ``on_event`` sees each worker event before the controller does. ``events`` records what the
    controller emitted. Use as a context manager: the worker and the storage are closed on exit.
    """

    def __init__(self, model_folder, data_dir, sampling: dict, on_event: Callable[[WorkerEvent], object] | None = None):
        self.inbox: queue.Queue[WorkerEvent] = queue.Queue()
        self.on_event = on_event
        self.worker = InferenceWorker(model_folder, self.inbox.put, sampling).start()
        self.storage = Storage(data_dir)
        self.controller = ChatController(self.worker, self.storage)
        self.events: list[ChatEvent] = []
        self.controller.subscribe(self.events.append)

    def __enter__(self) -> RealController:
        return self

    def __exit__(self, *exc_info) -> None:
        self.worker.shutdown()
        self.storage.close()

    def pump(self, until: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
        """Hand worker events to the controller until ``until()`` holds."""
        deadline = time.monotonic() + timeout
        while not until():
            try:
                event = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or until}") from None
            if self.on_event is not None:
                self.on_event(event)
            self.controller.handle(event)

    def open_latest(self) -> str:
        """Open the latest conversation (a new one if there is none), wait for its memory; returns its id."""
        conversation_id = self.controller.latest_or_new().id
        self.controller.open(conversation_id)
        self.ready(conversation_id)
        return conversation_id

    def ready(self, conversation_id: str) -> None:
        """Wait until the conversation's memory is loaded (or found unusable)."""
        state = self.controller.state(conversation_id)
        self.pump(lambda: not state.loading, what=f"the memory of {conversation_id}")

    def answer(self, conversation_id: str, query: str) -> str:
        """Send ``query``, wait until the turn is committed; returns the stored answer."""
        turn = self.controller.send(conversation_id, query).turn
        live = self.controller.state(conversation_id).live
        self.pump(lambda: turn not in live, what=f"turn {turn}")
        assert self.storage.conversation(conversation_id).turn_count == turn, f"turn {turn} failed: {self.events[-1]}"
        return self.storage.messages(conversation_id)[-1].text
