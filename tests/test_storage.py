"""The chat's storage: schema migrations, turn commits, rewind, fork, delete, crash reconcile; several
writers on one data dir (compare-and-set commits, snapshot names of their own, no removal of a live
writer's files); fuzzing of every input; a kill -9 campaign of two writer processes."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest
import rxt_app.storage as storage_module
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from rxt_app.storage import MIGRATIONS, Storage, StorageError, TurnConflictError, TurnStats

from rxt_mlx.stm import load_stm

STATS = TurnStats(
    tokens=7,
    prompt_seconds=0.01,
    ttft_seconds=0.02,
    tokens_per_second=120.5,
    memory_update_seconds=0.03,
    stopped=False,
    memory_change=(0.5, 0.25),
)


def write_snapshot(storage: Storage, conversation_id: str, turn: int) -> Path:
    path = storage.new_snapshot_path(conversation_id, turn)
    path.write_bytes(f"stm {conversation_id} {turn}".encode())
    return path


def add_turns(storage: Storage, conversation_id: str, count: int) -> list[Path]:
    start = storage.conversation(conversation_id).turn_count
    paths = []
    for turn in range(start + 1, start + count + 1):
        paths.append(write_snapshot(storage, conversation_id, turn))
        storage.commit_turn(conversation_id, turn, f"query {turn}", f"answer {turn}", STATS, snapshot=paths[-1])
    return paths


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def committed_files(storage: Storage) -> set[Path]:
    return {path for c in storage.conversations() for path in storage.committed_snapshots(c.id)[1]}


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


def test_schema_1_data_dir_is_migrated_in_place(tmp_path):
    """Rows and snapshot files of a data dir written before several writers were allowed."""
    db = sqlite3.connect(tmp_path / "chat.sqlite3")
    db.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    old_id = "a" * 32
    db.execute("INSERT INTO conversations VALUES (?, 'old', 'fp', 't', 't', 2, NULL, NULL)", (old_id,))
    for turn in (1, 2):
        for role in ("user", "assistant"):
            db.execute(
                "INSERT INTO messages (conversation_id, turn, role, text, created_at, tokens)"
                " VALUES (?, ?, ?, ?, 't', 1)",
                (old_id, turn, role, f"{role} {turn}"),
            )
    db.commit()
    db.close()
    folder = tmp_path / "stm" / old_id
    folder.mkdir(parents=True)
    for turn in (1, 2, 3):  # 3: written, never committed
        (folder / f"{turn}.safetensors").write_bytes(f"stm {turn}".encode())

    storage = Storage(tmp_path)
    assert storage.schema_version == len(MIGRATIONS)
    conversation, snapshots = storage.committed_snapshots(old_id)
    assert (conversation.turn_count, conversation.revision) == (2, 0)
    assert snapshots == [folder / "1.safetensors", folder / "2.safetensors"]
    assert sorted(path.name for path in folder.iterdir()) == ["1.safetensors", "2.safetensors"]
    (new,) = add_turns(storage, old_id, 1)
    assert new.name.startswith("3.") and new.name != "3.safetensors"
    fork = storage.fork(old_id, 2)
    assert [path.read_bytes() for path in storage.committed_snapshots(fork.id)[1]] == [b"stm 1", b"stm 2"]
    storage.rewind_to(old_id, 1)
    assert sorted(path.name for path in folder.iterdir()) == ["1.safetensors"]
    storage.close()


def test_commit_turns_round_trip(tmp_path):
    storage = Storage(tmp_path)
    conversation = storage.create_conversation("first", "fp-a")
    add_turns(storage, conversation.id, 2)
    storage.close()

    reopened = Storage(tmp_path)
    restored = reopened.conversation(conversation.id)
    assert restored.turn_count == 2 and restored.revision == 2
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
        storage.commit_turn(conversation.id, 1, "q", "a", STATS, snapshot=storage.new_snapshot_path(conversation.id, 1))
    second = write_snapshot(storage, conversation.id, 2)
    with pytest.raises(TurnConflictError, match="cannot commit turn 2"):
        storage.commit_turn(conversation.id, 2, "q", "a", STATS, snapshot=second)
    elsewhere = storage.snapshot_root / "elsewhere.safetensors"
    elsewhere.write_bytes(b"stm")
    with pytest.raises(StorageError, match="is not in"):
        storage.commit_turn(conversation.id, 1, "q", "a", STATS, snapshot=elsewhere)
    assert storage.messages(conversation.id) == []
    assert storage.conversation(conversation.id).turn_count == 0
    add_turns(storage, conversation.id, 1)
    with pytest.raises(StorageError, match="committed already"):
        storage.new_snapshot_path(conversation.id, 1)


def test_a_single_writer_may_still_use_the_turn_names_of_schema_1(tmp_path):
    storage = Storage(tmp_path)
    conversation = storage.create_conversation("c", "fp")
    legacy = storage.snapshot_path(conversation.id, 1)
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"stm")
    storage.commit_turn(conversation.id, 1, "q", "a", STATS)
    assert storage.snapshot_path(conversation.id, 1) == legacy and legacy.name == "1.safetensors"


def test_reconcile_removes_what_dead_writers_left_and_keeps_live_writers_files(tmp_path):
    storage = Storage(tmp_path)
    conversation = storage.create_conversation("c", "fp")
    (committed,) = add_turns(storage, conversation.id, 1)
    live = write_snapshot(storage, conversation.id, 2)  # this writer's turn in flight
    unclaimed = committed.with_name("7.safetensors")
    unclaimed.write_bytes(b"nobody's")
    stray_temp = committed.with_name(f".{committed.name}.x1y2z3.tmp")
    stray_temp.write_bytes(b"partial")
    orphan = storage.snapshot_root / ("b" * 32) / "1.safetensors"  # a deleted conversation's folder
    orphan.parent.mkdir()
    orphan.write_bytes(b"x")
    assert sorted(storage.reconcile()) == sorted([unclaimed, stray_temp, orphan.parent])
    assert files_under(storage.snapshot_root) == {committed, live}

    other = Storage(tmp_path)  # another process opening the data dir now keeps the live writer's file
    assert files_under(storage.snapshot_root) == {committed, live}
    storage.commit_turn(conversation.id, 2, "q", "a", STATS, snapshot=live)
    in_flight = write_snapshot(storage, conversation.id, 3)
    storage.close()  # a closed writer cannot commit: its pending file goes
    assert not in_flight.exists() and files_under(other.snapshot_root) == {committed, live}
    assert [path.name for path in other.writers_folder.iterdir()] == [f"{other.writer}.lock"]
    other.close()
    assert list((tmp_path / "writers").iterdir()) == []


KILLED_WRITER = """
import os, signal, sys
from rxt_app.storage import Storage

