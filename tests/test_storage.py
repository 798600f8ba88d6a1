"""The chat's storage: schema migrations, turn commits, rewind, fork, delete, crash reconcile."""

import sqlite3

import pytest
from rxt_app.storage import MIGRATIONS, Storage, StorageError, TurnStats

STATS = TurnStats(
    tokens=7,
    prompt_seconds=0.01,
    ttft_seconds=0.02,
    tokens_per_second=120.5,
    memory_update_seconds=0.03,
    stopped=False,
    memory_change=(0.5, 0.25),
)


def write_snapshot(storage: Storage, conversation_id: str, turn: int) -> None:
    path = storage.snapshot_path(conversation_id, turn)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"stm {conversation_id} {turn}".encode())


def add_turns(storage: Storage, conversation_id: str, count: int) -> None:
    start = storage.conversation(conversation_id).turn_count
    for turn in range(start + 1, start + count + 1):
        write_snapshot(storage, conversation_id, turn)
        storage.commit_turn(conversation_id, turn, f"query {turn}", f"answer {turn}", STATS)


def test_wal_journal_and_migration_version(tmp_path):
    storage = Storage(tmp_path)
    assert storage.schema_version == len(MIGRATIONS)
    storage.close()
    database = sqlite3.connect(storage.database_path)
    assert database.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # kept in the file
    assert database.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    database.close()
    assert Storage(tmp_path).schema_version == len(MIGRATIONS)


def test_newer_schema_is_refused(tmp_path):
    Storage(tmp_path).close()
    db = sqlite3.connect(tmp_path / "chat.sqlite3")
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StorageError, match="newer version"):
        Storage(tmp_path)


def test_commit_turns_round_trip(tmp_path):
    storage = Storage(tmp_path)
    conversation = storage.create_conversation("first", "fp-a")
    add_turns(storage, conversation.id, 2)
    storage.close()

    reopened = Storage(tmp_path)
    restored = reopened.conversation(conversation.id)
    assert restored.turn_count == 2
    assert restored.model_fingerprint == "fp-a"
    messages = reopened.messages(conversation.id)
    assert [(m.turn, m.role, m.text) for m in messages] == [
        (1, "user", "query 1"),
        (1, "assistant", "answer 1"),
        (2, "user", "query 2"),
        (2, "assistant", "answer 2"),
    ]
    assert messages[1].stats == STATS
    assert messages[0].stats is None


def test_commit_needs_snapshot_first_and_the_next_turn(tmp_path):
    storage = Storage(tmp_path)
    conversation = storage.create_conversation("c", "fp")
    with pytest.raises(StorageError, match="no STM snapshot"):
        storage.commit_turn(conversation.id, 1, "q", "a", STATS)
    write_snapshot(storage, conversation.id, 2)
    with pytest.raises(StorageError, match="cannot commit turn 2"):
        storage.commit_turn(conversation.id, 2, "q", "a", STATS)
    assert storage.messages(conversation.id) == []
    assert storage.conversation(conversation.id).turn_count == 0


def test_reconcile_drops_uncommitted_snapshots(tmp_path):
    storage = Storage(tmp_path)
    conversation = storage.create_conversation("c", "fp")
    add_turns(storage, conversation.id, 1)
    # a crash after the snapshot of turn 2 was written but before its commit
    write_snapshot(storage, conversation.id, 2)
    half_written = storage.snapshot_path(conversation.id, 3).with_suffix(".tmp")
    half_written.write_bytes(b"partial")
    orphan = storage.snapshot_path("gone", 1)
    orphan.parent.mkdir()
    orphan.write_bytes(b"x")
    storage.close()

    reopened = Storage(tmp_path)
    assert reopened.snapshot_path(conversation.id, 1).is_file()
    assert not reopened.snapshot_path(conversation.id, 2).exists()
    assert not half_written.exists()
    assert not orphan.parent.exists()
    assert reopened.conversation(conversation.id).turn_count == 1


def test_rewind_removes_last_turn_and_snapshot(tmp_path):
    storage = Storage(tmp_path)
    conversation = storage.create_conversation("c", "fp")
    add_turns(storage, conversation.id, 3)
    rewound = storage.rewind(conversation.id)
    assert rewound.turn_count == 2
    assert [m.turn for m in storage.messages(conversation.id)] == [1, 1, 2, 2]
    assert not storage.snapshot_path(conversation.id, 3).exists()
    assert storage.snapshot_path(conversation.id, 2).is_file()
    assert storage.rewind_to(conversation.id, 0).turn_count == 0
    assert storage.messages(conversation.id) == []
    with pytest.raises(StorageError, match="cannot rewind"):
        storage.rewind(conversation.id)


def test_fork_copies_turns_and_snapshots(tmp_path):
    storage = Storage(tmp_path)
    source = storage.create_conversation("source", "fp")
    add_turns(storage, source.id, 3)
    fork = storage.fork(source.id, 2)
    assert fork.turn_count == 2
    assert fork.forked_from == source.id and fork.forked_at_turn == 2
    assert fork.title == "source (fork @2)"
    assert [(m.turn, m.text) for m in storage.messages(fork.id)] == [
        (1, "query 1"),
        (1, "answer 1"),
        (2, "query 2"),
        (2, "answer 2"),
    ]
    for turn in (1, 2):
        assert storage.snapshot_path(fork.id, turn).read_bytes() == storage.snapshot_path(source.id, turn).read_bytes()
    assert not storage.snapshot_path(fork.id, 3).exists()
    # the fork lives on independently: new turns, and the source's deletion
    add_turns(storage, fork.id, 1)
    storage.delete(source.id)
    assert storage.conversation(fork.id).forked_from is None
    assert storage.snapshot_path(fork.id, 1).is_file()
    assert [m.text for m in storage.messages(fork.id)][-1] == "answer 3"


def test_delete_cascades(tmp_path):
    """Deleting the conversation row removes its messages: the foreign keys are enforced."""
    storage = Storage(tmp_path)
    kept = storage.create_conversation("kept", "fp")
    doomed = storage.create_conversation("doomed", "fp")
    add_turns(storage, doomed.id, 2)
    add_turns(storage, kept.id, 1)
    storage.delete(doomed.id)
    assert [c.id for c in storage.conversations()] == [kept.id]
    database = sqlite3.connect(storage.database_path)
    counts = dict(database.execute("SELECT conversation_id, COUNT(*) FROM messages GROUP BY conversation_id"))
    database.close()
    assert counts == {kept.id: 2}
    assert not (storage.snapshot_root / doomed.id).exists()
    with pytest.raises(StorageError, match="no conversation"):
        storage.conversation(doomed.id)


def test_rename_and_order(tmp_path):
    storage = Storage(tmp_path)
    older = storage.create_conversation("older", "fp")
    newer = storage.create_conversation("newer", "fp")
    assert [c.id for c in storage.conversations()][0] == newer.id
    add_turns(storage, older.id, 1)
    assert [c.id for c in storage.conversations()][0] == older.id
    assert storage.rename(newer.id, "renamed").title == "renamed"
