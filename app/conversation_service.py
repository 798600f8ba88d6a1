"""rxt-serve's conversations: the chat's controller, storage and worker, driven from the event loop.

Everything here runs on the asyncio event loop's thread, the one thread that uses the
:class:`~rxt_app.controller.ChatController` and the :class:`~rxt_app.storage.Storage` (SQLite
connections belong to the thread that opened them). The inference worker posts its events from
its own thread; :class:`EventRelay` hands them to the loop (``call_soon_threadsafe``), where the
controller takes them in and :class:`ConversationService` passes each turn's events to the
request that waits for them (a :class:`TurnStream`).

The fsynced writes of a turn, the claim of its snapshot file and its commit, run on a
:class:`~rxt_app.storage_thread.StorageThread` (commits that wait together in one transaction)
while the loop serves other requests; the controller takes their results through a
:class:`~rxt_app.storage_thread.PreparedStorage`. One conversation's commits run one after another,
each with the revision the one before left.

A request that adds turns to a conversation holds it (:meth:`ConversationService.turns`) until
every turn it sent is committed or lost, so one conversation's turns run one after another while
other conversations' turns run meanwhile. The hold outlives the request: a client that goes
away stops its answer, and the partial answer is still memorised and committed before the next
request for that conversation starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from rxt_app.controller import (
    NEW_TITLE,
    ActionRefused,
    ChatController,
    TurnCommitted,
    TurnFailed,
)
from rxt_app.history import History, HistoryIndex, history_digests, stored_turns
from rxt_app.http_errors import APIError, bad_request, not_found
from rxt_app.serving_worker import Absorb, AnswerEnded, Generate, ServingWorker, TurnPlan
from rxt_app.storage import Conversation, Storage, StorageError, TurnConflictError, TurnRecord, TurnStats
from rxt_app.storage_thread import PreparedStorage, StorageThread
from rxt_app.system_prompts import SystemPrompts
from rxt_app.worker import AnswerFinished, TokenText, TurnSaved

log = logging.getLogger("rxt_app.serve")

MAX_LOADED_CONVERSATIONS = 32
SHUTDOWN_SECONDS = 30.0
"""How long closing waits for the turns in flight to be saved."""


class EventRelay:
    """The worker's ``post``: events from the inference thread, delivered on the event loop's thread.

    Events wait in a list; one loop callback delivers all that came meanwhile (a batch of answers
    posts a token per row and step). Events posted before :meth:`attach` are delivered then.
    """

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler: Callable[[object], object] | None = None
        self._waiting: list[object] = []
        self._lock = threading.Lock()

    def post(self, event: object) -> None:
        with self._lock:
            self._waiting.append(event)
            if len(self._waiting) > 1 or self._loop is None:
                return  # a delivery is already scheduled, or comes with attach
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: the server is gone
            pass

    def attach(self, loop: asyncio.AbstractEventLoop, handler: Callable[[object], object]) -> None:
        with self._lock:
            self._handler, self._loop = handler, loop
        loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            events, self._waiting = self._waiting, []
        for event in events:
            self._handler(event)


@dataclass(frozen=True)
class TextDelta:
    """More answer text."""

    text: str


@dataclass(frozen=True)
class Answer:
    """The answer is complete for the client; its memory update follows."""

    text: str
    tokens: int
    finish_reason: str
    prompt_tokens: int
    ttft_seconds: float
    tokens_per_second: float
    stopped: bool


@dataclass(frozen=True)
class MemorySaved:
    """The turn is stored: messages and the memory after it; ``conversation`` is the updated row."""

    conversation: Conversation
    turn: int
    stats: TurnStats | None


@dataclass(frozen=True)
class TurnLost:
    """The turn was not stored; ``conflict``: another process changed the conversation meanwhile."""

    message: str
    conflict: bool

    def error(self) -> APIError:
        if self.conflict:
            return APIError(409, self.message, code="conversation_changed")
        return APIError(500, self.message, code="turn_failed")


TurnEvent = TextDelta | Answer | MemorySaved | TurnLost


@dataclass
class TurnStream:
    """One turn in flight: its events in order, the answer, and how it ended."""

    conversation_id: str
    turn: int
    query: str
    stop: Callable[[], None]
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    answered: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    settled: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    ending: AnswerEnded | None = None
    saved: TurnStats | None = None
    conflict: bool = False

    def put(self, event: TurnEvent) -> None:
        self.events.put_nowait(event)
        if isinstance(event, (Answer, TurnLost)) and not self.answered.done():
            self.answered.set_result(event)
        if isinstance(event, (MemorySaved, TurnLost)) and not self.settled.done():
            self.settled.set_result(event)

    async def __aiter__(self) -> AsyncIterator[TurnEvent]:
        """The turn's events up to ``MemorySaved`` or ``TurnLost``."""
        while True:
            event = await self.events.get()
            yield event
            if isinstance(event, (MemorySaved, TurnLost)):
                return