storage = Storage(sys.argv[1])
path = storage.new_snapshot_path(sys.argv[2], 2)
path.write_bytes(b"never committed")
print(path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writers_pending_snapshot_is_removed_by_the_next_open(tmp_path):
    storage = Storage(tmp_path)
    conversation = storage.create_conversation("c", "fp")
    (committed,) = add_turns(storage, conversation.id, 1)
    result = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path), conversation.id], capture_output=True, text=True
    )
    assert result.returncode == -9, result.stderr
    pending = Path(result.stdout.strip())
    assert pending.is_file() and len(list(storage.writers_folder.iterdir())) == 2
    assert storage.reconcile() == [pending]
    assert files_under(storage.snapshot_root) == {committed}
    assert [path.name for path in storage.writers_folder.iterdir()] == [f"{storage.writer}.lock"]
    database = sqlite3.connect(storage.database_path)
    assert database.execute("SELECT COUNT(*) FROM pending_snapshots").fetchone()[0] == 0
    database.close()


def test_two_writers_racing_for_a_turn_commit_one_and_keep_its_snapshot(tmp_path):
    """Issue 15: the loser of the race must not remove the winner's committed snapshot."""
    first, second = Storage(tmp_path), Storage(tmp_path)
    conversation = first.create_conversation("c", "fp")
    add_turns(first, conversation.id, 1)
    revision = first.conversation(conversation.id).revision
    mine, theirs = write_snapshot(first, conversation.id, 2), write_snapshot(second, conversation.id, 2)
    assert mine != theirs
    second.commit_turn(conversation.id, 2, "theirs", "b", STATS, snapshot=theirs, revision=revision)
    with pytest.raises(TurnConflictError, match="cannot commit turn 2"):
        first.commit_turn(conversation.id, 2, "mine", "a", STATS, snapshot=mine, revision=revision)
    first.discard_snapshot(mine)
    first.discard_snapshot(theirs)  # not first's: left alone
    assert not mine.exists() and theirs.read_bytes() == f"stm {conversation.id} 2".encode()
    assert first.snapshot_path(conversation.id, 2) == theirs
    assert [m.text for m in first.messages(conversation.id)][2] == "theirs"


