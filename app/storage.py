"""Conversations, messages and STM snapshots on disk.

Layout of a data dir::

    chat.sqlite3                        conversations + messages (WAL, foreign keys)
    stm/<conversation_id>/<turn>.safetensors   the STM after each turn

Crash safety comes from the order of writes: the STM snapshot of turn t is written atomically
first (by the inference worker, through ``rxt_mlx.stm``), then the messages and the new turn
count are committed in one transaction (:meth:`Storage.commit_turn`). On open, :meth:`Storage.reconcile`
removes snapshots that no committed turn refers to, so a kill at any moment loses at most the
turn in progress. Deletions run the other way round: commit first, then remove files.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import platformdirs

DATABASE_NAME = "chat.sqlite3"
SNAPSHOT_FOLDER = "stm"
SNAPSHOT_SUFFIX = ".safetensors"

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
)


def default_data_dir() -> Path:
    """Where conversations live unless the command line says otherwise: the platform's user data dir."""
    return Path(platformdirs.user_data_dir("rxt-mlx"))


class StorageError(RuntimeError):
    """The data dir cannot be used as asked (unknown conversation, wrong turn, newer schema)."""


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
class Conversation:
    """One row of the conversations table."""

    id: str
    title: str
    model_fingerprint: str
    created_at: str
    updated_at: str
    turn_count: int
    forked_from: str | None = None
    forked_at_turn: int | None = None


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


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(**{key: row[key] for key in row.keys()})


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


