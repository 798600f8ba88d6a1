"""Conversations, messages and STM snapshots on disk, shared safely by several processes.

Layout of a data dir::

    chat.sqlite3                                      conversations, messages, each turn's snapshot
    stm/<conversation_id>/<turn>.<key>.safetensors    the STM after a turn (an STM file)
    writers/<writer>.lock                             one per open Storage, locked while it is open

Any number of processes (chat windows, a server) may open one data dir at the same time:

* **The database decides which snapshot belongs to a turn.** A writer first asks for a snapshot
  file (:meth:`Storage.new_snapshot_path`): a name no other writer gets (``<key>`` is random),
  recorded in the database as pending for this writer. It writes the STM there (atomically,
  ``rxt_mlx.stm.save_stm``), then :meth:`Storage.commit_turn` records the turn in one transaction
  that compares and sets: the conversation must still be at the turn (and the ``revision``) the
  new memory was built on, or nothing is recorded and the writer removes its own file
  (:meth:`Storage.discard_snapshot`), never another's.
* **A file is removed only when no committed turn refers to it and no live writer can still
  commit it.** :meth:`Storage.reconcile` (run on open) keeps the files pending for a writer whose
  lock file is still locked (a process killed with -9 loses its lock) and the temp files of saves
  still running (``rxt_mlx.stm.remove_temp_files``).
* Rewind and delete commit first, then remove the files no row refers to any more.

So a kill at any moment loses at most the turns in flight of the killed process, and the next open
of the data dir, by any process, removes what they left. Data dirs of schema 1 (snapshots named
``<turn>.safetensors``, one writer) are migrated in place: their files keep their names.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import platformdirs
from rxt_app.writers import WriterLock

from rxt_mlx.errors import RxTError
from rxt_mlx.stm import remove_temp_files, temp_file_target

DATABASE_NAME = "chat.sqlite3"
SNAPSHOT_FOLDER = "stm"
SNAPSHOT_SUFFIX = ".safetensors"
WRITERS_FOLDER = "writers"
BUSY_TIMEOUT_SECONDS = 30.0
"""How long a transaction waits for another process's transaction to end."""
DELETED_KEPT_SECONDS = 60.0
"""A conversation marked deleted (undo still possible) is purged by the first open after this long."""
MAX_TURN = 2**62
_CONVERSATION_ID = re.compile(r"[0-9a-f]{32}")

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        model_fingerprint TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        turn_count INTEGER NOT NULL DEFAULT 0 CHECK (turn_count >= 0),
        forked_from TEXT REFERENCES conversations(id) ON DELETE SET NULL,
        forked_at_turn INTEGER
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        turn INTEGER NOT NULL CHECK (turn >= 1),
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        text TEXT NOT NULL,
        created_at TEXT NOT NULL,
        tokens INTEGER,
        prompt_seconds REAL,
        ttft_seconds REAL,
        tokens_per_second REAL,
        memory_update_seconds REAL,
        stopped INTEGER,
        memory_change TEXT,
        UNIQUE (conversation_id, turn, role)
    );
    CREATE INDEX messages_by_conversation ON messages (conversation_id, turn);
    """,
    """
    ALTER TABLE conversations ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE snapshots (
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        turn INTEGER NOT NULL CHECK (turn >= 1),
        file TEXT NOT NULL,
        PRIMARY KEY (conversation_id, turn),
        UNIQUE (conversation_id, file)
    );
    CREATE TABLE pending_snapshots (
        conversation_id TEXT NOT NULL,
        file TEXT NOT NULL,
        turn INTEGER NOT NULL,
        writer TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (conversation_id, file)
    );
    INSERT INTO snapshots (conversation_id, turn, file)
        SELECT messages.conversation_id, messages.turn, messages.turn || '.safetensors'
        FROM messages JOIN conversations ON conversations.id = messages.conversation_id
        WHERE messages.role = 'assistant' AND messages.turn <= conversations.turn_count;
    """,
    """
    ALTER TABLE conversations ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE conversations ADD COLUMN deleted_at TEXT;
    CREATE VIRTUAL TABLE message_search USING fts5(text, content='messages', content_rowid='id');
    INSERT INTO message_search (rowid, text) SELECT id, text FROM messages;
    CREATE TRIGGER message_search_insert AFTER INSERT ON messages BEGIN
        INSERT INTO message_search (rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER message_search_delete AFTER DELETE ON messages BEGIN
        INSERT INTO message_search (message_search, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER message_search_update AFTER UPDATE OF text ON messages BEGIN
        INSERT INTO message_search (message_search, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO message_search (rowid, text) VALUES (new.id, new.text);
    END;
    """,
)
"""Schema scripts, applied in order; ``PRAGMA user_version`` counts those applied. Schema 3 adds
per-conversation settings (JSON), soft deletion (``deleted_at``: hidden, made final later) and the
full-text index of messages, which triggers keep in step with every insert and delete, by any process."""


def default_data_dir() -> Path:
    """Where conversations live unless the command line says otherwise: the platform's user data dir."""
    return Path(platformdirs.user_data_dir("rxt-mlx"))


class StorageError(RxTError, RuntimeError):
    """The data dir cannot be used as asked (unknown conversation, wrong turn, bad text, newer schema)."""


class TurnConflictError(StorageError):
    """A turn was not committed: the conversation changed (in this or another process) since the
    turn's memory was built on it. The turn's own snapshot is the caller's to discard."""


@dataclass(frozen=True)
class TurnStats:
    """Figures of one answered turn, stored on its assistant message."""

    tokens: int
    prompt_seconds: float
    ttft_seconds: float
    tokens_per_second: float
    memory_update_seconds: float
    stopped: bool = False
    memory_change: tuple[float, ...] = ()
    """Per STM layer: ||STM_t - STM_{t-1}|| / ||STM_{t-1}||."""


@dataclass(frozen=True)
class TurnRecord:
    """A turn to commit (:meth:`Storage.commit_turns`); the fields are :meth:`Storage.commit_turn`'s arguments."""

    conversation_id: str
    turn: int
    query: str
    answer: str
    stats: TurnStats
    snapshot: Path | None = None
    revision: int | None = None


@dataclass(frozen=True)
class Conversation:
    """One row of the conversations table.

    ``revision`` grows with every change of the turns (commit, rewind) by any process; a commit
    can require the revision its memory was built on (:meth:`Storage.commit_turn`).
    """

    id: str
    title: str
    model_fingerprint: str
    created_at: str
    updated_at: str
    turn_count: int
    forked_from: str | None = None
    forked_at_turn: int | None = None
    revision: int = 0


@dataclass(frozen=True)
class RewoundTurn:
    """A turn dropped by :meth:`Storage.rewind_keeping`, with what committing it again takes."""

    turn: int
    query: str
    answer: str
    stats: TurnStats
    snapshot: Path


@dataclass(frozen=True)
class SearchHit:
    """A message that matches a search: where it is, and the words around the match."""

    conversation_id: str
    title: str
    turn: int
    role: str
    snippet: str


@dataclass(frozen=True)
class Message:
    """One user query or assistant answer; ``stats`` only on answers."""

    conversation_id: str
    turn: int
    role: str
    text: str
    created_at: str
    stats: TurnStats | None = field(default=None)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


_CONVERSATION_FIELDS = frozenset(Conversation.__dataclass_fields__)


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(**{key: row[key] for key in row.keys() if key in _CONVERSATION_FIELDS})


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a migration script (a trigger's body keeps its inner ``;``)."""
    statement = ""
    for part in script.split(";"):
        statement += part + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n;"):
                yield statement
            statement = ""


def _message(row: sqlite3.Row) -> Message:
    stats = None
    if row["role"] == "assistant" and row["tokens"] is not None:
        stats = TurnStats(
            tokens=row["tokens"],
            prompt_seconds=row["prompt_seconds"],
            ttft_seconds=row["ttft_seconds"],
            tokens_per_second=row["tokens_per_second"],
            memory_update_seconds=row["memory_update_seconds"],
            stopped=bool(row["stopped"]),
            memory_change=tuple(json.loads(row["memory_change"] or "[]")),
        )
    return Message(row["conversation_id"], row["turn"], row["role"], row["text"], row["created_at"], stats)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}… ({len(text)} characters)"


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise StorageError(f"{what} must be text, not {type(value).__name__} {_shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise StorageError(f"{what} is not valid Unicode text ({error.reason} at character {error.start})") from None
    return value


def _turn(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TURN:
        raise StorageError(f"a turn is a whole number from 0 to {MAX_TURN}, not {_shown(value)}")
    return value


def _stats_row(stats: object) -> tuple:
    """The assistant message's figure columns; raises StorageError for figures that cannot be stored as given."""
    if not isinstance(stats, TurnStats):
        raise StorageError(f"turn figures must be TurnStats, not {type(stats).__name__}")
    if isinstance(stats.tokens, bool) or not isinstance(stats.tokens, int) or not 0 <= stats.tokens < 2**63:
        raise StorageError(f"turn figure tokens must be a whole number >= 0, not {_shown(stats.tokens)}")
    seconds = (stats.prompt_seconds, stats.ttft_seconds, stats.tokens_per_second, stats.memory_update_seconds)
    change = stats.memory_change
    if not isinstance(change, (tuple, list)):
        raise StorageError(f"turn figure memory_change must be a sequence of numbers, not {_shown(change)}")
    for number in (*seconds, *change):
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise StorageError(
                f"turn figures (seconds, rates, memory_change) must be finite numbers, not {_shown(number)}"
            )
    if not isinstance(stats.stopped, bool):
        raise StorageError(f"turn figure stopped must be True or False, not {_shown(stats.stopped)}")
    return (stats.tokens, *seconds, int(stats.stopped), json.dumps([float(number) for number in change]))


class Storage:
    """The chat's data dir: one SQLite database plus STM snapshot files; see the module docstring.

    One Storage is one writer. Use it from one thread (the front end's); the inference worker
    only writes snapshot files at the paths :meth:`new_snapshot_path` handed out. Several
    Storages, in one process or many, may share a data dir.
    """

    def __init__(self, data_dir: str | os.PathLike[str]):
        self.data_dir = Path(data_dir)
        self.snapshot_root = self.data_dir / SNAPSHOT_FOLDER
        self.writers_folder = self.data_dir / WRITERS_FOLDER
        self.database_path = self.data_dir / DATABASE_NAME
        for folder in (self.data_dir, self.snapshot_root):
            folder.mkdir(parents=True, exist_ok=True)
        self._db = self._connect()
        self._writer_lock: WriterLock | None = WriterLock(self.writers_folder)
        self.writer = self._writer_lock.id
        """This Storage's writer id: the owner of the snapshots it hands out until they are committed."""
        self._closed = False
        try:
            self._migrate()
            self.reconcile()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give up this writer's pending snapshots (they can no longer be committed) and close the database."""
        if self._closed:
            return
        self._closed = True
        if self._writer_lock is None:  # another thread's connection of a writer: the writer closes itself
            self._db.close()
            return
        try:
            with self._transaction() as db:
                pending = db.execute(
                    "SELECT conversation_id, file FROM pending_snapshots WHERE writer = ?", (self.writer,)
                ).fetchall()
                db.execute("DELETE FROM pending_snapshots WHERE writer = ?", (self.writer,))
            for conversation_id, file in pending:
                (self.snapshot_root / conversation_id / file).unlink(missing_ok=True)
        except StorageError:
            pass  # a database that cannot be written now: the next reconcile removes them
        finally:
            self._db.close()
            self._writer_lock.release()

    def connection_for_thread(self) -> Storage:
        """This writer on a connection of its own, for the thread that calls this (an SQLite connection
        belongs to the thread that opened it). Same writer id: it commits and discards the snapshots
        this Storage handed out. Closing it closes only its connection."""
        other = object.__new__(Storage)
        other.data_dir, other.snapshot_root = self.data_dir, self.snapshot_root
        other.writers_folder, other.database_path = self.writers_folder, self.database_path
        other._db = other._connect()
        other._writer_lock, other.writer, other._closed = None, self.writer, False
        return other

    # ----- database plumbing

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.database_path, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as error:
            raise StorageError(f"cannot open the chat database {self.database_path}: {error}") from error
        return db

    @contextmanager
    def _transaction(self, write: bool = True, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: ``write`` takes the write lock at once (compare-and-set), else a consistent read.

        ``durable=False``: the commit is not fsynced. Every process sees it at once; only a power
        loss before the next fsynced commit (which syncs it too) can undo it.
        """
        try:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")
        except (sqlite3.Error, OverflowError) as error:
            raise StorageError(f"{self.database_path}: {error}") from error

    @property
    def schema_version(self) -> int:
        """The applied migration count (``PRAGMA user_version``)."""
        with self._transaction(write=False) as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        with self._transaction() as db:  # one process migrates; the others wait, then find it done
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StorageError(
                    f"{self.database_path} has schema version {version}, this rxt-chat knows up to "
                    f"{len(MIGRATIONS)}; it was written by a newer version"
                )
            for number in range(version, len(MIGRATIONS)):
                for statement in _statements(MIGRATIONS[number]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")

    def _row(self, db: sqlite3.Connection, conversation_id: object) -> sqlite3.Row:
        conversation_id = self._checked_id(conversation_id)
        row = db.execute(
            "SELECT * FROM conversations WHERE id = ? AND deleted_at IS NULL", (conversation_id,)
        ).fetchone()
        if row is None:
            raise StorageError(f"no conversation with id {conversation_id!r} in {self.database_path}")
        return row

    def _checked_id(self, conversation_id: object) -> str:
        if not isinstance(conversation_id, str) or not _CONVERSATION_ID.fullmatch(conversation_id):
            raise StorageError(f"no conversation with id {_shown(conversation_id)} in {self.database_path}")
        return conversation_id

    # ----- snapshots

    def snapshot_path(self, conversation_id: str, turn: int) -> Path:
        """The snapshot file of a committed ``turn`` (turn 0 has none: it is the initial STM).

        For a turn not committed this is the single-writer name ``<turn>.safetensors`` of schema 1;
        writers that may share the data dir write to :meth:`new_snapshot_path` instead.
        """
        turn = _turn(turn)
        with self._transaction(write=False) as db:
            self._row(db, conversation_id)
            row = db.execute(
                "SELECT file FROM snapshots WHERE conversation_id = ? AND turn = ?", (conversation_id, turn)
            ).fetchone()
        return self.snapshot_root / conversation_id / (row[0] if row else f"{turn}{SNAPSHOT_SUFFIX}")

    def committed_snapshots(self, conversation_id: str) -> tuple[Conversation, list[Path]]:
        """A conversation and the snapshot files of its turns 1..turn_count, read together."""
        with self._transaction(write=False) as db:
            conversation = _conversation(self._row(db, conversation_id))
            files = db.execute(
                "SELECT file FROM snapshots WHERE conversation_id = ? AND turn <= ? ORDER BY turn",
                (conversation_id, conversation.turn_count),
            ).fetchall()
        return conversation, [self.snapshot_root / conversation_id / file for (file,) in files]

    def new_snapshot_path(self, conversation_id: str, turn: int) -> Path:
        """A new file for the STM after ``turn`` (not committed yet), pending for this writer.

        The name is this writer's alone, and no process removes the file while this writer lives
        (or until :meth:`commit_turn` makes it the turn's snapshot or :meth:`discard_snapshot` drops it).
        The claim is not fsynced: a power loss that undoes it also ends this writer, whose claims
        lapse then anyway (the commit that takes the file is fsynced, and the claim with it).
        """
        turn = _turn(turn)
        file = f"{turn}.{uuid.uuid4().hex[:16]}{SNAPSHOT_SUFFIX}"
        with self._transaction(durable=False) as db:
            conversation = _conversation(self._row(db, conversation_id))
            if turn <= conversation.turn_count:
                raise StorageError(f"turn {turn} of conversation {conversation_id} is committed already")
            db.execute(
                "INSERT INTO pending_snapshots (conversation_id, file, turn, writer, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (conversation_id, file, turn, self.writer, _now()),
            )
        folder = self.snapshot_root / conversation_id
        folder.mkdir(exist_ok=True)
        return folder / file

    def discard_snapshot(self, snapshot: Path) -> None:
        """Remove a snapshot :meth:`new_snapshot_path` handed to this writer and that was not committed.

        Anything else (a committed snapshot, another writer's file) is left alone.
        """
        snapshot = Path(snapshot)
        conversation_id, file = snapshot.parent.name, snapshot.name
        with self._transaction() as db:
            deleted = db.execute(
                "DELETE FROM pending_snapshots WHERE conversation_id = ? AND file = ? AND writer = ?",
                (conversation_id, file, self.writer),
            ).rowcount
            committed = db.execute(
                "SELECT 1 FROM snapshots WHERE conversation_id = ? AND file = ?", (conversation_id, file)
            ).fetchone()
        if deleted and not committed:
            (self.snapshot_root / conversation_id / file).unlink(missing_ok=True)

    def reconcile(self) -> list[Path]:
        """Remove the files no committed turn refers to and no live writer can still commit; returns them.

        Those are the snapshots of turns a killed process had not committed, the temp files of its
        interrupted saves, folders of deleted conversations, and the pending records and lock files of
        dead writers. The files of live writers (this one and other processes) are kept.
        """
        listing = _listing(self.snapshot_root)
        with self._transaction(write=False) as db:  # read after listing: a listed file's record is visible
            conversations = {row[0] for row in db.execute("SELECT id FROM conversations")}
            committed = {(row[0], row[1]) for row in db.execute("SELECT conversation_id, file FROM snapshots")}
            pending = [tuple(row) for row in db.execute("SELECT conversation_id, file, writer FROM pending_snapshots")]
        live = {writer: self._writer_lock.is_alive(writer) for writer in {writer for _, _, writer in pending}}
        claimed = {(conversation_id, file) for conversation_id, file, writer in pending if live[writer]}
        dead = [writer for writer, alive in live.items() if not alive]
        if dead:
            with self._transaction() as db:
                db.executemany("DELETE FROM pending_snapshots WHERE writer = ?", [(writer,) for writer in dead])
        removed: list[Path] = []
        for entry, files in listing.items():
            # a folder of no conversation and no live claim: a deleted conversation's, or a fork's
            # that was never committed (a fork records its claims before it creates its folder)
            if files is None or (entry.name not in conversations and all(c != entry.name for c, _ in claimed)):
                removed.append(_remove(entry))
                continue
            removed.extend(remove_temp_files(entry))
            for path in files:
                kept = (entry.name, path.name) in committed or (entry.name, path.name) in claimed
                if not kept and temp_file_target(path.name) is None:
                    removed.append(_remove(path))
        self._writer_lock.remove_dead()
        self.purge_deleted(DELETED_KEPT_SECONDS)
        return removed

    # ----- conversations

    def create_conversation(self, title: str, model_fingerprint: str) -> Conversation:
        """Add an empty conversation bound to ``model_fingerprint``."""
        title, model_fingerprint = _text(title, "title"), _text(model_fingerprint, "model fingerprint")
        conversation_id = uuid.uuid4().hex
        now = _now()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO conversations (id, title, model_fingerprint, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (conversation_id, title, model_fingerprint, now, now),
            )
            return _conversation(self._row(db, conversation_id))

    def conversation(self, conversation_id: str) -> Conversation:
        """The conversation with this id; raises StorageError if there is none."""
        with self._transaction(write=False) as db:
            return _conversation(self._row(db, conversation_id))

    def conversations(self) -> list[Conversation]:
        """All conversations, most recently updated first."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT * FROM conversations WHERE deleted_at IS NULL ORDER BY updated_at DESC, rowid DESC"
            ).fetchall()
        return [_conversation(row) for row in rows]

    def messages(self, conversation_id: str) -> list[Message]:
        """The transcript of a conversation in order (user before assistant within a turn)."""
        conversation_id = self._checked_id(conversation_id)
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY turn, role DESC", (conversation_id,)
            ).fetchall()
        return [_message(row) for row in rows]

    def rename(self, conversation_id: str, title: str) -> Conversation:
        """Give a conversation a new title."""
        title = _text(title, "title")
        with self._transaction() as db:
            self._row(db, conversation_id)
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))
            return _conversation(self._row(db, conversation_id))

    def commit_turn(
        self,
        conversation_id: str,
        turn: int,
        query: str,
        answer: str,
        stats: TurnStats,
        snapshot: Path | None = None,
        revision: int | None = None,
    ) -> Conversation:
        """Record turn ``turn`` (query, answer, figures, snapshot) after its STM snapshot was written.

        One transaction compares and sets: ``turn`` must be the conversation's next turn and, when
        ``revision`` is given, the conversation must still be at that revision (the one the turn's
        memory was built on); otherwise TurnConflictError, and nothing is recorded.

        Args:
            snapshot: the file from :meth:`new_snapshot_path` holding the STM after ``turn``
                (default: ``<turn>.safetensors``, for a single writer).
            revision: the conversation's ``revision`` the turn continues.

        Raises:
            StorageError: the snapshot file is missing, the conversation is unknown, or a text or
                figure cannot be stored (TurnConflictError: see above).
        """
        record = self._checked_record(TurnRecord(conversation_id, turn, query, answer, stats, snapshot, revision))
        with self._transaction() as db:
            return self._record_turn(db, record)

    def commit_turns(self, records: list[TurnRecord]) -> list[Conversation | StorageError]:
        """Commit several turns in one transaction (one fsync), each as :meth:`commit_turn` would.

        A turn that cannot be committed (TurnConflictError, a missing snapshot, ...) is left out and
        its error is returned in its place; the others are committed. If the transaction itself fails,
        none is and every place holds that error.
        """
        results: list[Conversation | StorageError | None] = [None] * len(records)
        checked: list[tuple[int, TurnRecord]] = []
        for index, record in enumerate(records):
            try:
                checked.append((index, self._checked_record(record)))
            except StorageError as error:
                results[index] = error
        try:
            with self._transaction() as db:
                for index, record in checked:
                    db.execute("SAVEPOINT turn")
                    try:
                        results[index] = self._record_turn(db, record)
                    except StorageError as error:
                        db.execute("ROLLBACK TO turn")
                        results[index] = error
                    db.execute("RELEASE turn")
        except StorageError as error:
            for index, _ in checked:
                results[index] = error
        return results

    def _checked_record(self, record: TurnRecord) -> TurnRecord:
        """``record`` with its texts, figures and snapshot checked (the snapshot's default filled in)."""
        turn, query, answer = _turn(record.turn), _text(record.query, "query"), _text(record.answer, "answer")
        _stats_row(record.stats)
        folder = self.snapshot_root / self._checked_id(record.conversation_id)
        snapshot = Path(record.snapshot) if record.snapshot is not None else folder / f"{turn}{SNAPSHOT_SUFFIX}"
        if snapshot.parent != folder:
            raise StorageError(f"snapshot {snapshot} of conversation {record.conversation_id} is not in {folder}")
        if not snapshot.is_file():
            raise StorageError(
                f"turn {turn} of {record.conversation_id} has no STM snapshot at {snapshot}; write it first"
            )
        return replace(record, turn=turn, query=query, answer=answer, snapshot=snapshot)

    def _record_turn(self, db: sqlite3.Connection, record: TurnRecord) -> Conversation:
        """Compare and set (see :meth:`commit_turn`), then record a checked turn, in ``db``'s transaction."""
        conversation_id, turn, revision, snapshot = (
            record.conversation_id,
            record.turn,
            record.revision,
            record.snapshot,
        )
        figures, now = _stats_row(record.stats), _now()
        current = _conversation(self._row(db, conversation_id))
        if turn != current.turn_count + 1:
            raise TurnConflictError(
                f"conversation {conversation_id} is at turn {current.turn_count}; cannot commit turn {turn}"
            )
        if revision is not None and revision != current.revision:
            raise TurnConflictError(
                f"conversation {conversation_id} changed since turn {turn} was started "
                f"(revision {current.revision}, the turn continues revision {revision}); it was not committed"
            )
        db.execute(
            "INSERT INTO messages (conversation_id, turn, role, text, created_at) VALUES (?, ?, 'user', ?, ?)",
            (conversation_id, turn, record.query, now),
        )
        db.execute(
            "INSERT INTO messages (conversation_id, turn, role, text, created_at, tokens, prompt_seconds,"
            " ttft_seconds, tokens_per_second, memory_update_seconds, stopped, memory_change)"
            " VALUES (?, ?, 'assistant', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (conversation_id, turn, record.answer, now, *figures),
        )
        db.execute(
            "INSERT INTO snapshots (conversation_id, turn, file) VALUES (?, ?, ?)",
            (conversation_id, turn, snapshot.name),
        )
        db.execute(
            "DELETE FROM pending_snapshots WHERE conversation_id = ? AND file = ?", (conversation_id, snapshot.name)
        )
        db.execute(
            "UPDATE conversations SET turn_count = ?, revision = revision + 1, updated_at = ? WHERE id = ?",
            (turn, now, conversation_id),
        )
        return _conversation(self._row(db, conversation_id))

    def rewind_to(self, conversation_id: str, turn: int) -> Conversation:
        """Drop every turn after ``turn`` (messages and snapshot records, then their files)."""
        return self._rewind(conversation_id, turn, keep=False)[0]

    def rewind_keeping(self, conversation_id: str, turn: int) -> tuple[Conversation, list[RewoundTurn]]:
        """Drop every turn after ``turn`` but keep them to be committed again (redo).

        Their snapshot files become pending for this writer (kept while it lives, as a turn in
        flight is); :meth:`commit_turn` takes them back, :meth:`discard_snapshot` drops them.
        """
        return self._rewind(conversation_id, turn, keep=True)

    def _rewind(self, conversation_id: str, turn: int, keep: bool) -> tuple[Conversation, list[RewoundTurn]]:
        turn = _turn(turn)
        with self._transaction() as db:
            current = _conversation(self._row(db, conversation_id)).turn_count
            if turn > current:
                raise StorageError(f"cannot rewind conversation {conversation_id} at turn {current} to turn {turn}")
            dropped = db.execute(
                "SELECT turn, file FROM snapshots WHERE conversation_id = ? AND turn > ? ORDER BY turn",
                (conversation_id, turn),
            ).fetchall()
            kept: list[RewoundTurn] = []
            if keep:
                rows = db.execute(
                    "SELECT * FROM messages WHERE conversation_id = ? AND turn > ? ORDER BY turn, role DESC",
                    (conversation_id, turn),
                ).fetchall()
                messages = [_message(row) for row in rows]
                files = dict(tuple(row) for row in dropped)
                kept = [
                    RewoundTurn(
                        user.turn,
                        user.text,
                        answer.text,
                        answer.stats,
                        self.snapshot_root / conversation_id / files[user.turn],
                    )
                    for user, answer in zip(messages[::2], messages[1::2], strict=True)
                    if answer.stats is not None and user.turn in files
                ]
                db.executemany(
                    "INSERT INTO pending_snapshots (conversation_id, file, turn, writer, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(conversation_id, rewound.snapshot.name, rewound.turn, self.writer, _now()) for rewound in kept],
                )
            if turn < current:
                db.execute("DELETE FROM messages WHERE conversation_id = ? AND turn > ?", (conversation_id, turn))
                db.execute("DELETE FROM snapshots WHERE conversation_id = ? AND turn > ?", (conversation_id, turn))
                db.execute(
                    "UPDATE conversations SET turn_count = ?, revision = revision + 1, updated_at = ? WHERE id = ?",
                    (turn, _now(), conversation_id),
                )
            conversation = _conversation(self._row(db, conversation_id))
        kept_files = {rewound.snapshot.name for rewound in kept}
        for _, file in dropped:
            if file not in kept_files:
                (self.snapshot_root / conversation_id / file).unlink(missing_ok=True)
        return conversation, kept

    def rewind(self, conversation_id: str) -> Conversation:
        """Undo the last turn."""
        turn_count = self.conversation(conversation_id).turn_count
        if turn_count == 0:
            raise StorageError(f"cannot rewind conversation {conversation_id}: it has no turns")
        return self.rewind_to(conversation_id, turn_count - 1)

    def fork(self, conversation_id: str, turn: int, title: str | None = None) -> Conversation:
        """A new conversation holding turns 1..``turn`` of another one, with their snapshots.

        Snapshot files are immutable once written, so they are hard-linked (copied where the file
        system cannot link) under names pending for this writer, then the new conversation is
        committed, if turns 1..``turn`` of the source are still the same (else StorageError).
        """
        turn = _turn(turn)
        title = None if title is None else _text(title, "title")
        with self._transaction(write=False) as db:
            source = _conversation(self._row(db, conversation_id))
            if turn > source.turn_count:
                raise StorageError(
                    f"conversation {conversation_id} has turns 0..{source.turn_count}; cannot fork at {turn}"
                )
            sources = self._snapshot_rows(db, conversation_id, turn)
        if [linked_turn for linked_turn, _ in sources] != list(range(1, turn + 1)):
            raise StorageError(f"conversation {conversation_id} has no snapshot record for some of turns 1..{turn}")
        fork_id = uuid.uuid4().hex
        files = [f"{linked_turn}.{uuid.uuid4().hex[:16]}{SNAPSHOT_SUFFIX}" for linked_turn, _ in sources]
        now = _now()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO pending_snapshots (conversation_id, file, turn, writer, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (fork_id, file, linked_turn, self.writer, now)
                    for (linked_turn, _), file in zip(sources, files, strict=True)
                ],
            )
        try:
            for (_, source_file), file in zip(sources, files, strict=True):
                source_path = self.snapshot_root / conversation_id / source_file
                _link_or_copy(source_path, self.snapshot_root / fork_id / file)
            with self._transaction() as db:
                self._row(db, conversation_id)
                if self._snapshot_rows(db, conversation_id, turn) != sources:
                    raise StorageError(f"cannot fork: conversation {conversation_id} was rewound meanwhile")
                db.execute(
                    "INSERT INTO conversations (id, title, model_fingerprint, created_at, updated_at, turn_count,"
                    " forked_from, forked_at_turn) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        fork_id,
                        title or f"{source.title} (fork @{turn})",
                        source.model_fingerprint,
                        now,
                        now,
                        turn,
                        conversation_id,
                        turn,
                    ),
                )
                db.execute(
                    "INSERT INTO messages (conversation_id, turn, role, text, created_at, tokens, prompt_seconds,"
                    " ttft_seconds, tokens_per_second, memory_update_seconds, stopped, memory_change)"
                    " SELECT ?, turn, role, text, created_at, tokens, prompt_seconds, ttft_seconds,"
                    " tokens_per_second, memory_update_seconds, stopped, memory_change FROM messages"
                    " WHERE conversation_id = ? AND turn <= ?",
                    (fork_id, conversation_id, turn),
                )
                db.executemany(
                    "INSERT INTO snapshots (conversation_id, turn, file) VALUES (?, ?, ?)",
                    [(fork_id, linked_turn, file) for (linked_turn, _), file in zip(sources, files, strict=True)],
                )
                db.execute("DELETE FROM pending_snapshots WHERE conversation_id = ?", (fork_id,))
                return _conversation(self._row(db, fork_id))
        except BaseException:
            for file in files:
                self.discard_snapshot(self.snapshot_root / fork_id / file)
            shutil.rmtree(self.snapshot_root / fork_id, ignore_errors=True)
            raise

    @staticmethod
    def _snapshot_rows(db: sqlite3.Connection, conversation_id: str, turn: int) -> list[tuple[int, str]]:
        """The (turn, file) records of turns 1..``turn``."""
        rows = db.execute(
            "SELECT turn, file FROM snapshots WHERE conversation_id = ? AND turn <= ? ORDER BY turn",
            (conversation_id, turn),
        )
        return [(row[0], row[1]) for row in rows]

    def delete(self, conversation_id: str) -> None:
        """Remove a conversation, its messages and its snapshots (nothing if there is no such conversation)."""
        conversation_id = self._checked_id(conversation_id)
        with self._transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        shutil.rmtree(self.snapshot_root / conversation_id, ignore_errors=True)

    def mark_deleted(self, conversation_id: str) -> None:
        """Hide a conversation as deleted, for now: :meth:`restore` brings it back, :meth:`purge_deleted`
        (or the next open, :data:`DELETED_KEPT_SECONDS` later) makes it final."""
        with self._transaction() as db:
            self._row(db, conversation_id)
            db.execute("UPDATE conversations SET deleted_at = ? WHERE id = ?", (_now(), conversation_id))

    def restore(self, conversation_id: str) -> Conversation:
        """Bring back a conversation hidden by :meth:`mark_deleted` (StorageError once it is purged)."""
        conversation_id = self._checked_id(conversation_id)
        with self._transaction() as db:
            db.execute("UPDATE conversations SET deleted_at = NULL WHERE id = ?", (conversation_id,))
            return _conversation(self._row(db, conversation_id))

    def purge_deleted(self, older_than_seconds: float = 0.0, conversation_id: str | None = None) -> list[str]:
        """Delete for good the conversations marked deleted ``older_than_seconds`` ago or earlier
        (only ``conversation_id``, when given); returns their ids."""
        cutoff = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() - older_than_seconds, timezone.utc)
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id FROM conversations WHERE deleted_at IS NOT NULL AND deleted_at <= ?"
                " AND id = coalesce(?, id)",
                (cutoff.isoformat(timespec="microseconds"), conversation_id),
            ).fetchall()
            purged = [row[0] for row in rows]
            db.executemany("DELETE FROM conversations WHERE id = ?", [(purged_id,) for purged_id in purged])
        for purged_id in purged:
            shutil.rmtree(self.snapshot_root / purged_id, ignore_errors=True)
        return purged

    def settings(self, conversation_id: str) -> dict:
        """A conversation's settings (what the front end saved with :meth:`save_settings`; {} if none)."""
        with self._transaction(write=False) as db:
            return json.loads(self._row(db, conversation_id)["settings"])

    def save_settings(self, conversation_id: str, settings: dict) -> None:
        """Store a conversation's settings (a JSON object)."""
        try:
            text = json.dumps(settings, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise StorageError(f"conversation settings must be a JSON object of plain values: {error}") from None
        with self._transaction() as db:
            self._row(db, conversation_id)
            db.execute("UPDATE conversations SET settings = ? WHERE id = ?", (text, conversation_id))

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        """Messages of all conversations (not those deleted) holding every word of ``text`` (a word
        may be the start of a longer one), best matches first."""
        words = re.findall(r"\w+", _text(text, "search text"))
        if not words:
            return []
        match = " ".join(f'"{word}"*' for word in words)
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT messages.conversation_id, conversations.title, messages.turn, messages.role,"
                " snippet(message_search, 0, '', '', '…', 10)"
                " FROM message_search JOIN messages ON messages.id = message_search.rowid"
                " JOIN conversations ON conversations.id = messages.conversation_id"
                " WHERE message_search MATCH ? AND conversations.deleted_at IS NULL"
                " ORDER BY rank LIMIT ?",
                (match, limit),
            ).fetchall()
        return [SearchHit(*row) for row in rows]


def _listing(root: Path) -> dict[Path, list[Path] | None]:
    """The entries of ``root`` with the files of each folder (None for a file); folders removed meanwhile
    (by another process deleting a conversation) are left out."""
    listing: dict[Path, list[Path] | None] = {}
    for entry in root.iterdir():
        try:
            listing[entry] = list(entry.iterdir()) if entry.is_dir() else None
        except FileNotFoundError:
            continue
    return listing


def _remove(path: Path) -> Path:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return path


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` as ``target`` (a name pending for the caller), or copy it and fsync the copy."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
            with open(target, "rb") as handle:
                os.fsync(handle.fileno())
    except OSError as error:
        raise StorageError(
            f"cannot fork: STM snapshot {source} cannot be linked or copied ({error.strerror})"
        ) from None