def test_a_turn_built_before_a_rewind_elsewhere_is_not_committed(tmp_path):
    """Same turn number, another memory: the revision tells them apart."""
    first, second = Storage(tmp_path), Storage(tmp_path)
    conversation = first.create_conversation("c", "fp")
    add_turns(first, conversation.id, 1)
    revision = first.conversation(conversation.id).revision
    built_on_old_turn_1 = write_snapshot(first, conversation.id, 2)
    second.rewind_to(conversation.id, 0)
    add_turns(second, conversation.id, 1)
    assert second.conversation(conversation.id).turn_count == 1
    with pytest.raises(TurnConflictError, match="changed since turn 2 was started"):
        first.commit_turn(conversation.id, 2, "q", "a", STATS, snapshot=built_on_old_turn_1, revision=revision)
    assert first.conversation(conversation.id).turn_count == 1


def test_a_fork_of_turns_rewound_meanwhile_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    first, second = Storage(tmp_path), Storage(tmp_path)
    source = first.create_conversation("source", "fp")
    add_turns(first, source.id, 2)
    before = files_under(first.snapshot_root)
    link = storage_module._link_or_copy

    def link_then_rewind_elsewhere(source_path, target):
        link(source_path, target)
        if target.name.startswith("2."):  # every file linked: the source loses turn 2 before the commit
            second.rewind_to(source.id, 1)

    monkeypatch.setattr(storage_module, "_link_or_copy", link_then_rewind_elsewhere)
    with pytest.raises(StorageError, match="rewound meanwhile"):
        first.fork(source.id, 2)
    assert [c.id for c in first.conversations()] == [source.id]
    assert files_under(first.snapshot_root) == before - {path for path in before if path.name.startswith("2.")}


def test_rewind_removes_last_turn_and_snapshot(tmp_path):
    storage = Storage(tmp_path)
    conversation = storage.create_conversation("c", "fp")
    paths = add_turns(storage, conversation.id, 3)
    rewound = storage.rewind(conversation.id)
    assert rewound.turn_count == 2 and rewound.revision == 4
    assert [m.turn for m in storage.messages(conversation.id)] == [1, 1, 2, 2]
    assert files_under(storage.snapshot_root) == set(paths[:2])
    assert storage.rewind_to(conversation.id, 0).turn_count == 0
    assert storage.messages(conversation.id) == [] and files_under(storage.snapshot_root) == set()
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
    forked = storage.committed_snapshots(fork.id)[1]
    assert [path.read_bytes() for path in forked] == [
        path.read_bytes() for path in storage.committed_snapshots(source.id)[1][:2]
    ]
    assert len(files_under(storage.snapshot_root / fork.id)) == 2
    # the fork lives on independently: new turns, and the source's deletion
    add_turns(storage, fork.id, 1)
    storage.delete(source.id)
    assert storage.conversation(fork.id).forked_from is None
    assert all(path.is_file() for path in storage.committed_snapshots(fork.id)[1])
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
    assert database.execute("SELECT COUNT(*) FROM snapshots WHERE conversation_id = ?", (doomed.id,)).fetchone()[0] == 0
    database.close()
    assert counts == {kept.id: 2}
    assert not (storage.snapshot_root / doomed.id).exists()
    with pytest.raises(StorageError, match="no conversation"):
        storage.conversation(doomed.id)


def test_ids_that_are_not_ours_never_reach_the_file_system(tmp_path):
    storage = Storage(tmp_path)
    add_turns(storage, storage.create_conversation("c", "fp").id, 1)
    before = files_under(tmp_path)
    for bad_id in ("..", "../..", "", "/", "A" * 32, None, 7):
        for action in (storage.delete, storage.conversation, storage.messages, storage.rewind):
            with pytest.raises(StorageError, match="no conversation"):
                action(bad_id)
    assert files_under(tmp_path) == before


