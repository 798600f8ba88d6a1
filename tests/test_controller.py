"""The conversation controller without any front end: the state machine of a turn, rewind, fork,
delete, the binding to the model fingerprint, snapshot recovery, failures and quitting.

A scripted worker stands in for the inference thread and the test hands its events to the
controller one by one, so every intermediate state can be asserted exactly.
"""

from __future__ import annotations

import pytest
from rxt_app.controller import (
    NEW_TITLE,
    ActionRefused,
    ChatController,
    ConversationsChanged,
    TurnFailed,
    TurnQueued,
    WorkerFailed,
)
from rxt_app.storage import Storage
from rxt_app.worker import AnswerFinished, JobFailed, SessionReady, SnapshotProblem, TokenText, TurnStarted

from tests.app_helpers import ScriptedWorker


class Chat:
    """A controller on a scripted worker whose events wait in ``inbox`` until :meth:`step` or :meth:`settle`."""

    def __init__(self, data_dir):
        self.worker = ScriptedWorker()
        self.inbox = []
        self.worker.deliver = self.inbox.append
        self.storage = Storage(data_dir)
        self.controller = ChatController(self.worker, self.storage)
        self.events = []
        self.controller.subscribe(self.events.append)

    def step(self) -> None:
        """Hand the oldest waiting worker event to the controller."""
        self.controller.handle(self.inbox.pop(0))

    def settle(self) -> None:
        """Hand every waiting worker event (and those they cause) to the controller."""
        while self.inbox:
            self.step()

    def take_events(self) -> list:
        events = list(self.events)
        self.events.clear()
        return events

    def ready_conversation(self):
        conversation = self.controller.create()
        self.controller.open(conversation.id)
        self.settle()
        self.take_events()
        return conversation

    def answered(self, conversation_id: str, queries: list[str]) -> None:
        """Send, answer and commit each query in turn."""
        for query in queries:
            self.controller.send(conversation_id, query)
            self.finish(len(self.worker.sent) - 1, f"answer to {query}")

    def finish(self, index: int, answer: str) -> None:
        """Answer the ``index``-th sent query in one piece and commit it."""
        self.worker.answer(index, [answer])
        self.worker.save(index, answer)
        self.settle()

    def transcript(self, conversation_id: str) -> list[tuple[int, str, str]]:
        return [(m.turn, m.role, m.text) for m in self.storage.messages(conversation_id)]


@pytest.fixture
def chat(tmp_path):
    chat = Chat(tmp_path / "data")
    yield chat
    chat.storage.close()


def kinds(events) -> list[tuple[str, int | None]]:
    return [(type(event).__name__, getattr(event, "turn", None)) for event in events]


def test_a_turn_goes_queued_generating_updating_committed(chat):
    controller, worker = chat.controller, chat.worker
    conversation = controller.create()
    controller.open(conversation.id)
    state = controller.state(conversation.id)
    assert (state.loading, state.ready, controller.memory_state(conversation.id)) == (True, False, "loading")
    chat.settle()
    assert (state.loading, state.ready, controller.memory_state(conversation.id)) == (False, True, "ready")
    assert chat.take_events() == [ConversationsChanged(), SessionReady(conversation.id, 0)]

    query = "Hi, I'm Ann and I like green tea with a little honey."
    live = controller.send(conversation.id, query)
    assert (live.turn, live.phase, live.answer) == (1, "queued", "")
    assert controller.storage.conversation(conversation.id).title == query[:40]
    assert chat.take_events() == [ConversationsChanged(), TurnQueued(conversation.id, 1, query)]
    assert worker.sent == [(conversation.id, 1, query, live.snapshot)]
    assert live.snapshot.parent == chat.storage.snapshot_root / conversation.id and live.snapshot.name[:2] == "1."
    assert controller.activity() == "waiting for memory update"

    worker.answer(0, ["Hi", " Ann"])
    chat.step()
    assert (live.phase, controller.activity()) == ("generating", "generating")
    chat.step()
    chat.step()
    assert live.answer == "Hi Ann" and controller.last_answer(conversation.id) == "Hi Ann"
    chat.step()
    assert (live.phase, controller.memory_state(conversation.id), controller.activity()) == ("updating", "updating", "")
    assert chat.take_events() == [
        TurnStarted(conversation.id, 1),
        TokenText(conversation.id, 1, "Hi"),
        TokenText(conversation.id, 1, " Ann"),
        AnswerFinished(conversation.id, 1, "Hi Ann", 2, 0.01, 0.02, 50.0, False),
    ]

    # sent while the memory update runs: queued behind it; a third waits for the second's answer
    second = controller.send(conversation.id, "What is my name?")
    assert (second.turn, second.phase) == (2, "queued")
    assert controller.memory_state(conversation.id) == "updating (your message waits for it)"
    with pytest.raises(ActionRefused, match="previous answer is still coming"):
        controller.send(conversation.id, "Hello?")

    worker.save(0, "Hi Ann")
    chat.settle()
    assert list(state.live) == [2]
    assert chat.transcript(conversation.id) == [(1, "user", query), (1, "assistant", "Hi Ann")]
    assert chat.storage.snapshot_path(conversation.id, 1) == live.snapshot
    chat.finish(1, "Ann")
    assert not controller.has_live_turns() and controller.memory_state(conversation.id) == "ready"
    assert chat.storage.conversation(conversation.id).turn_count == 2
    assert chat.transcript(conversation.id)[2:] == [(2, "user", "What is my name?"), (2, "assistant", "Ann")]
    assert [stats.memory_update_seconds for stats in controller.turn_stats(conversation.id)] == [0.03, 0.03]
    assert kinds(chat.take_events()) == [
        ("TurnQueued", 2),
        ("TurnCommitted", 1),
        ("TurnStarted", 2),
        ("TokenText", 2),
        ("AnswerFinished", 2),
        ("TurnCommitted", 2),
    ]
    assert controller.last_answer(conversation.id) == "Ann"