class ConversationTurns:
    """The turns one request adds to one conversation; see :meth:`ConversationService.turns`.

    ``written_tokens``: tokens written into the memory for this request without decoding (system
    prompt, the client's turns).
    """

    def __init__(self, service: ConversationService, conversation_id: str):
        self.service = service
        self.conversation_id = conversation_id
        self.streams: list[TurnStream] = []
        self.written_tokens = 0

    async def absorb(self, query: str, answer: str) -> None:
        """Write a turn the client already has into the memory (no decoding); waits for its update."""
        stream = await self._send(query, Absorb(answer))
        self.written_tokens += len(self.service.tokenizer.interaction_ids(query, answer))
        result = await stream.answered
        if isinstance(result, TurnLost):
            raise result.error()

    async def generate(self, query: str, plan: Generate) -> TurnStream:
        """Answer ``query``; the stream gives its text, the answer, then the saved memory."""
        return await self._send(query, plan)

    async def _send(self, query: str, plan: TurnPlan) -> TurnStream:
        stream = await self.service.send(self.conversation_id, query, plan)
        self.streams.append(stream)
        return stream


class ConversationService:
    """Conversations for HTTP requests over one controller (see the module docstring).

    Args:
        worker: a started :class:`ServingWorker` posting to ``relay``.
        relay: the worker's :class:`EventRelay`.
        storage: the data dir, opened on this (the loop's) thread.
        system_prompts: the system prompts beside it.
        max_loaded: how many conversations' memories the worker keeps loaded (least recently used
            first out; each is one STM, 88 MB for RxT-Beta in bf16).
    """

    def __init__(
        self,
        worker: ServingWorker,
        relay: EventRelay,
        storage: Storage,
        system_prompts: SystemPrompts,
        max_loaded: int = MAX_LOADED_CONVERSATIONS,
    ):
        self.worker = worker
        self.storage = storage
        self.system_prompts = system_prompts
        self.tokenizer = worker.tokenizer
        self.storage_thread = StorageThread(storage, asyncio.get_running_loop())
        self._prepared = PreparedStorage(storage)
        self.controller = ChatController(worker, self._prepared)
        self.controller.subscribe(self._on_chat_event)
        self.history = HistoryIndex(storage, system_prompts, worker.fingerprint)
        self.max_loaded = max_loaded
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._streams: dict[tuple[str, int], TurnStream] = {}
        self._commits: dict[str, list[TurnSaved]] = {}
        """Per conversation, its saved turns not committed yet: the first on the storage thread."""
        worker.system_prompt_of = system_prompts.get
        relay.attach(asyncio.get_running_loop(), self._on_worker_event)

    @property
    def fingerprint(self) -> str:
        return self.worker.fingerprint

    # ----- limits of the model

    def check_query(self, query: str, param: str, what: str = "the query") -> None:
        """Refuse an empty query or one that leaves the decoder no room for an answer."""
        if not query.strip():
            raise bad_request(f"{what} is empty; it must have text", param)
        seq_len = self.worker.model.config.decoder.seq_len
        tokens = len(self.tokenizer.query_ids(query))
        if tokens >= seq_len:
            raise bad_request(
                f"{what} is {tokens} tokens with its template; the model's context is {seq_len} tokens for query "
                "and answer together, so shorten it",
                param,
                code="context_length_exceeded",
            )

    def check_memory_text(self, ids: list[int], what: str, param: str) -> None:
        """Refuse a turn or system prompt too long for one memory update (the encoder's context)."""
        limit = self.worker.model.config.encoder.seq_len
        if len(ids) > limit:
            raise bad_request(
                f"{what} is {len(ids)} tokens, more than the {limit} the model's memory update reads at once",
                param,
                code="context_length_exceeded",
            )

    def check_history(self, history: History, param: str = "messages") -> None:
        """The query of a history fits the model (its other parts are checked when they are written)."""
        self.check_query(history.query, param, "the query (the last user message)")

    def _check_writable(self, history: History, start: int, new_memory: bool, param: str = "messages") -> None:
        """The turns of ``history`` from ``start`` on (and the system prompt of a new memory) fit
        one memory update each."""
        if new_memory and history.system is not None:
            self.check_memory_text(self.tokenizer.system_prompt_ids(history.system), "the system prompt", param)
        for index, (query, answer) in enumerate(history.turns[start:], start):
            ids = self.tokenizer.interaction_ids(query, answer)
            self.check_memory_text(ids, f"turn {index + 1} (user and assistant message)", param)

    # ----- holding conversations

    @asynccontextmanager
    async def turns(self, conversation_id: str) -> AsyncIterator[ConversationTurns]:
        """Hold a stored conversation for the turns of one request (404 if there is none).

        The hold ends when every turn sent through it is committed or lost, after the block.
        """
        self.conversation(conversation_id)
        turns = await self._hold(conversation_id)
        try:
            self.conversation(conversation_id)  # not deleted while waiting
            yield turns
        finally:
            self._release(turns)

    @asynccontextmanager
    async def turns_after_history(self, history: History, param: str = "messages") -> AsyncIterator[ConversationTurns]:
        """Hold the conversation a stateless request continues, its missing turns written into memory.

        The stored conversation of this model and system prompt whose turns are the longest prefix
        of ``history.turns`` is continued (forked at that turn when it has more turns); with none,
        a new conversation is made. The turns it lacks are written by memory updates.
        """
        turns = await self._hold_history(history, param)
        try:
            held = self.storage.conversation(turns.conversation_id).turn_count
            for query, answer in history.turns[held:]:
                await turns.absorb(query, answer)
            yield turns
        finally:
            self._release(turns)

    @asynccontextmanager
    async def turns_after(
        self, conversation_id: str, turn: int, new_turns: tuple = (), param: str = "input"
    ) -> AsyncIterator[ConversationTurns]:
        """Hold a conversation continued after ``turn`` (forked there when it has more turns since),
        with ``new_turns`` written into memory; the stateful form of a request (a previous response)."""
        self._check_writable(History(None, tuple(new_turns), ""), 0, False, param)
        turns: ConversationTurns | None = await self._hold(conversation_id)
        try:
            conversation = self._continuable(conversation_id)
            if conversation.turn_count < turn:
                raise not_found(
                    f"conversation {conversation_id} was rewound to turn {conversation.turn_count}; "
                    f"turn {turn} no longer exists",
                    code="response_not_found",
                )
            if conversation.turn_count > turn:
                fork = self.fork(conversation_id, turn)
                self._release(turns)
                turns = None
                turns = await self._hold(fork.id)
            for query, answer in new_turns:
                await turns.absorb(query, answer)
            yield turns
        finally:
            if turns is not None:
                self._release(turns)

    async def _hold(self, conversation_id: str) -> ConversationTurns:
        await self._locks[conversation_id].acquire()
        self._recent[conversation_id] = None
        self._recent.move_to_end(conversation_id)
        return ConversationTurns(self, conversation_id)

    def _release(self, turns: ConversationTurns) -> None:
        """End a hold once its turns are all committed or lost (at once when it sent none)."""
        lock = self._locks[turns.conversation_id]
        pending = [stream.settled for stream in turns.streams if not stream.settled.done()]
        turns.streams = []
        if not pending:
            lock.release()
            self._unload_idle()
            return

        async def release_when_settled() -> None:
            try:
                await asyncio.gather(*pending)
            finally:
                lock.release()
                self._unload_idle()

        asyncio.ensure_future(release_when_settled())

    def _unload_idle(self) -> None:
        """Keep the memories of at most ``max_loaded`` conversations in the worker: drop the least
        recently used ones nobody holds (they are loaded again from their snapshot when next used)."""
        for conversation_id in list(self._recent):
            if len(self._recent) <= self.max_loaded:
                return
            state = self.controller.state(conversation_id)
            if self._locks[conversation_id].locked() or state.live or state.loading:
                continue
            del self._recent[conversation_id]
            self.worker.forget(conversation_id)
            state.ready = False

    async def _hold_history(self, history: History, param: str) -> ConversationTurns:
        digests = history_digests(self.fingerprint, history.system, history.turns)
        for _ in range(3):
            self.history.refresh()
            matched, holders = self.history.longest_match(digests)
            if matched == 0:
                break
            conversation_id = self._best_holder(holders, matched)
            turns = await self._hold(conversation_id)
            keep, fork = False, None
            try:
                conversation = self._holding_prefix(conversation_id, history, matched)
                if conversation is not None:
                    self._check_writable(history, matched, False, param)
                if conversation is not None and conversation.turn_count == matched:
                    keep = True
                    return turns
                if conversation is not None:
                    fork = self.fork(conversation_id, matched)
            finally:
                if not keep:
                    self._release(turns)
            if fork is not None:
                return await self._hold(fork.id)
        self._check_writable(history, 0, True, param)
        conversation = self.create(NEW_TITLE, history.system)
        turns = await self._hold(conversation.id)
        if history.system is not None:
            turns.written_tokens += len(self.tokenizer.system_prompt_ids(history.system))
        return turns

    def _holding_prefix(self, conversation_id: str, history: History, turns: int) -> Conversation | None:
        """The conversation if it still holds the first ``turns`` turns of ``history`` (same model and
        system prompt), else None (changed or deleted since it was indexed)."""
        try:
            conversation = self.storage.conversation(conversation_id)
            stored = stored_turns(self.storage.messages(conversation_id))
        except StorageError:
            return None
        same = (
            conversation.model_fingerprint == self.fingerprint
            and self.system_prompts.get(conversation_id) == history.system
            and len(stored) >= turns
            and stored[:turns] == list(history.turns[:turns])
        )
        return conversation if same else None

    def _best_holder(self, holders: set[str], turns: int) -> str:
        """Prefer a conversation with exactly ``turns`` turns (continued, no fork), then the latest."""
        rows = []
        for conversation_id in holders:
            try:
                rows.append(self.storage.conversation(conversation_id))
            except StorageError:
                continue
        if not rows:
            return next(iter(holders))
        rows.sort(key=lambda c: (c.turn_count == turns, c.updated_at), reverse=True)
        return rows[0].id

    def _continuable(self, conversation_id: str) -> Conversation:
        conversation = self.conversation(conversation_id)
        reason = self.controller.read_only_reason(conversation)
        if reason:
            raise APIError(409, reason, code="conversation_read_only")
        return conversation

    # ----- turns

    async def send(self, conversation_id: str, query: str, plan: TurnPlan) -> TurnStream:
        """Send a turn through the controller with ``plan``; its events go to the returned stream.

        Its snapshot file is claimed on the storage thread first (if the conversation changed
        meanwhile, the controller claims another on this thread and that one is given up).
        """
        live_turns = self.controller.state(conversation_id).live
        try:
            turn, snapshot = await self.storage_thread.reserve(conversation_id, max(live_turns, default=None))
        except StorageError:
            turn = None  # the controller refuses the send with the reason
        else:
            self._prepared.prepare_path(conversation_id, turn, snapshot)
        self.worker.plan_turn(conversation_id, plan)
        try:
            live = self.controller.send(conversation_id, query)
        except ActionRefused as error:
            raise APIError(409, error.message, code="conversation_unavailable") from None
        finally:
            self.worker.forget_plan(conversation_id)
            unused = self._prepared.unused_path(conversation_id, turn) if turn is not None else None
            if unused is not None:
                self.storage_thread.discard(unused)
        turn = live.turn
        stream = TurnStream(conversation_id, turn, query, lambda: self.worker.stop_turn(conversation_id, turn))
        self._streams[(conversation_id, turn)] = stream
        return stream

    def expect_history(self, history: History, stream: TurnStream) -> None:
        """Once ``stream`` is answered, a client may resend ``history`` plus that answer before the
        turn is committed: let the lookup find the conversation meanwhile."""
        digest: list[str] = []

        def answered(future: asyncio.Future) -> None:
            answer = future.result()
            if isinstance(answer, Answer):
                turns = (*history.turns, (history.query, answer.text))
                digest.append(history_digests(self.fingerprint, history.system, turns)[-1])
                self.history.add_pending(digest[0], stream.conversation_id)

        def settled(future: asyncio.Future) -> None:
            if digest:
                self.history.discard_pending(digest[0])

        stream.answered.add_done_callback(answered)
        stream.settled.add_done_callback(settled)

    def _on_worker_event(self, event: object) -> None:
        stream = self._streams.get((getattr(event, "conversation_id", None), getattr(event, "turn", None)))
        if isinstance(event, AnswerEnded):
            if stream is not None:
                stream.ending = event
            return
        if isinstance(event, TurnSaved):
            if stream is not None:
                stream.saved = event.stats
            self._commit(event)
            return
        self.controller.handle(event)

    def _commit(self, event: TurnSaved) -> None:
        """Commit a saved turn on the storage thread, after the conversation's earlier ones."""
        waiting = self._commits.setdefault(event.conversation_id, [])
        waiting.append(event)
        if len(waiting) == 1:
            self._start_commit(event)

    def _start_commit(self, event: TurnSaved) -> None:
        revision = self.controller.state(event.conversation_id).revision
        record = TurnRecord(
            event.conversation_id, event.turn, event.query, event.answer, event.stats, event.snapshot, revision
        )
        future = self.storage_thread.commit(record)
        future.add_done_callback(lambda future: self._committed(event, future.result()))

    def _committed(self, event: TurnSaved, result: Conversation | StorageError) -> None:
        """The controller takes in the commit's result (TurnCommitted or TurnFailed follows); the
        conversation's next saved turn is committed."""
        stream = self._streams.get((event.conversation_id, event.turn))
        if stream is not None:
            stream.conflict = isinstance(result, TurnConflictError)
        self._prepared.prepare_commit(event.conversation_id, event.turn, result)
        try:
            self.controller.handle(event)
        finally:
            waiting = self._commits[event.conversation_id]
            waiting.pop(0)
            if waiting:
                self._start_commit(waiting[0])
            else:
                del self._commits[event.conversation_id]

    def _on_chat_event(self, event: object) -> None:
        if isinstance(event, TurnCommitted):
            key = (event.conversation.id, event.turn)
        else:
            key = (getattr(event, "conversation_id", None), getattr(event, "turn", None))
        stream = self._streams.get(key)
        if stream is None:
            return
        if isinstance(event, TokenText):
            stream.put(TextDelta(event.text))
        elif isinstance(event, AnswerFinished):
            ending = stream.ending
            stream.put(
                Answer(
                    event.text,
                    event.tokens,
                    ending.finish_reason if ending else "stop",
                    ending.prompt_tokens if ending else 0,
                    event.ttft_seconds,
                    event.tokens_per_second,
                    event.stopped,
                )
            )
        elif isinstance(event, TurnCommitted):
            del self._streams[key]
            stream.put(MemorySaved(event.conversation, event.turn, stream.saved))
        elif isinstance(event, TurnFailed):
            del self._streams[key]
            stream.put(TurnLost(event.message, conflict=stream.conflict))

    # ----- conversations

    def conversation(self, conversation_id: str) -> Conversation:
        """The stored conversation (404 if there is none)."""
        try:
            return self.storage.conversation(conversation_id)
        except StorageError:
            raise not_found(f"no conversation {conversation_id!r}", code="conversation_not_found") from None

    def create(self, title: str, system: str | None = None) -> Conversation:
        """A new conversation of the loaded model; ``system`` is written into its memory before turn 1."""
        conversation = self.controller.create(title)
        if system is not None:
            self.system_prompts.set(conversation.id, system)
        return conversation

    def fork(self, conversation_id: str, turn: int) -> Conversation:
        """A new conversation with turns 1..``turn`` of another and that turn's memory."""
        conversation = self.conversation(conversation_id)
        if not 0 <= turn <= conversation.turn_count:
            raise bad_request(f"turn must be from 0 to {conversation.turn_count}, not {turn}", "turn")
        fork = self._refused_as_conflict(lambda: self.controller.fork(conversation_id, turn))
        self.system_prompts.copy(conversation_id, fork.id)
        return fork

    def rename(self, conversation_id: str, title: str) -> Conversation:
        self.conversation(conversation_id)
        return self._refused_as_conflict(lambda: self.controller.rename(conversation_id, title))

    async def delete(self, conversation_id: str) -> None:
        """Delete a conversation once its turns in flight are stored."""
        async with self.turns(conversation_id):
            self._refused_as_conflict(lambda: self.controller.delete(conversation_id))
            self.system_prompts.forget(conversation_id)

    async def rewind(self, conversation_id: str, turn: int | None) -> Conversation:
        """Drop the turns after ``turn`` (default: the last turn) once the turns in flight are stored."""
        async with self.turns(conversation_id):
            conversation = self._continuable(conversation_id)
            if turn is None and conversation.turn_count == 0:
                raise APIError(409, "nothing to rewind: the conversation has no turns", code="nothing_to_rewind")
            if turn is None:
                turn = conversation.turn_count - 1
            if not 0 <= turn <= conversation.turn_count:
                raise bad_request(f"turn must be from 0 to {conversation.turn_count}, not {turn}", "turn")
            return self._refused_as_conflict(lambda: self.controller.rewind_to(conversation_id, turn))

    @staticmethod
    def _refused_as_conflict(action: Callable[[], Conversation]) -> Conversation:
        try:
            return action()
        except ActionRefused as error:
            raise APIError(409, error.message, code="conversation_unavailable") from None

    # ----- closing

    async def close(self) -> None:
        """Stop generating, wait (bounded) until the turns in flight are saved, then close everything."""
        self.controller.wind_down()
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_SECONDS
        while self.controller.has_live_turns() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for stream in list(self._streams.values()):
            stream.put(TurnLost("the server is shutting down; the turn was not stored", conflict=False))
        self._streams.clear()
        await asyncio.to_thread(self.worker.shutdown)
        await asyncio.to_thread(self.storage_thread.close)
        self.storage.close()
        self.system_prompts.close()
