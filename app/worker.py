"""The chat's inference thread: one long-lived thread owns the model and every conversation's Session.

The UI thread never touches MLX. It puts jobs on a queue (:meth:`InferenceWorker.open`,
:meth:`~InferenceWorker.send`, ...) and receives plain event objects through the ``post``
callback (the Textual app turns them into messages; ``post_message`` is thread-safe). Arrays
are evaluated (``mx.eval``) on this thread before anything derived from them leaves it.

Jobs run strictly in order, so a query sent while the previous memory update is still running
waits for it and always starts from the updated STM.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rxt_app.storage import TurnStats

from rxt_mlx.errors import RxTError


class ModelLoadError(RxTError, RuntimeError):
    """The model folder given to rxt-chat cannot be loaded (missing, not a model, bad weights)."""


@dataclass(frozen=True)
class SessionReady:
    """A conversation's Session is loaded at ``turn`` and can take queries."""

    conversation_id: str
    turn: int


@dataclass(frozen=True)
class SnapshotProblem:
    """The STM snapshot of ``turn`` cannot be used; ``last_good_turn`` is the latest usable one (0: initial)."""

    conversation_id: str
    turn: int
    reason: str
    last_good_turn: int


@dataclass(frozen=True)
class TurnStarted:
    """Generation of ``turn`` began (any earlier memory update is finished)."""

    conversation_id: str
    turn: int


@dataclass(frozen=True)
class TokenText:
    """Newly decoded answer text of ``turn``."""

    conversation_id: str
    turn: int
    text: str


@dataclass(frozen=True)
class AnswerFinished:
    """The answer is complete for the user (EOS, max tokens or stop); the memory update follows."""

    conversation_id: str
    turn: int
    text: str
    tokens: int
    prompt_seconds: float
    ttft_seconds: float
    tokens_per_second: float
    stopped: bool


@dataclass(frozen=True)
class AnswerCancelled:
    """``turn`` was cancelled before its first token (:meth:`InferenceWorker.cancel`): nothing of it
    is kept, and the conversation's Session is dropped (open it again from its snapshots)."""

    conversation_id: str
    turn: int


@dataclass(frozen=True)
class TurnSaved:
    """The memory update of ``turn`` ran and its STM snapshot is on disk at ``snapshot``: commit it."""

    conversation_id: str
    turn: int
    query: str
    answer: str
    stats: TurnStats
    snapshot: Path


@dataclass(frozen=True)
class JobFailed:
    """A job raised; ``message`` is the error for the user, ``details`` the traceback."""

    conversation_id: str | None
    turn: int | None
    message: str
    details: str


WorkerEvent = (
    SessionReady | SnapshotProblem | TurnStarted | TokenText | AnswerFinished | AnswerCancelled | TurnSaved | JobFailed
)


@dataclass(frozen=True)
class _Open:
    conversation_id: str
    turn: int
    snapshots: tuple[Path, ...]
    system_prompt: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class _Send:
    conversation_id: str
    turn: int
    query: str
    snapshot: Path
    sampling: dict | None = field(default=None, kw_only=True)


TurnJob = _Send
"""The job :meth:`InferenceWorker.send` queues (``conversation_id``, ``turn``, ``query``,
``snapshot``, ``sampling``), as :meth:`InferenceWorker.take_job` gives it to a subclass."""


@dataclass(frozen=True)
class _Forget:
    conversation_id: str


_SHUTDOWN = object()


def memory_change(previous, current) -> list[float]:
    """Per STM layer, ``||current - previous|| / ||previous||`` (arrays of shape (L, B, S, D))."""
    import mlx.core as mx

    axes = tuple(range(1, previous.ndim))
    difference = mx.sqrt(mx.sum(mx.square(current - previous), axis=axes))
    scale = mx.maximum(mx.sqrt(mx.sum(mx.square(previous), axis=axes)), 1e-12)
    change = (difference / scale).astype(mx.float32)
    mx.eval(change)
    return change.tolist()