def test_texts_round_trip_exactly_and_what_cannot_be_stored_is_refused(tmp_path):
    storage = Storage(tmp_path)
    odd = "NUL\0 in it, \r\n endings, \x1b[2J, RTL \u202e, emoji 🍕, " + "long " * 200_000
    conversation = storage.create_conversation(odd, "fp")
    path = write_snapshot(storage, conversation.id, 1)
    storage.commit_turn(conversation.id, 1, odd, odd[::-1], STATS, snapshot=path)
    assert storage.conversation(conversation.id).title == odd
    assert [m.text for m in storage.messages(conversation.id)] == [odd, odd[::-1]]
    refusals = [
        (lambda: storage.create_conversation("lone \ud800 surrogate", "fp"), "title is not valid Unicode"),
        (lambda: storage.rename(conversation.id, None), "title must be text, not NoneType"),
        (lambda: storage.new_snapshot_path(conversation.id, 2**70), "a turn is a whole number"),
        (lambda: storage.rewind_to(conversation.id, True), "a turn is a whole number"),
        (lambda: storage.commit_turn(conversation.id, 2, "q", "a", TurnStats(-1, 0, 0, 0, 0)), "tokens"),
        (lambda: storage.commit_turn(conversation.id, 2, "q", "a", TurnStats(1, float("nan"), 0, 0, 0)), "finite"),
    ]
    for action, message in refusals:
        with pytest.raises(StorageError, match=message):
            action()
    assert storage.conversation(conversation.id).turn_count == 1


def test_rename_and_order(tmp_path):
    storage = Storage(tmp_path)
    older = storage.create_conversation("older", "fp")
    newer = storage.create_conversation("newer", "fp")
    assert [c.id for c in storage.conversations()][0] == newer.id
    add_turns(storage, older.id, 1)
    assert [c.id for c in storage.conversations()][0] == older.id
    assert storage.rename(newer.id, "renamed").title == "renamed"


# --- fuzzing -------------------------------------------------------------------------------------


def mostly(valid, anything):
    """``valid`` two times in three, else ``anything`` (``one_of`` weighs each branch of a union alike)."""
    return st.integers(0, 2).flatmap(lambda pick: valid if pick else anything)


TEXT = st.text(max_size=40) | st.text(st.characters(exclude_categories=()), max_size=40)  # with lone surrogates
STORABLE_TEXT = st.text(max_size=40) | st.sampled_from(["", "\0", "a\0b\0", "\r\n\x1b[2J", "x" * 1_000_000])
ANY_TEXT = TEXT | STORABLE_TEXT | st.just("\ud800")
NOT_TEXT = st.none() | st.integers() | st.binary(max_size=4) | st.floats()
TEXT_OR_NOT = mostly(TEXT, ANY_TEXT | NOT_TEXT)
TURN = st.integers(-3, 6) | st.integers() | st.none() | st.booleans() | st.floats() | st.text(max_size=2)
NUMBER = st.floats() | st.integers() | st.none() | st.text(max_size=2)
FIGURES = st.builds(
    TurnStats,
    tokens=st.integers(0, 10**6),
    prompt_seconds=st.floats(0, 10),
    ttft_seconds=st.floats(0, 10),
    tokens_per_second=st.floats(0, 1000),
    memory_update_seconds=st.floats(0, 10),
    stopped=st.booleans(),
    memory_change=st.lists(st.floats(0, 2), max_size=3).map(tuple),
)
ANY_FIGURES = st.builds(
    TurnStats,
    tokens=st.integers() | st.floats() | st.booleans(),
    prompt_seconds=NUMBER,
    ttft_seconds=st.floats(0, 10),
    tokens_per_second=NUMBER,
    memory_update_seconds=st.floats(0, 10),
    stopped=st.booleans() | st.none() | st.integers(),
    memory_change=st.lists(NUMBER, max_size=3).map(tuple) | st.none() | st.text(max_size=2),
)
STATS_OR_NOT = mostly(FIGURES, ANY_FIGURES | st.none())
STORAGE_FUZZ = settings(max_examples=40, stateful_step_count=15, deadline=None, suppress_health_check=list(HealthCheck))


