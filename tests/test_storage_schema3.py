"""Schema 3 of the chat's storage: a schema-2 data dir migrated in place, full-text search kept in
step by triggers (also with a second process's writes), soft delete with restore and purge,
per-conversation settings, and a rewind whose turns can be committed again (redo)."""

from __future__ import annotations

import sqlite3

import pytest
from rxt_app.storage import MIGRATIONS, Storage, StorageError

from tests.test_storage import STATS, add_turns


def schema_2_data_dir(folder) -> str:
    """A data dir as schema 2 wrote it: one conversation of two turns; returns its id."""
    db = sqlite3.connect(folder / "chat.sqlite3")
    db.executescript(MIGRATIONS[0] + MIGRATIONS[1] + "PRAGMA user_version = 2;")
    old_id = "b" * 32
    db.execute("INSERT INTO conversations VALUES (?, 'old chat', 'fp', 't', 't', 2, NULL, NULL, 2)", (old_id,))
    for turn in (1, 2):
        for role, text in (("user", f"my cat is called Tom{turn}"), ("assistant", f"nice cat {turn}")):
            db.execute(
                "INSERT INTO messages (conversation_id, turn, role, text, created_at, tokens)"
                " VALUES (?, ?, ?, ?, 't', 1)",
                (old_id, turn, role, text),
            )
        db.execute("INSERT INTO snapshots VALUES (?, ?, ?)", (old_id, turn, f"{turn}.k{turn}.safetensors"))
    db.commit()
    db.close()
    (folder / "stm" / old_id).mkdir(parents=True)
    for turn in (1, 2):
        (folder / "stm" / old_id / f"{turn}.k{turn}.safetensors").write_bytes(b"stm")
    return old_id


def test_a_schema_2_data_dir_is_migrated_and_its_messages_are_searchable(tmp_path):
    old_id = schema_2_data_dir(tmp_path)
    storage = Storage(tmp_path)
    assert storage.schema_version == len(MIGRATIONS) == 3
    conversation = storage.conversation(old_id)
    assert (conversation.title, conversation.turn_count, conversation.revision) == ("old chat", 2, 2)
    assert storage.settings(old_id) == {}
    hits = storage.search("tom2")
    assert [(hit.conversation_id, hit.title, hit.turn, hit.role, hit.snippet) for hit in hits] == [
        (old_id, "old chat", 2, "user", "my cat is called Tom2")
    ]
    assert sorted((hit.turn, hit.role) for hit in storage.search("cat")) == [
        (1, "assistant"),
        (1, "user"),
        (2, "assistant"),
        (2, "user"),
    ]
    storage.close()


def test_the_search_index_follows_commits_rewinds_forks_and_deletes_of_other_processes(tmp_path):
    here, elsewhere = Storage(tmp_path), Storage(tmp_path)
    conversation = here.create_conversation("pets", "fp")
    add_turns(elsewhere, conversation.id, 3)  # "query 1".."query 3", "answer 1".."answer 3"
    assert sorted((hit.turn, hit.role) for hit in here.search("query")) == [(1, "user"), (2, "user"), (3, "user")]
    elsewhere.rewind_to(conversation.id, 1)
    assert [(hit.turn, hit.role) for hit in here.search("answer")] == [(1, "assistant")]
    fork = here.fork(conversation.id, 1)
    assert sorted(hit.conversation_id for hit in elsewhere.search("answer 1")) == sorted([conversation.id, fork.id])
    elsewhere.delete(fork.id)
    assert [hit.conversation_id for hit in here.search("answer")] == [conversation.id]
    assert here.search("  ?! ") == [] and here.search('"unbalanced') == []
    database = sqlite3.connect(tmp_path / "chat.sqlite3")
    indexed = database.execute("SELECT count(*) FROM message_search").fetchone()[0]
    assert indexed == 2  # the integrity of the external-content index: one row per message
    database.execute("INSERT INTO message_search (message_search) VALUES ('integrity-check')")
    database.close()
    here.close()
    elsewhere.close()


def test_a_deleted_conversation_is_hidden_until_purged_and_can_be_restored(tmp_path):
    storage = Storage(tmp_path)
    kept, dropped = storage.create_conversation("kept", "fp"), storage.create_conversation("dropped", "fp")
    (snapshot,) = add_turns(storage, dropped.id, 1)
    storage.mark_deleted(dropped.id)
    assert [c.id for c in storage.conversations()] == [kept.id]
    assert storage.search("answer") == []
    with pytest.raises(StorageError, match="no conversation"):
        storage.conversation(dropped.id)
    assert storage.purge_deleted(older_than_seconds=3600) == []  # too recent
    Storage(tmp_path).close()  # another open within the grace time keeps it and its files
    assert snapshot.is_file()
    assert storage.restore(dropped.id).turn_count == 1
    assert [hit.turn for hit in storage.search("answer")] == [1]
    storage.mark_deleted(dropped.id)
    assert storage.purge_deleted() == [dropped.id]
    assert not snapshot.parent.exists()
    with pytest.raises(StorageError, match="no conversation"):
        storage.restore(dropped.id)
    storage.close()


def test_settings_are_saved_with_the_conversation(tmp_path):
    storage = Storage(tmp_path)
    conversation = storage.create_conversation("c", "fp")
    storage.save_settings(conversation.id, {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64})
    storage.close()
    storage = Storage(tmp_path)
    assert storage.settings(conversation.id) == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64}
    with pytest.raises(StorageError, match="JSON object"):
        storage.save_settings(conversation.id, {"temperature": float("nan")})
    storage.close()


def test_rewound_turns_are_kept_for_redo_while_the_writer_lives(tmp_path):
    storage = Storage(tmp_path)
    conversation = storage.create_conversation("c", "fp")
    paths = add_turns(storage, conversation.id, 3)
    rewound, kept = storage.rewind_keeping(conversation.id, 1)
    assert rewound.turn_count == 1
    assert [(turn.turn, turn.query, turn.answer, turn.snapshot) for turn in kept] == [
        (2, "query 2", "answer 2", paths[1]),
        (3, "query 3", "answer 3", paths[2]),
    ]
    Storage(tmp_path).close()  # another process's reconcile keeps the files of a live writer
    assert all(path.is_file() for path in paths)
    revision = rewound.revision
    for turn in kept:
        revision = storage.commit_turn(
            conversation.id, turn.turn, turn.query, turn.answer, turn.stats, turn.snapshot, revision
        ).revision
    assert storage.committed_snapshots(conversation.id)[1] == paths
    assert [m.text for m in storage.messages(conversation.id)][-2:] == ["query 3", "answer 3"]
    # kept but never committed again: closing the writer removes the files
    _, kept = storage.rewind_keeping(conversation.id, 2)
    storage.close()
    assert not paths[2].exists() and paths[1].is_file()
    assert kept[0].stats == STATS