def test_a_conversation_of_another_model_is_read_only(chat):
    controller = chat.controller
    foreign = chat.storage.create_conversation("old chat", "0" * 64)
    controller.open(foreign.id)
    assert chat.worker.opened == []
    reason = controller.state(foreign.id).read_only_reason
    assert "another model" in reason and "000000000000" in reason
    assert controller.memory_state(foreign.id) == "read-only (other model)"
    for action in (lambda: controller.send(foreign.id, "Hello"), lambda: controller.rewind(foreign.id)):
        with pytest.raises(ActionRefused) as refusal:
            action()
        assert refusal.value.message == reason
    assert chat.worker.sent == [] and chat.worker.opened == []


def test_an_unusable_snapshot_is_rewound_to_the_last_good_turn(chat, tmp_path):
    conversation = chat.ready_conversation()
    chat.answered(conversation.id, ["one", "two"])
    chat.storage.close()

    chat = Chat(tmp_path / "data")
    controller = chat.controller
    chat.worker.problem = "STM bytes do not match their checksum"
    controller.open(conversation.id)
    chat.settle()
    state = controller.state(conversation.id)
    assert (state.ready, state.problem, state.last_good_turn) == (False, chat.worker.problem, 1)
    assert chat.take_events() == [SnapshotProblem(conversation.id, 2, chat.worker.problem, 1)]
    assert controller.memory_state(conversation.id) == "snapshot unusable"
    with pytest.raises(ActionRefused, match="checksum"):
        controller.send(conversation.id, "three")

    chat.worker.problem = None
    unusable = chat.storage.snapshot_path(conversation.id, 2)
    assert unusable.is_file()
    assert controller.rewind(conversation.id).turn_count == 1
    chat.settle()
    assert (state.ready, state.problem, state.last_good_turn) == (True, None, None)
    assert chat.worker.opened == [(conversation.id, 2), (conversation.id, 1)]
    assert not unusable.exists()
    assert chat.transcript(conversation.id) == [(1, "user", "one"), (1, "assistant", "answer to one")]
    chat.storage.close()


def test_rewind_undoes_the_last_turn_once_nothing_is_in_flight(chat):
    controller, worker = chat.controller, chat.worker
    conversation = chat.ready_conversation()
    with pytest.raises(ActionRefused, match="Nothing to rewind"):
        controller.rewind(conversation.id)
    chat.answered(conversation.id, ["one", "two"])
    controller.send(conversation.id, "three")
    with pytest.raises(ActionRefused, match="Wait until the answer"):
        controller.rewind(conversation.id)
    chat.finish(2, "3")
    chat.take_events()

    assert controller.rewind(conversation.id).turn_count == 2
    assert worker.opened[-1] == (conversation.id, 2)
    assert chat.take_events() == [ConversationsChanged()]
    assert not worker.sent[2][3].exists()
    assert [turn for turn, _, _ in chat.transcript(conversation.id)] == [1, 1, 2, 2]
    chat.settle()
    assert controller.state(conversation.id).ready