class InferenceWorker:
    """Owns the model, the tokenizer and one Session per opened conversation, on its own thread.

    Args:
        model_dir: the MLX model folder (``rxt_mlx.load``).
        post: called on the worker thread with each :data:`WorkerEvent`; must be thread-safe.
        sampling: keyword arguments for ``Session.interact`` (max_tokens, temperature, ...).
    """

    def __init__(self, model_dir: str | Path, post: Callable[[WorkerEvent], Any], sampling: dict | None = None):
        self.model_dir = Path(model_dir)
        self.sampling = dict(sampling or {})
        self._post = post
        self._jobs: queue.Queue = queue.Queue()
        self._sessions: dict[str, Any] = {}
        self._active_session: Any = None
        self._cancelled: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rxt-inference", daemon=True)
        self.model = None
        self.tokenizer = None
        self.description = ""
        """The loaded model in words (``rxt_mlx.describe_model``): source, size, precision, context, STM."""
        self.fingerprint = ""
        self.stm_shape: tuple[int, ...] = ()
        self.system_prompt_of: Callable[[str], str | None] = lambda conversation_id: None
        """The system prompt written into a conversation's memory at turn 0 (called on the caller's thread)."""
        self.sampling_of: Callable[[str], dict] = lambda conversation_id: {}
        """A conversation's own sampling settings, over ``sampling`` (called on the caller's thread)."""

    def start(self) -> InferenceWorker:
        """Start the thread and wait until the model is loaded; raises ModelLoadError if it cannot be."""
        self._thread.start()
        self._loaded.wait()
        if isinstance(self._load_error, ModelLoadError):
            raise self._load_error
        if self._load_error is not None:
            raise ModelLoadError(f"cannot load the model in {self.model_dir}: {self._load_error}") from self._load_error
        return self

    def open(self, conversation_id: str, turn: int, snapshots: list[Path]) -> None:
        """Load (or reload) a conversation's Session at ``turn`` from ``snapshots[turn - 1]``.

        ``snapshots`` lists the snapshot paths of turns 1..turn, so that on a bad snapshot the
        worker can name the last good turn. Posts SessionReady or SnapshotProblem.
        """
        system_prompt = self.system_prompt_of(conversation_id) if turn == 0 else None
        self._jobs.put(_Open(conversation_id, turn, tuple(snapshots), system_prompt=system_prompt))

    def send(self, conversation_id: str, turn: int, query: str, snapshot: Path) -> None:
        """Answer ``query`` as ``turn`` of an opened conversation, then update and save its STM to ``snapshot``.

        ``snapshot`` should come from ``Storage.new_snapshot_path``: a file no other writer uses.
        """
        self._jobs.put(_Send(conversation_id, turn, query, snapshot, sampling=self.sampling_of(conversation_id)))

    def forget(self, conversation_id: str) -> None:
        """Drop a conversation's Session (after delete or rewind)."""
        self._jobs.put(_Forget(conversation_id))

    def stop(self) -> None:
        """Stop the answer being generated now; the partial answer is kept and memorized."""
        with self._lock:
            if self._active_session is not None:
                self._active_session.stop()

    def cancel(self, conversation_id: str, turn: int) -> None:
        """Cancel a turn not answered yet (queued, or started without a token shown): it is not
        memorized; AnswerCancelled follows."""
        with self._lock:
            self._cancelled.add((conversation_id, turn))
            if self._active_session is not None:
                self._active_session.stop()

    def drop_queued(self) -> dict[str, list[int]]:
        """Cancel the queries not started yet; returns their turns per conversation."""
        dropped: dict[str, list[int]] = {}
        kept = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            self._jobs.task_done()
            if isinstance(job, _Send):
                dropped.setdefault(job.conversation_id, []).append(job.turn)
            else:
                kept.append(job)
        for job in kept:
            self._jobs.put(job)
        return dropped

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Finish the queued jobs (a running memory update completes and is saved), then end the thread."""
        self.stop()
        self._jobs.put(_SHUTDOWN)
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def query_limit(self) -> int:
        """Most tokens a query may have with its template ([BOS][Q]query[A]): one answer token must fit."""
        return self.model.config.decoder.seq_len - 1

    def query_tokens(self, query: str) -> int:
        """Tokens of ``query`` with its template (the tokenizer only: safe on any thread)."""
        return len(self.tokenizer.query_ids(query))

    def session(self, conversation_id: str):
        """The Session of an opened conversation (for tests; touch it only while the worker is idle)."""
        return self._sessions[conversation_id]

    def wait_idle(self) -> None:
        """Block until every queued job is done (for tests and shutdown)."""
        self._jobs.join()

    # ----- for subclasses: their own answer loops on the inference thread

    def post(self, event: WorkerEvent) -> None:
        """Hand ``event`` to the front end (the ``post`` callback)."""
        self._post(event)

    def loaded_session(self, conversation_id: str) -> Any | None:
        """The Session of an opened conversation, None if it is not open."""
        return self._sessions.get(conversation_id)

    def set_session(self, conversation_id: str, session: Any) -> None:
        """Make ``session`` the conversation's Session (its memory after a turn)."""
        self._sessions[conversation_id] = session

    @contextmanager
    def answering(self, session: Any) -> Iterator[None]:
        """Within the block, :meth:`stop` and :meth:`cancel` stop ``session``'s answer."""
        with self._lock:
            self._active_session = session
        try:
            yield
        finally:
            with self._lock:
                self._active_session = None

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as error:  # noqa: BLE001 - handed to start() to raise on the caller's thread
            self._load_error = error
            self._loaded.set()
            return
        self._loaded.set()
        while True:
            job = self._jobs.get()
            try:
                if job is _SHUTDOWN:
                    return
                self.run_job(job)
            finally:
                self._jobs.task_done()

    # ----- for subclasses, on the inference thread: jobs run while another one is in progress

    def run_job(self, job) -> None:
        """Run ``job``; a failure is posted as JobFailed (the thread keeps serving)."""
        try:
            self._handle(job)
        except Exception as error:  # noqa: BLE001 - reported to the UI, the thread keeps serving
            self._post(
                JobFailed(
                    getattr(job, "conversation_id", None),
                    getattr(job, "turn", None),
                    f"{type(error).__name__}: {error}",
                    traceback.format_exc(),
                )
            )

    def take_job(self, may_run: Callable[[Any], bool]) -> Any | None:
        """The next queued job, taken off the queue if ``may_run(job)``; None if the queue is empty,
        shuts down next, or ``may_run`` says no (the job stays first). Call :meth:`job_done` once
        a taken job is over (:meth:`wait_idle` waits for it)."""
        with self._jobs.mutex:
            job = self._jobs.queue[0] if self._jobs.queue else _SHUTDOWN
            if job is _SHUTDOWN or not may_run(job):
                return None
            return self._jobs.queue.popleft()

    def job_done(self) -> None:
        """A job of :meth:`take_job` is over."""
        self._jobs.task_done()

    def _load(self) -> None:
        import rxt_mlx

        if not self.model_dir.is_dir():
            raise ModelLoadError(f"{self.model_dir} is not a folder")
        if not (self.model_dir / "config.json").is_file():
            raise ModelLoadError(f"{self.model_dir} has no config.json; expected an MLX model folder from rxt-convert")
        self.model, self.tokenizer = rxt_mlx.load(self.model_dir)
        self.description = rxt_mlx.describe_model(self.model, self.model_dir)
        self.fingerprint = self.model.fingerprint
        self.stm_shape = tuple(self.model.initial_stm().shape)

    def _handle(self, job) -> None:
        if isinstance(job, _Open):
            self._open(job)
        elif isinstance(job, _Send):
            self._send(job)
        elif isinstance(job, _Forget):
            self._sessions.pop(job.conversation_id, None)

    def _was_cancelled(self, job: _Send) -> bool:
        """Whether ``job`` was cancelled; if so, AnswerCancelled is posted."""
        with self._lock:
            if (job.conversation_id, job.turn) not in self._cancelled:
                return False
            self._cancelled.discard((job.conversation_id, job.turn))
        self._post(AnswerCancelled(job.conversation_id, job.turn))
        return True

    def _load_snapshot(self, path: Path):
        from rxt_mlx.stm import load_stm

        stm, _ = load_stm(path, model_fingerprint=self.fingerprint, expected_shape=self.stm_shape)
        return stm

    def _open(self, job: _Open) -> None:
        from rxt_mlx.session import Session
        from rxt_mlx.stm import STMFileError

        self._sessions.pop(job.conversation_id, None)
        session = Session(self.model, self.tokenizer, system_prompt=job.system_prompt if job.turn == 0 else None)
        if job.turn > 0:
            try:
                session.load_stm(job.snapshots[job.turn - 1])
            except STMFileError as error:
                self._post(SnapshotProblem(job.conversation_id, job.turn, str(error), self._last_good_turn(job)))
                return
        self._sessions[job.conversation_id] = session
        self._post(SessionReady(job.conversation_id, job.turn))

    def _last_good_turn(self, job: _Open) -> int:
        from rxt_mlx.stm import STMFileError

        for turn in range(job.turn - 1, 0, -1):
            try:
                self._load_snapshot(job.snapshots[turn - 1])
            except STMFileError:
                continue
            return turn
        return 0

    def _send(self, job: _Send) -> None:
        from rxt_mlx.session import AnswerDone, MemoryUpdated, TokenEvent
        from rxt_mlx.stm import save_stm

        if self._was_cancelled(job):
            return
        session = self._sessions.get(job.conversation_id)
        if session is None:
            raise RuntimeError(f"conversation {job.conversation_id} is not open (its memory could not be loaded)")
        previous_stm = session.stm
        self._post(TurnStarted(job.conversation_id, job.turn))
        with self._lock:
            self._active_session = session
        answer: AnswerDone | None = None
        try:
            for event in session.interact(job.query, **{**self.sampling, **(job.sampling or {})}):
                if isinstance(event, TokenEvent):
                    if event.text:
                        self._post(TokenText(job.conversation_id, job.turn, event.text))
                elif isinstance(event, AnswerDone):
                    with self._lock:
                        self._active_session = None
                    if self._was_cancelled(job):  # the pending memory update goes with the Session
                        self._sessions.pop(job.conversation_id, None)
                        return
                    answer = event
                    self._post(
                        AnswerFinished(
                            job.conversation_id,
                            job.turn,
                            event.text,
                            event.tokens,
                            event.prompt_seconds,
                            event.ttft_seconds,
                            event.decode_tokens_per_second,
                            event.stopped,
                        )
                    )
                elif isinstance(event, MemoryUpdated):
                    change = memory_change(previous_stm, session.stm)
                    save_stm(job.snapshot, session.stm, model_fingerprint=self.fingerprint, turn=job.turn)
                    stats = TurnStats(
                        tokens=answer.tokens,
                        prompt_seconds=answer.prompt_seconds,
                        ttft_seconds=answer.ttft_seconds,
                        tokens_per_second=answer.decode_tokens_per_second,
                        memory_update_seconds=event.seconds,
                        stopped=answer.stopped,
                        memory_change=tuple(change),
                    )
                    self._post(TurnSaved(job.conversation_id, job.turn, job.query, answer.text, stats, job.snapshot))
        finally:
            with self._lock:
                self._active_session = None
                self._cancelled.discard((job.conversation_id, job.turn))  # a cancel that came too late
