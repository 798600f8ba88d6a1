"""The system prompts of conversations that rxt-serve started with one, beside the chat database.

A system prompt is written into a conversation's memory before its first turn (docs/architecture.md
§One turn), so every snapshot from turn 1 on holds it; the text is kept here so that the memory of
turn 0 can be made again (a conversation reloaded before its first turn, rewound to turn 0) and so
that a client's history can be matched to the conversation it continues. ``serve.sqlite3`` in the
data dir; a row is written before the conversation's first turn and outlives nothing but rows of
conversations deleted by another process, which are ignored.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rxt_app.storage import BUSY_TIMEOUT_SECONDS, StorageError

DATABASE_NAME = "serve.sqlite3"


class SystemPrompts:
    """Conversation id → system prompt text, in ``<data_dir>/serve.sqlite3`` (use from one thread)."""

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / DATABASE_NAME
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS system_prompts (conversation_id TEXT PRIMARY KEY, text TEXT NOT NULL)"
            )
        except sqlite3.Error as error:
            raise StorageError(f"cannot open {self.path}: {error}") from error

    def close(self) -> None:
        self._db.close()

    def get(self, conversation_id: str) -> str | None:
        row = self._execute("SELECT text FROM system_prompts WHERE conversation_id = ?", (conversation_id,)).fetchone()
        return row[0] if row else None

    def all(self) -> dict[str, str]:
        return dict(self._execute("SELECT conversation_id, text FROM system_prompts").fetchall())

    def set(self, conversation_id: str, text: str) -> None:
        self._execute(
            "INSERT OR REPLACE INTO system_prompts (conversation_id, text) VALUES (?, ?)", (conversation_id, text)
        )

    def copy(self, source_id: str, target_id: str) -> None:
        """Give ``target_id`` (a fork) the system prompt of ``source_id``, if it has one."""
        text = self.get(source_id)
        if text is not None:
            self.set(target_id, text)

    def forget(self, conversation_id: str) -> None:
        self._execute("DELETE FROM system_prompts WHERE conversation_id = ?", (conversation_id,))

    def _execute(self, sql: str, parameters: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, parameters)
        except sqlite3.Error as error:
            raise StorageError(f"{self.path}: {error}") from error
