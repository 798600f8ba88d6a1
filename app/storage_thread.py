"""The storage work of rxt-serve's turns, on a thread of its own so that the event loop keeps serving.

A turn writes the database twice: the claim of its snapshot file before it is answered
(:meth:`~rxt_app.storage.Storage.new_snapshot_path`) and its commit once the snapshot is on disk
(:meth:`~rxt_app.storage.Storage.commit_turns`), each an fsynced transaction. :class:`StorageThread`
runs them on one thread with its own connection of the same writer; the event loop awaits their
results. The commits waiting when the thread gets to them are made in one transaction (one fsync
for turns that finished together); each keeps its compare-and-set, and a turn is reported
committed only once that transaction is.

The :class:`~rxt_app.controller.ChatController` is unchanged: it is handed a
:class:`PreparedStorage`, whose ``new_snapshot_path`` and ``commit_turn`` give the results the
thread prepared for that turn (and fall back to the storage on the loop's thread for any other).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from rxt_app.storage import Conversation, Storage, StorageError, TurnRecord


@dataclass(frozen=True)
class _Reserve:
    conversation_id: str
    after_turn: int | None
    future: asyncio.Future


@dataclass(frozen=True)
class _Commit:
    record: TurnRecord
    future: asyncio.Future


@dataclass(frozen=True)
class _Discard:
    snapshot: Path


_CLOSE = object()


class StorageThread:
    """One thread with its own connection to ``storage``'s data dir (see the module docstring).

    Args:
        storage: the writer whose snapshots it claims and commits (opened on the loop's thread).
        loop: the event loop its results are delivered on.
    """

    def __init__(self, storage: Storage, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(storage,), name="rxt-storage", daemon=True)
        self._thread.start()

    def reserve(self, conversation_id: str, after_turn: int | None) -> asyncio.Future:
        """The next turn of a conversation and a new snapshot file for it, pending for this writer.

        The next turn follows ``after_turn`` (a turn in flight), or with None the stored turns.
        Resolves to ``(turn, path)`` or raises StorageError.
        """
        future = self._loop.create_future()
        self._jobs.put(_Reserve(conversation_id, after_turn, future))
        return future

    def commit(self, record: TurnRecord) -> asyncio.Future:
        """Commit a turn (with those waiting beside it); resolves to its Conversation or its StorageError."""
        future = self._loop.create_future()
        self._jobs.put(_Commit(record, future))
        return future

    def discard(self, snapshot: Path) -> None:
        """Give up a snapshot :meth:`reserve` handed out and no turn took."""
        self._jobs.put(_Discard(snapshot))

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the work given so far, then end the thread (blocks)."""
        if self._thread.is_alive():
            self._jobs.put(_CLOSE)
            self._thread.join(timeout)

    def _run(self, storage: Storage) -> None:
        try:
            connection = storage.connection_for_thread()
        except StorageError as error:
            self._fail_all(error)
            return
        try:
            while True:
                jobs = [self._jobs.get()]
                while not self._jobs.empty():
                    jobs.append(self._jobs.get_nowait())
                commits = [job for job in jobs if isinstance(job, _Commit)]
                if commits:
                    try:
                        results = connection.commit_turns([job.record for job in commits])
                    except Exception as error:  # noqa: BLE001 - each turn is reported lost, the thread goes on
                        results = [StorageError(f"{type(error).__name__}: {error}")] * len(commits)
                    for job, result in zip(commits, results, strict=True):
                        self._resolve(job.future, result)
                for job in jobs:
                    if isinstance(job, _Reserve):
                        self._reserve(connection, job)
                    elif isinstance(job, _Discard):
                        self._discard(connection, job.snapshot)
                if _CLOSE in jobs:
                    return
        finally:
            connection.close()

    def _reserve(self, connection: Storage, job: _Reserve) -> None:
        try:
            after = job.after_turn
            turn = (after if after is not None else connection.conversation(job.conversation_id).turn_count) + 1
            self._resolve(job.future, (turn, connection.new_snapshot_path(job.conversation_id, turn)))
        except Exception as error:  # noqa: BLE001 - the request that awaits it answers with it
            self._resolve(job.future, error, failed=True)

    @staticmethod
    def _discard(connection: Storage, snapshot: Path) -> None:
        try:
            connection.discard_snapshot(snapshot)
        except StorageError:
            pass  # a database that cannot be written now: the next reconcile removes it

    def _fail_all(self, error: StorageError) -> None:
        """The thread has no connection: every job (now and later) fails with ``error``."""
        while True:
            job = self._jobs.get()
            if job is _CLOSE:
                return
            if isinstance(job, _Reserve):
                self._resolve(job.future, error, failed=True)
            elif isinstance(job, _Commit):
                self._resolve(job.future, error)

    def _resolve(self, future: asyncio.Future, result: object, failed: bool = False) -> None:
        def resolve() -> None:
            if future.done():  # the awaiting request was cancelled
                return
            if failed:
                future.set_exception(result)
            else:
                future.set_result(result)

        try:
            self._loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # the loop is closed: the server is gone
            pass


class PreparedStorage:
    """The storage a :class:`~rxt_app.controller.ChatController` uses in rxt-serve: ``storage`` with
    the snapshot paths and commits of turns prepared by a :class:`StorageThread`."""

    def __init__(self, storage: Storage):
        self._storage = storage
        self._paths: dict[tuple[str, int], Path] = {}
        self._commits: dict[tuple[str, int], Conversation | StorageError] = {}

    def __getattr__(self, name: str):
        return getattr(self._storage, name)

    def prepare_path(self, conversation_id: str, turn: int, snapshot: Path) -> None:
        """``new_snapshot_path(conversation_id, turn)`` gives ``snapshot`` (once)."""
        self._paths[(conversation_id, turn)] = snapshot

    def unused_path(self, conversation_id: str, turn: int) -> Path | None:
        """The prepared path of a turn that did not take it (removed from the prepared ones)."""
        return self._paths.pop((conversation_id, turn), None)

    def prepare_commit(self, conversation_id: str, turn: int, result: Conversation | StorageError) -> None:
        """``commit_turn`` of this turn returns ``result`` (or raises it), once: it was committed (or
        refused) on the storage thread with the revision the controller passes."""
        self._commits[(conversation_id, turn)] = result

    def new_snapshot_path(self, conversation_id: str, turn: int) -> Path:
        path = self._paths.pop((conversation_id, turn), None)
        return path if path is not None else self._storage.new_snapshot_path(conversation_id, turn)

    def commit_turn(self, conversation_id: str, turn: int, *args, **kwargs) -> Conversation:
        result = self._commits.pop((conversation_id, turn), None)
        if result is None:
            return self._storage.commit_turn(conversation_id, turn, *args, **kwargs)
        if isinstance(result, StorageError):
            raise result
        return result