class StorageInputs(RuleBasedStateMachine):
    """Every operation with any input: it works, and reads back what was written, or raises StorageError."""

    def __init__(self):
        super().__init__()
        self.folder = tempfile.TemporaryDirectory()
        self.storage = Storage(self.folder.name)
        self.expected: dict[str, list[tuple[str, str]]] = {}  # id -> (query, answer) per committed turn
        self.titles: dict[str, str] = {}

    def teardown(self):
        self.storage.close()
        database = sqlite3.connect(Path(self.folder.name) / "chat.sqlite3")
        assert database.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        database.close()
        self.folder.cleanup()

    def conversation_id(self, data) -> object:
        """Mostly a stored conversation's id, else anything (paths, unknown ids, other types)."""
        if self.expected and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(list(self.expected)))
        return data.draw(st.text(max_size=40) | st.sampled_from(["..", "/", "0" * 32, "f" * 33]) | NOT_TEXT)

    def turn(self, data, conversation_id: object, extra: int = 0) -> object:
        """Mostly one of the conversation's turns 0..turn_count (+ ``extra``), else anything."""
        turns = len(self.expected.get(conversation_id, [])) if isinstance(conversation_id, str) else 0
        return data.draw(mostly(st.integers(0, turns + extra), TURN))

    @staticmethod
    def refused(action, *args, **kwargs):
        try:
            return action(*args, **kwargs), None
        except StorageError as error:
            assert str(error)
            return None, error

    @initialize(title=st.text(max_size=40))
    def first_conversation(self, title):
        self.create(title, "fp")

    @rule(title=TEXT_OR_NOT, fingerprint=TEXT_OR_NOT)
    def create(self, title, fingerprint):
        conversation, _ = self.refused(self.storage.create_conversation, title, fingerprint)
        if conversation is not None:
            assert (conversation.title, conversation.model_fingerprint) == (title, fingerprint)
            self.expected[conversation.id], self.titles[conversation.id] = [], title

    @rule(data=st.data(), title=TEXT_OR_NOT)
    def rename(self, data, title):
        conversation_id = self.conversation_id(data)
        if self.refused(self.storage.rename, conversation_id, title)[0] is not None:
            self.titles[conversation_id] = title

    @precondition(lambda self: self.expected)
    @rule(
        data=st.data(),
        query=TEXT_OR_NOT,
        answer=TEXT_OR_NOT,
        stats=STATS_OR_NOT,
        write=st.integers(0, 3),
    )
    def commit(self, data, query, answer, stats, write):
        conversation_id = self.conversation_id(data)
        next_turn = len(self.expected.get(conversation_id, [])) + 1
        turn = data.draw(mostly(st.just(next_turn), TURN))
        snapshot, _ = self.refused(self.storage.new_snapshot_path, conversation_id, turn)
        if snapshot is not None and write:
            snapshot.write_bytes(b"stm")
        committed, _ = self.refused(
            self.storage.commit_turn, conversation_id, turn, query, answer, stats, snapshot=snapshot
        )
        if committed is not None:
            self.expected[conversation_id].append((query, answer))
        elif snapshot is not None:
            self.storage.discard_snapshot(snapshot)

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), query=STORABLE_TEXT, answer=STORABLE_TEXT, stats=FIGURES)
    def commit_next_turn(self, data, query, answer, stats):
        conversation_id = data.draw(st.sampled_from(list(self.expected)))
        turn = len(self.expected[conversation_id]) + 1
        snapshot = self.storage.new_snapshot_path(conversation_id, turn)
        snapshot.write_bytes(b"stm")
        self.storage.commit_turn(conversation_id, turn, query, answer, stats, snapshot=snapshot)
        self.expected[conversation_id].append((query, answer))

    @rule(data=st.data())
    def rewind(self, data):
        conversation_id = self.conversation_id(data)
        turn = self.turn(data, conversation_id)
        if self.refused(self.storage.rewind_to, conversation_id, turn)[0] is not None:
            del self.expected[conversation_id][turn:]

    @rule(data=st.data(), title=st.none() | TEXT_OR_NOT)
    def fork(self, data, title):
        conversation_id = self.conversation_id(data)
        turn = self.turn(data, conversation_id)
        fork, _ = self.refused(self.storage.fork, conversation_id, turn, title)
        if fork is not None:
            self.expected[fork.id] = self.expected[conversation_id][:turn]
            self.titles[fork.id] = fork.title

    @rule(data=st.data())
    def delete(self, data):
        conversation_id = self.conversation_id(data)
        if self.refused(self.storage.delete, conversation_id)[1] is None:
            self.expected.pop(conversation_id, None)

    @rule(data=st.data())
    def read(self, data):
        conversation_id = self.conversation_id(data)
        turn = self.turn(data, conversation_id, extra=2)
        for action, args in (
            (self.storage.conversation, ()),
            (self.storage.messages, ()),
            (self.storage.snapshot_path, (turn,)),
            (self.storage.committed_snapshots, ()),
        ):
            self.refused(action, conversation_id, *args)

    @invariant()
    def stored_as_written(self):
        for conversation_id, turns in self.expected.items():
            conversation, snapshots = self.storage.committed_snapshots(conversation_id)
            assert conversation.title == self.titles[conversation_id]
            assert conversation.turn_count == len(turns) == len(snapshots)
            texts = [m.text for m in self.storage.messages(conversation_id)]
            assert texts == [text for pair in turns for text in pair]
        assert files_under(self.storage.snapshot_root) == committed_files(self.storage)