class Storage:
    """The chat's data dir: one SQLite database plus STM snapshot files.

    Use from one thread (the UI thread); the inference worker only writes snapshot files at
    the paths :meth:`snapshot_path` gives it.
    """

    def __init__(self, data_dir: str | os.PathLike[str]):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.snapshot_root = self.data_dir / SNAPSHOT_FOLDER
        self.snapshot_root.mkdir(exist_ok=True)
        self.database_path = self.data_dir / DATABASE_NAME
        self._db = sqlite3.connect(self.database_path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self.reconcile()

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        """The applied migration count (``PRAGMA user_version``)."""
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise StorageError(
                f"{self.database_path} has schema version {version}, this rxt-chat knows up to {len(MIGRATIONS)}; "
                "it was written by a newer version"
            )
        for number in range(version, len(MIGRATIONS)):
            self._db.executescript(f"BEGIN;\n{MIGRATIONS[number]}\nPRAGMA user_version = {number + 1};\nCOMMIT;")

    def snapshot_path(self, conversation_id: str, turn: int) -> Path:
        """Where the STM after ``turn`` of a conversation lives (turn 0 has no file: initial STM)."""
        return self.snapshot_root / conversation_id / f"{turn}{SNAPSHOT_SUFFIX}"

    def reconcile(self) -> list[Path]:
        """Remove snapshot files no committed turn refers to; returns the removed paths.

        A snapshot of a turn past the conversation's committed turn count is the trace of a turn
        interrupted between the snapshot write and the commit; a folder of an unknown
        conversation is left over from a delete; ``.tmp`` files are half-written snapshots.
        """
        turn_counts = {row[0]: row[1] for row in self._db.execute("SELECT id, turn_count FROM conversations")}
        removed: list[Path] = []
        for folder in self.snapshot_root.iterdir():
            if folder.name not in turn_counts:
                shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
                removed.append(folder)
                continue
            for path in folder.iterdir():
                turn = _snapshot_turn(path)
                if turn is None or turn > turn_counts[folder.name]:
                    path.unlink()
                    removed.append(path)
        return removed

    def create_conversation(self, title: str, model_fingerprint: str) -> Conversation:
        """Add an empty conversation bound to ``model_fingerprint``."""
        conversation_id = uuid.uuid4().hex
        now = _now()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO conversations (id, title, model_fingerprint, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (conversation_id, title, model_fingerprint, now, now),
            )
        return self.conversation(conversation_id)

    def conversation(self, conversation_id: str) -> Conversation:
        """The conversation with this id; raises StorageError if there is none."""
        row = self._db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise StorageError(f"no conversation with id {conversation_id!r} in {self.database_path}")
        return _conversation(row)

    def conversations(self) -> list[Conversation]:
        """All conversations, most recently updated first."""
        rows = self._db.execute("SELECT * FROM conversations ORDER BY updated_at DESC, rowid DESC")
        return [_conversation(row) for row in rows]

    def messages(self, conversation_id: str) -> list[Message]:
        """The transcript of a conversation in order (user before assistant within a turn)."""
        rows = self._db.execute(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY turn, role DESC", (conversation_id,)
        )
        return [_message(row) for row in rows]

    def rename(self, conversation_id: str, title: str) -> Conversation:
        """Give a conversation a new title."""
        with self._transaction() as db:
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))
        return self.conversation(conversation_id)

    def commit_turn(self, conversation_id: str, turn: int, query: str, answer: str, stats: TurnStats) -> Conversation:
        """Record turn ``turn`` (query, answer, figures) after its STM snapshot was written.

        Raises StorageError if the snapshot file is missing or ``turn`` is not the next turn.
        """
        snapshot = self.snapshot_path(conversation_id, turn)
        if not snapshot.is_file():
            raise StorageError(f"turn {turn} of {conversation_id} has no STM snapshot at {snapshot}; write it first")
        now = _now()
        with self._transaction() as db:
            current = self.conversation(conversation_id).turn_count
            if turn != current + 1:
                raise StorageError(f"conversation {conversation_id} is at turn {current}; cannot commit turn {turn}")
            db.execute(
                "INSERT INTO messages (conversation_id, turn, role, text, created_at) VALUES (?, ?, 'user', ?, ?)",
                (conversation_id, turn, query, now),
            )
            db.execute(
                "INSERT INTO messages (conversation_id, turn, role, text, created_at, tokens, prompt_seconds,"
                " ttft_seconds, tokens_per_second, memory_update_seconds, stopped, memory_change)"
                " VALUES (?, ?, 'assistant', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    turn,
                    answer,
                    now,
                    stats.tokens,
                    stats.prompt_seconds,
                    stats.ttft_seconds,
                    stats.tokens_per_second,
                    stats.memory_update_seconds,
                    int(stats.stopped),
                    json.dumps(list(stats.memory_change)),
                ),
            )
            db.execute(
                "UPDATE conversations SET turn_count = ?, updated_at = ? WHERE id = ?", (turn, now, conversation_id)
            )
        return self.conversation(conversation_id)

    def rewind_to(self, conversation_id: str, turn: int) -> Conversation:
        """Drop every turn after ``turn`` (messages, then snapshot files)."""
        current = self.conversation(conversation_id).turn_count
        if not 0 <= turn <= current:
            raise StorageError(f"cannot rewind conversation {conversation_id} at turn {current} to turn {turn}")
        with self._transaction() as db:
            db.execute("DELETE FROM messages WHERE conversation_id = ? AND turn > ?", (conversation_id, turn))
            db.execute(
                "UPDATE conversations SET turn_count = ?, updated_at = ? WHERE id = ?", (turn, _now(), conversation_id)
            )
        for dropped in range(turn + 1, current + 1):
            self.snapshot_path(conversation_id, dropped).unlink(missing_ok=True)
        return self.conversation(conversation_id)

    def rewind(self, conversation_id: str) -> Conversation:
        """Undo the last turn."""
        return self.rewind_to(conversation_id, self.conversation(conversation_id).turn_count - 1)

    def fork(self, conversation_id: str, turn: int, title: str | None = None) -> Conversation:
        """A new conversation holding turns 1..``turn`` of another one, with their snapshots.

        Snapshot files are immutable once written, so they are hard-linked (copied where the
        file system cannot link) before the new conversation is committed.
        """
        source = self.conversation(conversation_id)
        if not 0 <= turn <= source.turn_count:
            raise StorageError(
                f"conversation {conversation_id} has turns 0..{source.turn_count}; cannot fork at {turn}"
            )
        fork_id = uuid.uuid4().hex
        for linked_turn in range(1, turn + 1):
            _link_or_copy(self.snapshot_path(conversation_id, linked_turn), self.snapshot_path(fork_id, linked_turn))
        now = _now()
        with self._transaction() as db:
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
                " SELECT ?, turn, role, text, created_at, tokens, prompt_seconds, ttft_seconds, tokens_per_second,"
                " memory_update_seconds, stopped, memory_change FROM messages WHERE conversation_id = ? AND turn <= ?",
                (fork_id, conversation_id, turn),
            )
        return self.conversation(fork_id)

    def delete(self, conversation_id: str) -> None:
        """Remove a conversation, its messages and its snapshots."""
        with self._transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        shutil.rmtree(self.snapshot_root / conversation_id, ignore_errors=True)


def _snapshot_turn(path: Path) -> int | None:
    if path.suffix != SNAPSHOT_SUFFIX or not path.stem.isdigit():
        return None
    return int(path.stem)


def _link_or_copy(source: Path, target: Path) -> None:
    if not source.is_file():
        raise StorageError(f"cannot fork: STM snapshot {source} is missing")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        partial = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