def test_fork_then_delete(chat):
    controller, worker = chat.controller, chat.worker
    source = chat.ready_conversation()
    chat.answered(source.id, ["one", "two"])
    fork = controller.fork(source.id, 1)
    assert (fork.forked_from, fork.forked_at_turn, fork.turn_count) == (source.id, 1, 1)
    assert fork.title == "one (fork @1)"
    assert chat.transcript(fork.id) == [(1, "user", "one"), (1, "assistant", "answer to one")]
    controller.open(fork.id)
    assert worker.opened[-1] == (fork.id, 1)
    with pytest.raises(ActionRefused, match="cannot fork at 5") as refusal:
        controller.fork(source.id, 5)
    assert refusal.value.severity == "error"

    controller.send(fork.id, "two, again")
    with pytest.raises(ActionRefused, match="Wait until"):
        controller.delete(fork.id)
    chat.finish(2, "2")
    controller.delete(fork.id)
    assert worker.forgotten == [fork.id]
    assert [c.id for c in chat.storage.conversations()] == [source.id]
    assert not (chat.storage.snapshot_root / fork.id).exists()
    assert controller.latest_or_new().id == source.id
    controller.delete(source.id)
    fresh = controller.latest_or_new()
    assert (fresh.title, fresh.turn_count, fresh.model_fingerprint) == (NEW_TITLE, 0, worker.fingerprint)


def test_a_failed_turn_reloads_the_committed_memory_and_gives_the_query_back(chat):
    controller, worker = chat.controller, chat.worker
    conversation = chat.ready_conversation()
    chat.answered(conversation.id, ["one"])
    chat.take_events()

    query = "tea " * 80
    controller.send(conversation.id, query)
    worker.answer(1, ["par"])
    chat.inbox[-1:] = [JobFailed(conversation.id, 2, "ValueError: 322 tokens > seq_len 256", "Traceback …")]
    chat.settle()
    failure = TurnFailed(conversation.id, 2, query, "ValueError: 322 tokens > seq_len 256", "Traceback …")
    events = chat.take_events()
    assert kinds(events) == [
        ("TurnQueued", 2),
        ("TurnStarted", 2),
        ("TokenText", 2),
        ("TurnFailed", 2),
        ("SessionReady", 1),
    ]
    assert events[3] == failure
    assert not controller.has_live_turns() and worker.opened[-1] == (conversation.id, 1)
    assert controller.state(conversation.id).ready
    assert chat.storage.conversation(conversation.id).turn_count == 1

    # the snapshot never reached the disk: the commit is refused and the turn is lost the same way
    controller.send(conversation.id, "two")
    worker.answer(2, ["2"])
    worker.save(2, "2", write=False)
    chat.settle()
    *_, failure, reloaded = chat.take_events()
    assert reloaded == SessionReady(conversation.id, 1)
    assert isinstance(failure, TurnFailed) and failure.turn == 2 and failure.query == "two"
    assert failure.message.startswith("turn 2 was not saved:") and "no STM snapshot" in failure.message
    assert worker.opened[-1] == (conversation.id, 1)
    chat.answered(conversation.id, ["two"])
    assert chat.storage.conversation(conversation.id).turn_count == 2


def test_a_failed_load_is_reported_and_tried_again_on_the_next_open(chat):
    controller, worker = chat.controller, chat.worker
    conversation = controller.create()
    controller.open(conversation.id)
    controller.open(conversation.id)  # still loading: not asked twice
    assert worker.opened == [(conversation.id, 0)]
    chat.inbox[:] = [JobFailed(conversation.id, 0, "OSError: disk gone", "Traceback …")]
    chat.settle()
    assert chat.take_events()[-1] == WorkerFailed(conversation.id, "OSError: disk gone", "Traceback …")
    assert controller.memory_state(conversation.id) == "loading"
    controller.open(conversation.id)
    chat.settle()
    assert worker.opened == [(conversation.id, 0), (conversation.id, 0)]
    assert controller.state(conversation.id).ready
    controller.open(conversation.id)
    assert len(worker.opened) == 2