def test_fuzz_storage_inputs_work_or_raise_storage_errors():
    run_state_machine_as_test(StorageInputs, settings=STORAGE_FUZZ)


# --- a kill -9 campaign: two writer processes on one data dir --------------------------------------

FINGERPRINT = "c" * 64
SHAPE = (2, 1, 4, 8)
WRITER = """
import json, random, sys, zlib
import mlx.core as mx
from rxt_app.storage import Storage, StorageError, TurnConflictError, TurnStats
from rxt_mlx.stm import save_stm

data, seed, fingerprint, shape = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
rng = random.Random(seed)
storage = Storage(data)
print("ready", flush=True)
for step in range(10**9):
    conversations = storage.conversations()
    choice = rng.random()
    try:
        if len(conversations) < 2 or choice < 0.05:
            storage.create_conversation("chat", fingerprint)
            continue
        conversation = rng.choice(conversations[:4])
        if choice < 0.1 and conversation.turn_count:
            storage.rewind_to(conversation.id, rng.randrange(conversation.turn_count))
        elif choice < 0.14:
            storage.fork(conversation.id, rng.randint(0, conversation.turn_count))
        elif choice < 0.16:
            storage.delete(conversation.id)
        else:
            turn, answer = conversation.turn_count + 1, f"writer {seed} step {step}"
            path = storage.new_snapshot_path(conversation.id, turn)
            value = float(zlib.crc32(answer.encode()) % 1000)
            try:
                save_stm(path, mx.full(shape, value), model_fingerprint=fingerprint, turn=turn)
                storage.commit_turn(conversation.id, turn, "q", answer, TurnStats(1, 0.0, 0.0, 0.0, 0.0),
                                    snapshot=path, revision=conversation.revision)
            except TurnConflictError:
                storage.discard_snapshot(path)
            except (StorageError, OSError):
                storage.discard_snapshot(path)
                if any(c.id == conversation.id for c in storage.conversations()):
                    raise  # not deleted: another process removed a file this one still had to commit
    except StorageError:
        pass  # e.g. a conversation deleted or rewound by the other writer meanwhile
"""


def start_writer(data: Path, seed: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data), str(seed), FINGERPRINT, json.dumps(SHAPE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout.readline() == b"ready\n", process.stderr.read().decode()
    return process


def kill(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    assert process.returncode == -9, process.stderr.read().decode()[-3000:]


def assert_every_committed_turn_loads_and_nothing_else_is_left(data: Path) -> int:
    database = sqlite3.connect(data / "chat.sqlite3")
    assert database.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    database.close()
    storage = Storage(data)
    turns = 0
    for conversation in storage.conversations():
        _, snapshots = storage.committed_snapshots(conversation.id)
        answers = [m.text for m in storage.messages(conversation.id) if m.role == "assistant"]
        assert len(snapshots) == len(answers) == conversation.turn_count
        for turn, (snapshot, answer) in enumerate(zip(snapshots, answers, strict=True), 1):
            stm, metadata = load_stm(snapshot, model_fingerprint=FINGERPRINT, expected_shape=SHAPE)
            assert int(metadata["turn"]) == turn
            assert stm[0, 0, 0, 0].item() == zlib.crc32(answer.encode()) % 1000  # the memory of that answer
        turns += conversation.turn_count
    assert files_under(storage.snapshot_root) == committed_files(storage)
    storage.close()
    database = sqlite3.connect(data / "chat.sqlite3")
    assert database.execute("SELECT COUNT(*) FROM pending_snapshots").fetchone()[0] == 0
    database.close()
    assert list((data / "writers").iterdir()) == []
    return turns


def test_kill_9_campaign_two_writers_on_one_data_dir(tmp_path):
    """20 kills at random moments (seeded) of two processes committing turns of shared conversations.

    Each round starts two writers; one is killed; this process opens the data dir while the other
    still writes (its reconcile must leave the survivor's files: the survivor fails loudly when a
    file it has to commit is gone); then the survivor is killed, and everything is checked.
    """
    rng = random.Random(15)
    data = tmp_path / "data"
    kills = 0
    for round_number in range(10):
        writers = [start_writer(data, 2 * round_number + index) for index in range(2)]
        rng.shuffle(writers)
        time.sleep(rng.uniform(0.05, 0.5))
        kill(writers[0])
        Storage(data).close()
        time.sleep(rng.uniform(0.0, 0.3))
        kill(writers[1])
        kills += 2
        turns = assert_every_committed_turn_loads_and_nothing_else_is_left(data)
    assert kills == 20 and turns > 0
