"""The conversation controller: what happens to conversations, independent of any front end.

One :class:`ChatController` sits between a front end (the Textual chat, an HTTP server) and the
:class:`~rxt_app.worker.InferenceWorker` plus the :class:`~rxt_app.storage.Storage`. It holds the
state machine of a turn::

    queued ──TurnStarted──▶ generating ──AnswerFinished──▶ updating ──TurnSaved──▶ committed
       └───────────── JobFailed (any phase) ─────────────▶ failed: memory reloaded from the last commit

and the conversation actions (new, rename, delete, rewind, fork), the binding of a conversation
to the model fingerprint that made its memory, and the recovery from an unusable snapshot.

Several processes (chat windows, a server) may each run a controller on one data dir. Each turn
writes its memory to a snapshot file of its own (``Storage.new_snapshot_path``) and is committed only
if the conversation is still at the revision its memory was built on; a turn that lost that race
fails (``TurnFailed``), its own file is removed, and the memory is reloaded from the stored turns.
A conversation changed elsewhere while idle here is reloaded before the next query is answered.

Threading: the controller is used from one thread (the front end's event loop). The worker posts
its events on its own thread; the front end hands them over to that thread and calls
:meth:`ChatController.handle`. The controller reports what changed by calling its listeners with
:data:`ChatEvent` values, synchronously, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rxt_app.conversation_settings import ConversationSettings, SettingsStore
from rxt_app.storage import (
    Conversation,
    RewoundTurn,
    SearchHit,
    Storage,
    StorageError,
    TurnConflictError,
    TurnStats,
)
from rxt_app.worker import (
    AnswerCancelled,
    AnswerFinished,
    InferenceWorker,
    JobFailed,
    SessionReady,
    SnapshotProblem,
    TokenText,
    TurnSaved,
    TurnStarted,
    WorkerEvent,
)

NEW_TITLE = "New conversation"
"""Title of a new conversation until its first query names it."""
TITLE_LENGTH = 40
"""A conversation named by its first query keeps this many characters of it."""

QUEUED, GENERATING, UPDATING = "queued", "generating", "updating"


class ActionRefused(Exception):
    """An action cannot be done now; the message says why, in words for the user.

    ``severity`` is "warning" when the user can fix it (wait, rewind) and "error" otherwise.
    """

    def __init__(self, message: str, severity: str = "warning"):
        super().__init__(message)
        self.message = message
        self.severity = severity


@dataclass
class LiveTurn:
    """A turn sent but not committed yet; ``phase`` is queued, generating or updating.

    ``snapshot``: the file its memory is saved to, this controller's until committed.
    ``cancelling``: cancelled before its first token; the worker's AnswerCancelled has not come yet.
    """

    conversation_id: str
    turn: int
    query: str
    answer: str = ""
    phase: str = QUEUED
    stopped: bool = False
    snapshot: Path | None = None
    cancelling: bool = False


@dataclass
class ConversationState:
    """What the controller knows about a conversation beyond its stored row.

    ``ready``: the worker holds its memory at the committed turn. ``loading``: a load was asked
    for and has not answered yet. ``problem``: why its snapshot cannot be used (then
    ``last_good_turn`` is the latest usable one). ``read_only_reason``: why this model cannot
    continue it. ``live``: its turns in flight, by turn number. ``revision``: the stored revision
    the worker's memory continues (the one loaded, then each turn committed here).
    """

    ready: bool = False
    loading: bool = False
    problem: str | None = None
    last_good_turn: int | None = None
    read_only_reason: str | None = None
    live: dict[int, LiveTurn] = field(default_factory=dict)
    revision: int | None = None


@dataclass(frozen=True)
class TurnQueued:
    """``query`` was sent as ``turn``; it starts once the worker is free."""

    conversation_id: str
    turn: int
    query: str


@dataclass(frozen=True)
class TurnCommitted:
    """``turn`` is stored (messages and memory snapshot); ``conversation`` is the updated row."""

    conversation: Conversation
    turn: int


@dataclass(frozen=True)
class TurnFailed:
    """``turn`` was lost (the worker raised, or its commit failed); the memory is back at the last commit.

    ``message`` is for the user, ``details`` a traceback ("" if none); ``query`` can be sent again.
    """

    conversation_id: str
    turn: int
    query: str
    message: str
    details: str


@dataclass(frozen=True)
class TurnCancelled:
    """``turn`` was cancelled before its first token; nothing of it is kept, ``query`` can be sent again."""

    conversation_id: str
    turn: int
    query: str


@dataclass(frozen=True)
class WorkerFailed:
    """A worker job that was no turn in flight raised (e.g. loading a conversation's memory)."""

    conversation_id: str | None
    message: str
    details: str


@dataclass(frozen=True)
class ConversationsChanged:
    """The list of conversations changed: one was created, renamed, rewound, forked or deleted."""


@dataclass(frozen=True)
class ReadyToQuit:
    """After :meth:`ChatController.wind_down`: the last turn in flight is saved, nothing is left to wait for."""


ChatEvent = (
    SessionReady
    | SnapshotProblem
    | TurnStarted
    | TokenText
    | AnswerFinished
    | TurnQueued
    | TurnCommitted
    | TurnFailed
    | TurnCancelled
    | WorkerFailed
    | ConversationsChanged
    | ReadyToQuit
)
"""What listeners receive. The worker's ``SessionReady``, ``SnapshotProblem``, ``TurnStarted``,
``TokenText`` and ``AnswerFinished`` are passed on as they are, after the state took them in."""


class ChatController:
    """Conversations over one inference worker and one storage, for any front end.

    Args:
        worker: a started :class:`~rxt_app.worker.InferenceWorker` (or anything with its methods).
        storage: the opened data dir.
        settings: the conversations' own settings (system prompt, sampling), handed to the worker;
            None: every conversation uses the worker's.
    """

    def __init__(self, worker: InferenceWorker, storage: Storage, settings: SettingsStore | None = None):
        self.worker = worker
        self.storage = storage
        self.settings = settings
        if settings is not None:
            worker.system_prompt_of = settings.system_prompt_of
            worker.sampling_of = settings.sampling_of
        self.quitting = False
        self._states: dict[str, ConversationState] = {}
        self._listeners: list[Callable[[ChatEvent], object]] = []
        self._redo: dict[str, tuple[int, list[RewoundTurn]]] = {}
        """Per conversation: the revision its rewind left, and the rewound turns (oldest first)."""

    # ----- observing

    def subscribe(self, listener: Callable[[ChatEvent], object]) -> Callable[[], None]:
        """Call ``listener`` with every :data:`ChatEvent` from now on; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, event: ChatEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

    @property
    def fingerprint(self) -> str:
        """The loaded model's fingerprint; conversations made with another one are read-only."""
        return self.worker.fingerprint

    def state(self, conversation_id: str) -> ConversationState:
        """The state of a conversation (a fresh one for a conversation not seen yet)."""
        return self._states.setdefault(conversation_id, ConversationState())

    def live_turns(self, conversation_id: str) -> list[LiveTurn]:
        """The turns of a conversation in flight, oldest first."""
        return sorted(self.state(conversation_id).live.values(), key=lambda live: live.turn)

    def has_live_turns(self) -> bool:
        """Whether any turn of any conversation is queued, generating or updating memory."""
        return any(state.live for state in self._states.values())

    def read_only_reason(self, conversation: Conversation) -> str | None:
        """Why a conversation cannot be continued with this model, or None if it can."""
        if conversation.model_fingerprint == self.fingerprint:
            return None
        return (
            f"Read-only: this conversation was made with another model (fingerprint "
            f"{conversation.model_fingerprint[:12]}…, the loaded model is {self.fingerprint[:12]}…). "
            "Its memory is not loaded into this model."
        )

    def memory_state(self, conversation_id: str) -> str:
        """A conversation's memory in words: loading, ready, updating, or why it is unusable."""
        state = self.state(conversation_id)
        if state.read_only_reason:
            return "read-only (other model)"
        if state.problem:
            return "snapshot unusable"
        phases = {live.phase for live in state.live.values()}
        if UPDATING in phases and QUEUED in phases:
            return "updating (your message waits for it)"
        if UPDATING in phases:
            return "updating"
        if not state.ready:
            return "loading"
        return "ready"

    def activity(self) -> str:
        """What the worker is busy with across conversations: generating, waiting, saving, or ""."""
        phases = {live.phase for state in self._states.values() for live in state.live.values()}
        if GENERATING in phases:
            return "generating"
        if QUEUED in phases:
            return "waiting for memory update"
        if self.quitting:
            return "saving memory before quitting"
        return ""

    def turn_stats(self, conversation_id: str) -> list[TurnStats]:
        """The figures of every committed turn of a conversation, in order."""
        return [m.stats for m in self.storage.messages(conversation_id) if m.stats is not None]

    def last_answer(self, conversation_id: str) -> str | None:
        """The latest answer of a conversation, a streaming one included; None before the first."""
        live = self.live_turns(conversation_id)
        if live and live[-1].answer:
            return live[-1].answer
        answers = [m.text for m in self.storage.messages(conversation_id) if m.role == "assistant"]
        return answers[-1] if answers else None

    # ----- conversations

    def open(self, conversation_id: str) -> Conversation:
        """Make a conversation usable: load its memory in the worker unless read-only, loaded or loading.

        Returns the stored conversation. The worker answers with ``SessionReady`` or ``SnapshotProblem``.
        """
        conversation = self.storage.conversation(conversation_id)
        state = self.state(conversation_id)
        state.read_only_reason = self.read_only_reason(conversation)
        idle = not (state.ready or state.loading or state.live or state.problem)
        if state.read_only_reason is None and idle:
            conversation = self._load(conversation)
        return conversation

    def _load(self, conversation: Conversation) -> Conversation:
        """Ask the worker to load the stored memory of a conversation; returns the row it was read with."""
        conversation, snapshots = self.storage.committed_snapshots(conversation.id)
        state = self.state(conversation.id)
        state.ready = False
        state.loading = True
        state.problem = None
        state.revision = conversation.revision
        self.worker.open(conversation.id, conversation.turn_count, snapshots)
        return conversation

    def latest_or_new(self) -> Conversation:
        """The most recently updated conversation, or a new one when there is none."""
        conversations = self.storage.conversations()
        return conversations[0] if conversations else self.create()

    def empty_or_new(self) -> Conversation:
        """An empty conversation of this model still called :data:`NEW_TITLE`, or a new one if there is
        none: asking for new conversations again and again does not pile up empty ones."""
        for conversation in self.storage.conversations():
            unused = conversation.turn_count == 0 and conversation.title == NEW_TITLE
            if unused and not self.state(conversation.id).live and self.read_only_reason(conversation) is None:
                return conversation
        return self.create()

    def create(self, title: str = NEW_TITLE) -> Conversation:
        """A new empty conversation bound to the loaded model."""
        conversation = self.storage.create_conversation(title, self.fingerprint)
        self._emit(ConversationsChanged())
        return conversation

    def rename(self, conversation_id: str, title: str) -> Conversation:
        """Give a conversation a new title."""
        with _refused_on_storage_error():
            conversation = self.storage.rename(conversation_id, title)
        self._emit(ConversationsChanged())
        return conversation

    def delete_for_now(self, conversation_id: str) -> None:
        """Delete a conversation so that :meth:`undo_delete` can bring it back until :meth:`purge`."""
        self.refuse_if_busy(conversation_id)
        with _refused_on_storage_error():
            self.storage.mark_deleted(conversation_id)
        self.worker.forget(conversation_id)
        self._states.pop(conversation_id, None)
        self._drop_redo(conversation_id)
        self._emit(ConversationsChanged())

    def undo_delete(self, conversation_id: str) -> Conversation:
        """Bring back a conversation deleted by :meth:`delete_for_now` and not purged yet."""
        with _refused_on_storage_error():
            conversation = self.storage.restore(conversation_id)
        self._emit(ConversationsChanged())
        return conversation

    def purge(self, conversation_id: str) -> None:
        """Make a :meth:`delete_for_now` final (no undo after it)."""
        with _refused_on_storage_error():
            purged = self.storage.purge_deleted(conversation_id=conversation_id)
        if purged and self.settings is not None:
            self.settings.forget(conversation_id)

    def delete(self, conversation_id: str) -> None:
        """Delete a conversation, its messages and its memory; refused while it has turns in flight."""
        self.refuse_if_busy(conversation_id)
        with _refused_on_storage_error():
            self.storage.delete(conversation_id)
        self.worker.forget(conversation_id)
        self._states.pop(conversation_id, None)
        self._emit(ConversationsChanged())

    def rewind(self, conversation_id: str, keep_for_redo: bool = False) -> Conversation:
        """Undo the last turn; with an unusable snapshot, go back to the last good one instead.

        Returns the rewound conversation; raises ActionRefused when there is nothing to rewind.
        ``keep_for_redo``: as :meth:`rewind_to`.
        """
        with _refused_on_storage_error():
            conversation = self.storage.conversation(conversation_id)
        self.refuse_if_busy(conversation_id)
        self._refuse_if_read_only(conversation)
        state = self.state(conversation_id)
        if state.problem is not None and state.last_good_turn is not None:
            return self.rewind_to(conversation_id, state.last_good_turn)
        if conversation.turn_count == 0:
            raise ActionRefused("Nothing to rewind: the conversation has no turns.")
        return self.rewind_to(conversation_id, conversation.turn_count - 1, keep_for_redo)

    def rewind_to(self, conversation_id: str, turn: int, keep_for_redo: bool = False) -> Conversation:
        """Drop a conversation's turns after ``turn`` and reload its memory at ``turn``.

        ``keep_for_redo``: keep the dropped turns (and their memory) for :meth:`redo`, until
        something new is sent or the conversation changes elsewhere.
        """
        self.refuse_if_busy(conversation_id)
        with _refused_on_storage_error():
            self._refuse_if_read_only(self.storage.conversation(conversation_id))
            if keep_for_redo and self.state(conversation_id).problem is None:
                conversation, kept = self.storage.rewind_keeping(conversation_id, turn)
                _, earlier = self._redo.pop(conversation_id, (None, []))
                self._redo[conversation_id] = (conversation.revision, kept + earlier)
            else:
                conversation = self.storage.rewind_to(conversation_id, turn)
                self._drop_redo(conversation_id)
            self.state(conversation_id).last_good_turn = None
            conversation = self._load(conversation)
        self._emit(ConversationsChanged())
        return conversation

    def redo_turns(self, conversation_id: str) -> int:
        """How many rewound turns :meth:`redo` would bring back (0: none)."""
        return len(self._redo.get(conversation_id, (0, []))[1])

    def redo(self, conversation_id: str) -> Conversation:
        """Bring back the turns the last rewinds dropped (transcript and memory), if nothing was sent since."""
        self.refuse_if_busy(conversation_id)
        revision, kept = self._redo.pop(conversation_id, (None, []))
        if not kept:
            raise ActionRefused("Nothing to redo: redo brings back rewound turns until a new message is sent.")
        try:
            for rewound in kept:
                self.storage.commit_turn(
                    conversation_id,
                    rewound.turn,
                    rewound.query,
                    rewound.answer,
                    rewound.stats,
                    snapshot=rewound.snapshot,
                    revision=revision,
                )
                revision += 1
        except StorageError as error:
            self._redo[conversation_id] = (revision, kept)
            self._drop_redo(conversation_id)
            self._resync(conversation_id)
            if isinstance(error, TurnConflictError):
                message = "Cannot redo: the conversation changed since the rewind (maybe in another window)."
                raise ActionRefused(message) from error
            raise ActionRefused(f"Cannot redo: {error}", "error") from error
        with _refused_on_storage_error():
            conversation = self._load(self.storage.conversation(conversation_id))
        self._emit(ConversationsChanged())
        return conversation

    def _drop_redo(self, conversation_id: str) -> None:
        """Forget the turns kept for redo, and their files (those committed again are kept)."""
        _, kept = self._redo.pop(conversation_id, (None, []))
        for rewound in kept:
            self._discard(rewound.snapshot)

    def regenerate(self, conversation_id: str) -> LiveTurn:
        """Answer the last message again: rewind its turn, then send it anew."""
        with _refused_on_storage_error():
            conversation = self.storage.conversation(conversation_id)
            messages = self.storage.messages(conversation_id)
        self.refuse_if_busy(conversation_id)
        if conversation.turn_count == 0:
            raise ActionRefused("Nothing to regenerate: the conversation has no answer yet.")
        query = next(message.text for message in reversed(messages) if message.role == "user")
        self.rewind_to(conversation_id, conversation.turn_count - 1)
        return self.send(conversation_id, query)

    def edit(self, conversation_id: str, turn: int) -> str:
        """Rewind to just before ``turn`` (kept for :meth:`redo`) and return its message, to edit and send."""
        with _refused_on_storage_error():
            messages = self.storage.messages(conversation_id)
        query = next((m.text for m in messages if m.turn == turn and m.role == "user"), None)
        if query is None:
            raise ActionRefused(f"Turn {turn} has no stored message to edit.")
        self.rewind_to(conversation_id, turn - 1, keep_for_redo=True)
        return query

    # ----- settings and search

    def settings_of(self, conversation_id: str) -> ConversationSettings:
        """A conversation's own settings (the defaults when the controller keeps none)."""
        if self.settings is None:
            return ConversationSettings()
        with _refused_on_storage_error():
            return self.settings.get(conversation_id)

    def change_settings(self, conversation_id: str, settings: ConversationSettings) -> Conversation:
        """Save a conversation's settings; returns the conversation that has them.

        The system prompt is written into a new memory: a changed one applies to a conversation
        without turns at once (its memory is made again), otherwise to a new conversation, returned.
        """
        if self.settings is None:
            raise ActionRefused("This front end keeps no conversation settings.", "error")
        with _refused_on_storage_error():
            conversation = self.storage.conversation(conversation_id)
            self._refuse_if_read_only(conversation)
            prompt_changed = settings.system_prompt != self.settings.get(conversation_id).system_prompt
            if prompt_changed and conversation.turn_count > 0:
                conversation = self.create()
            elif prompt_changed:
                self.refuse_if_busy(conversation_id)
            self.settings.save(conversation.id, settings)
            if prompt_changed and conversation.id == conversation_id:
                conversation = self._load(conversation)
        return conversation

    def search(self, text: str) -> list[SearchHit]:
        """Messages of every conversation that hold the words of ``text``, best first."""
        with _refused_on_storage_error():
            return self.storage.search(text)

    def query_size(self, query: str) -> tuple[int, int]:
        """(tokens of ``query`` with its template, the most the model takes)."""
        return self.worker.query_tokens(query), self.worker.query_limit

    def refuse_if_too_long(self, query: str) -> None:
        """Raise ActionRefused when ``query`` leaves the model no room for an answer."""
        tokens, limit = self.query_size(query)
        if tokens > limit:
            raise ActionRefused(
                f"The message is {tokens} tokens with its template; this model takes at most {limit}. Shorten it."
            )

    def fork(self, conversation_id: str, turn: int) -> Conversation:
        """A new conversation continuing ``conversation_id`` from ``turn``, with that turn's memory."""
        with _refused_on_storage_error():
            fork = self.storage.fork(conversation_id, turn)
            if self.settings is not None:
                self.settings.copy(conversation_id, fork.id)
        self._emit(ConversationsChanged())
        return fork

    def _refuse_if_read_only(self, conversation: Conversation) -> None:
        reason = self.read_only_reason(conversation)
        if reason:
            raise ActionRefused(reason)

    def refuse_if_busy(self, conversation_id: str) -> None:
        """Raise ActionRefused while a conversation has turns in flight (delete and rewind wait for them)."""
        if self.state(conversation_id).live:
            raise ActionRefused("Wait until the answer and its memory update are finished.")

    # ----- turns

    def send(self, conversation_id: str, query: str) -> LiveTurn:
        """Send ``query`` as the next turn; the worker answers it after any memory update in flight.

        A conversation still called :data:`NEW_TITLE` is named after its first query; one that
        another process continued or rewound since its memory was loaded here is reloaded first.
        Raises ActionRefused for a read-only or deleted conversation, an unusable snapshot, or
        while the previous answer is still being generated.
        """
        with _refused_on_storage_error():
            conversation = self.open(conversation_id)
        state = self.state(conversation_id)
        reason = state.read_only_reason or state.problem
        if reason:
            raise ActionRefused(reason)
        if any(live.phase in (QUEUED, GENERATING) for live in state.live.values()):
            raise ActionRefused("The previous answer is still coming; stop it first.")
        self._drop_redo(conversation_id)
        with _refused_on_storage_error():
            if not state.live and conversation.revision != state.revision:
                conversation = self._load(conversation)
            turn = (max(state.live) if state.live else conversation.turn_count) + 1
            snapshot = self.storage.new_snapshot_path(conversation_id, turn)
        live = LiveTurn(conversation_id, turn, query, snapshot=snapshot)
        state.live[turn] = live
        if conversation.title == NEW_TITLE and turn == 1:
            self.rename(conversation_id, query[:TITLE_LENGTH])
        self._emit(TurnQueued(conversation_id, turn, query))
        self.worker.send(conversation_id, turn, query, snapshot)
        return live

    def stop(self) -> None:
        """Stop the answer being generated; the partial answer is kept and memorized.

        A turn without a token yet (queued, or reading the query) is cancelled instead: TurnCancelled follows.
        """
        for state in self._states.values():
            for live in state.live.values():
                unanswered = live.phase == QUEUED or (live.phase == GENERATING and not live.answer)
                if unanswered and not live.cancelling:
                    live.cancelling = True
                    self.worker.cancel(live.conversation_id, live.turn)
        self.worker.stop()

    def wind_down(self) -> bool:
        """Prepare to quit: cancel queued turns and stop the answer being generated.

        A memory update in flight still finishes and is saved. Returns True when nothing is left in
        flight; otherwise :class:`ReadyToQuit` follows once the last turn is saved.
        """
        self.quitting = True
        for conversation_id, turns in self.worker.drop_queued().items():
            for turn in turns:
                live = self.state(conversation_id).live.pop(turn, None)
                if live is not None:
                    self._discard(live.snapshot)
        self.worker.stop()
        return not self.has_live_turns()

    # ----- worker events

    def handle(self, event: WorkerEvent) -> None:
        """Take in an event of the worker (on the controller's thread) and tell the listeners."""
        handler = {
            SessionReady: self._session_ready,
            SnapshotProblem: self._snapshot_problem,
            TurnStarted: self._turn_started,
            TokenText: self._token_text,
            AnswerFinished: self._answer_finished,
            AnswerCancelled: self._answer_cancelled,
            TurnSaved: self._turn_saved,
            JobFailed: self._job_failed,
        }[type(event)]
        handler(event)
        if self.quitting and not self.has_live_turns():
            self._emit(ReadyToQuit())

    def _session_ready(self, event: SessionReady) -> None:
        state = self.state(event.conversation_id)
        state.ready, state.loading, state.problem = True, False, None
        self._emit(event)

    def _snapshot_problem(self, event: SnapshotProblem) -> None:
        state = self.state(event.conversation_id)
        state.ready, state.loading, state.problem = False, False, event.reason
        state.last_good_turn = event.last_good_turn
        self._emit(event)

    def _turn_started(self, event: TurnStarted) -> None:
        live = self.state(event.conversation_id).live.get(event.turn)
        if live is not None:
            live.phase = GENERATING
            self._emit(event)

    def _token_text(self, event: TokenText) -> None:
        live = self.state(event.conversation_id).live.get(event.turn)
        if live is not None:
            live.answer += event.text
            self._emit(event)

    def _answer_finished(self, event: AnswerFinished) -> None:
        live = self.state(event.conversation_id).live.get(event.turn)
        if live is not None:
            live.phase = UPDATING
            live.stopped = event.stopped
            live.answer = event.text
            self._emit(event)

    def _answer_cancelled(self, event: AnswerCancelled) -> None:
        live = self.state(event.conversation_id).live.pop(event.turn, None)
        if live is None:
            return
        self._discard(live.snapshot)
        self._resync(event.conversation_id)
        self._emit(TurnCancelled(event.conversation_id, event.turn, live.query))

    def _turn_saved(self, event: TurnSaved) -> None:
        state = self.state(event.conversation_id)
        live = state.live.pop(event.turn, None)
        try:
            conversation = self.storage.commit_turn(
                event.conversation_id,
                event.turn,
                event.query,
                event.answer,
                event.stats,
                snapshot=event.snapshot,
                revision=state.revision,
            )
        except StorageError as error:
            self._discard(event.snapshot)
            message = f"turn {event.turn} was not saved: {error}"
            if isinstance(error, TurnConflictError):
                message += " (it was changed in another window or process; its saved turns are reloaded)"
            self._turn_lost(event.conversation_id, live, message, "")
            return
        state.revision = conversation.revision
        self._emit(TurnCommitted(conversation, event.turn))

    def _job_failed(self, event: JobFailed) -> None:
        live = None
        if event.conversation_id is not None and event.turn is not None:
            live = self.state(event.conversation_id).live.pop(event.turn, None)
        if live is not None:
            self._discard(live.snapshot)
            self._turn_lost(event.conversation_id, live, event.message, event.details)
            return
        if event.conversation_id is not None:
            self.state(event.conversation_id).loading = False
        self._emit(WorkerFailed(event.conversation_id, event.message, event.details))

    def _turn_lost(self, conversation_id: str, live: LiveTurn | None, message: str, details: str) -> None:
        self._resync(conversation_id)
        if live is not None:
            self._emit(TurnFailed(conversation_id, live.turn, live.query, message, details))
        else:
            self._emit(WorkerFailed(conversation_id, message, details))

    def _resync(self, conversation_id: str) -> None:
        """After a lost turn, reload the worker's memory from the last committed snapshot.

        The worker's Session may hold an STM that was never committed; reloading keeps every next
        turn on the stored memory. Waits while other turns of the conversation are in flight.
        """
        if self.state(conversation_id).live:
            return
        try:
            conversation = self.storage.conversation(conversation_id)
            if self.read_only_reason(conversation) is None:
                self._load(conversation)
        except StorageError:  # deleted meanwhile (maybe by another process): nothing to reload
            return

    def _discard(self, snapshot: Path | None) -> None:
        """Remove the snapshot file of a turn that will not be committed (if the database cannot be
        written now, the next start removes it)."""
        if snapshot is None:
            return
        try:
            self.storage.discard_snapshot(snapshot)
        except StorageError:
            pass


@contextmanager
def _refused_on_storage_error() -> Iterator[None]:
    """Storage refusals (a conversation deleted elsewhere, an unwritable database) become ActionRefused."""
    try:
        yield
    except StorageError as error:
        raise ActionRefused(str(error), "error") from error