def test_wind_down_cancels_queued_turns_and_waits_for_the_memory_update(chat):
    controller, worker = chat.controller, chat.worker
    conversation = chat.ready_conversation()
    controller.send(conversation.id, "remember this")
    worker.answer(0, ["sure"])
    chat.settle()
    controller.send(conversation.id, "and this")
    assert controller.wind_down() is False
    assert list(controller.state(conversation.id).live) == [1] and worker.stops == 1
    assert controller.activity() == "saving memory before quitting"
    chat.take_events()
    worker.save(0, "sure")
    chat.settle()
    assert kinds(chat.take_events()) == [("TurnCommitted", 1), ("ReadyToQuit", None)]
    assert chat.storage.conversation(conversation.id).turn_count == 1
    assert controller.wind_down() is True  # nothing left in flight


def test_listeners_can_unsubscribe(chat):
    seen = []
    unsubscribe = chat.controller.subscribe(seen.append)
    chat.controller.create()
    unsubscribe()
    chat.controller.create()
    assert seen == [ConversationsChanged()]


# ----- two chats (windows, processes) on one data dir


def test_a_stale_window_loses_its_turn_but_never_the_other_windows_memory(tmp_path):
    """Issue 15: B commits turn 2 while A's turn 2 is in flight; A must not remove B's snapshot."""
    a, b = Chat(tmp_path / "data"), Chat(tmp_path / "data")
    conversation = a.ready_conversation()
    a.answered(conversation.id, ["one"])
    b.controller.open(conversation.id)
    b.settle()
    a.controller.send(conversation.id, "two, from A")
    b.answered(conversation.id, ["two, from B"])
    theirs, mine = b.storage.snapshot_path(conversation.id, 2), a.worker.sent[1][3]
    assert theirs != mine
    a.take_events()
    a.finish(1, "A's answer")
    failure, reloaded = a.take_events()[-2:]
    assert isinstance(failure, TurnFailed) and failure.turn == 2 and failure.query == "two, from A"
    assert failure.message.startswith("turn 2 was not saved") and "another window or process" in failure.message
    assert reloaded == SessionReady(conversation.id, 2)  # the stored memory, B's turn 2
    assert theirs.is_file() and not mine.exists()
    assert a.storage.snapshot_path(conversation.id, 2) == theirs

    a.answered(conversation.id, ["three, from A"])  # A goes on after B's turn
    assert [text for _, role, text in a.transcript(conversation.id) if role == "user"] == [
        "one",
        "two, from B",
        "three, from A",
    ]
    live = b.controller.send(conversation.id, "four, from B")  # B, idle meanwhile, reloads first
    assert b.worker.opened[-1] == (conversation.id, 3) and live.turn == 4
    b.settle()
    b.finish(1, "B's answer")
    assert b.storage.conversation(conversation.id).turn_count == 4
    assert all(path.is_file() for path in a.storage.committed_snapshots(conversation.id)[1])
    a.storage.close()
    b.storage.close()


def test_a_window_opening_the_data_dir_keeps_another_windows_turn_in_flight(tmp_path):
    """Issue 15: the start-up clean-up of one process must not remove what another has not committed yet."""
    chat = Chat(tmp_path / "data")
    conversation = chat.ready_conversation()
    chat.controller.send(conversation.id, "one")
    chat.worker.answer(0, ["1"])
    chat.worker.save(0, "1")  # the snapshot is written; its commit waits in the inbox
    Storage(tmp_path / "data").close()  # another window starts (and quits)
    chat.settle()
    assert chat.storage.conversation(conversation.id).turn_count == 1
    assert chat.storage.snapshot_path(conversation.id, 1).is_file()
    chat.storage.close()


def test_turns_that_will_not_be_committed_leave_no_file(chat):
    controller, worker = chat.controller, chat.worker
    conversation = chat.ready_conversation()
    controller.send(conversation.id, "fails")
    worker.answer(0, ["x"])
    worker.save(0, "x")
    chat.inbox[-1:] = [JobFailed(conversation.id, 1, "OSError: disk full", "")]
    chat.settle()
    controller.send(conversation.id, "kept")
    worker.answer(1, ["y"])
    chat.settle()
    controller.send(conversation.id, "dropped on quit")
    assert controller.wind_down() is False
    worker.save(1, "y")
    chat.settle()
    assert chat.storage.conversation(conversation.id).turn_count == 1
    folder = chat.storage.snapshot_root / conversation.id
    assert list(folder.iterdir()) == [chat.storage.snapshot_path(conversation.id, 1)]
