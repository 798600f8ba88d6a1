"""rxt-serve's storage thread: turns' claims and commits off the event loop, commits that wait
together in one transaction, and a failed commit reported as the turn's error with nothing stored."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest
from rxt_app.storage import Storage, StorageError, TurnConflictError, TurnRecord, TurnStats
from rxt_app.storage_thread import StorageThread

from tests.factories import tiny_config, write_model_folder
from tests.serve_helpers import LiveServer, assert_error
from tests.tokenizer_factories import write_bpe_tokenizer

STATS = TurnStats(3, 0.1, 0.1, 30.0, 0.2)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return write_model_folder(root / "a", tiny_config(), seed=0, tokenizer_writer=write_bpe_tokenizer)


def saved_turn(storage: Storage, conversation_id: str, turn: int = 1, revision: int | None = None) -> TurnRecord:
    """A turn whose snapshot is claimed and written, ready to commit."""
    snapshot = storage.new_snapshot_path(conversation_id, turn)
    snapshot.write_bytes(b"stm")
    return TurnRecord(conversation_id, turn, f"query {turn}", f"answer {turn}", STATS, snapshot, revision)


def test_commit_turns_is_one_transaction_that_leaves_out_a_conflicting_turn(tmp_path):
    storage = Storage(tmp_path)
    first, second, third = (storage.create_conversation("t", "fp") for _ in range(3))
    records = [
        saved_turn(storage, first.id, revision=first.revision),
        saved_turn(storage, second.id, revision=second.revision + 1),  # changed elsewhere meanwhile
        saved_turn(storage, third.id, revision=third.revision),
    ]
    transactions = []
    opened = storage._transaction
    storage._transaction = lambda *args, **kwargs: transactions.append(args) or opened(*args, **kwargs)
    results = storage.commit_turns(records)
    storage._transaction = opened
    assert len(transactions) == 1
    assert isinstance(results[1], TurnConflictError)
    assert results[0].turn_count == 1 and results[2].turn_count == 1
    assert [m.text for m in storage.messages(first.id)] == ["query 1", "answer 1"]
    assert storage.messages(second.id) == [] and storage.conversation(second.id).turn_count == 0
    assert storage.snapshot_path(third.id, 1) == records[2].snapshot
    storage.close()


def test_a_failed_transaction_commits_none_of_its_turns(tmp_path, monkeypatch):
    storage = Storage(tmp_path)
    conversations = [storage.create_conversation("t", "fp") for _ in range(2)]
    records = [saved_turn(storage, c.id, revision=c.revision) for c in conversations]

    def full_disk(db, record):
        db.execute(
            "INSERT INTO messages (conversation_id, turn, role, text, created_at) VALUES (?, 1, 'user', 'q', 'now')",
            (record.conversation_id,),
        )
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Storage, "_record_turn", lambda self, db, record: full_disk(db, record))
    results = storage.commit_turns(records)
    assert all(isinstance(result, StorageError) and "disk is full" in str(result) for result in results)
    monkeypatch.undo()
    assert all(storage.messages(c.id) == [] and storage.conversation(c.id).turn_count == 0 for c in conversations)
    storage.close()


def test_commits_waiting_together_are_made_in_one_transaction(tmp_path, monkeypatch):
    storage = Storage(tmp_path)
    conversations = [storage.create_conversation("t", "fp") for _ in range(4)]
    records = [saved_turn(storage, c.id, revision=c.revision) for c in conversations]
    groups, entered, release = [], threading.Event(), threading.Event()
    commit_turns = Storage.commit_turns

    def held_commit_turns(self, batch):
        groups.append(len(batch))
        entered.set()
        release.wait(10)
        return commit_turns(self, batch)

    monkeypatch.setattr(Storage, "commit_turns", held_commit_turns)

    async def commit_all():
        thread = StorageThread(storage, asyncio.get_running_loop())
        first = thread.commit(records[0])
        await asyncio.to_thread(entered.wait, 10)  # the thread is in the first commit; the others queue
        rest = [thread.commit(record) for record in records[1:]]
        release.set()
        results = await asyncio.gather(first, *rest)
        await asyncio.to_thread(thread.close)
        return results

    results = asyncio.run(commit_all())
    assert groups == [1, 3]
    assert [result.turn_count for result in results] == [1, 1, 1, 1]
    assert all(len(storage.messages(c.id)) == 2 for c in conversations)
    storage.close()


def test_the_event_loop_serves_while_a_commit_is_in_flight(model_folder, tmp_path, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    commit_turns = Storage.commit_turns

    def held_commit_turns(self, records):
        entered.set()
        release.wait(30)
        return commit_turns(self, records)

    monkeypatch.setattr(Storage, "commit_turns", held_commit_turns)
    with LiveServer(model_folder, tmp_path / "data") as server, server.client() as http:
        conversation_id = http.post("/api/conversations", json={}).json()["id"]
        posted = {}
        body = {"query": "My name is Ann.", "stream": False}
        poster = threading.Thread(
            target=lambda: posted.update(response=http.post(f"/api/conversations/{conversation_id}/turns", json=body))
        )
        poster.start()
        assert entered.wait(30)
        started = time.monotonic()
        assert http.get("/health").status_code == 200
        listed = http.get("/api/conversations").json()["data"]
        other = http.post("/api/conversations", json={"title": "meanwhile"}).json()
        assert time.monotonic() - started < 2
        assert [c["turn_count"] for c in listed] == [0] and other["turn_count"] == 0
        assert poster.is_alive()  # not acknowledged before the commit
        release.set()
        poster.join(30)
        assert posted["response"].status_code == 201, posted["response"].text
        assert http.get(f"/api/conversations/{conversation_id}").json()["turn_count"] == 1


def failing_write(self, db, record):
    raise sqlite3.OperationalError("disk I/O error")


def test_a_failed_commit_is_the_turns_error_and_nothing_of_it_is_stored(model_folder, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    with LiveServer(model_folder, data_dir) as server, server.client() as http:
        conversation_id = http.post("/api/conversations", json={}).json()["id"]
        monkeypatch.setattr(Storage, "_record_turn", failing_write)
        response = http.post(
            f"/api/conversations/{conversation_id}/turns", json={"query": "My name is Ann.", "stream": False}
        )
        error = assert_error(response, 500, code="turn_failed")
        assert "disk I/O error" in error["message"]
        monkeypatch.undo()
        assert http.get(f"/api/conversations/{conversation_id}").json()["turn_count"] == 0
        storage = Storage(data_dir)
        assert storage.messages(conversation_id) == []
        assert not list((storage.snapshot_root / conversation_id).glob("*.safetensors"))
        storage.close()
        response = http.post(
            f"/api/conversations/{conversation_id}/turns", json={"query": "My name is Ann.", "stream": False}
        )
        assert response.status_code == 201 and response.json()["turn"] == 1
