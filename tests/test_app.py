"""The chat app on a real tiny model: the inference worker's events and memory files, the
controller over it (restart, rewind, fork, damaged snapshots, a refused query, kill -9), and the
Textual app streaming a real answer.

The controller's and the screen's logic on scripted events is in tests/test_controller.py and
tests/test_app_ui.py; here every answer and STM is compared with a plain Session's.
"""

from __future__ import annotations

import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from rxt_app.controller import ActionRefused, TurnFailed
from rxt_app.storage import Storage
from rxt_app.tui import ChatApp, run_app
from rxt_app.widgets import MessageView
from rxt_app.worker import AnswerFinished, InferenceWorker, ModelLoadError, TokenText, TurnSaved, TurnStarted

import rxt_mlx
from rxt_mlx.session import AnswerDone, Session, TokenEvent
from rxt_mlx.stm import load_stm
from tests.app_helpers import RealController, wait_until
from tests.factories import tiny_config, write_model_folder
from tests.tokenizer_factories import write_bpe_tokenizer

SAMPLING = {"max_tokens": 8, "temperature": 0.0}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return write_model_folder(root / "a", tiny_config(), seed=0, tokenizer_writer=write_bpe_tokenizer)


def reference_answers(model_folder, queries: list[str], stm=None) -> tuple[list[str], mx.array]:
    """Answers of a fresh Session (same model, same sampling) and its final STM."""
    model, tokenizer = rxt_mlx.load(model_folder)
    session = Session(model, tokenizer, stm=stm)
    answers = []
    for query in queries:
        for event in session.interact(query, **SAMPLING):
            if isinstance(event, AnswerDone):
                answers.append(event.text)
    return answers, session.stm


def reference_tokens(model, tokenizer, query: str) -> list[int]:
    session = Session(model, tokenizer)
    events = session.generate(query, max_tokens=32, temperature=0.0)
    return [event.id for event in events if isinstance(event, TokenEvent)]


def assert_stm_equal(actual: mx.array, expected: mx.array) -> None:
    np.testing.assert_array_equal(np.array(actual), np.array(expected))


# ----- the worker


def run_worker(model_folder, jobs, on_event=None, sampling=SAMPLING):
    """Run ``jobs(worker)`` on a started worker; returns every event it posted, in order."""
    events = []
    worker: InferenceWorker | None = None

    def post(event):
        events.append(event)
        if on_event is not None:
            on_event(worker, event)

    worker = InferenceWorker(model_folder, post, sampling).start()
    try:
        jobs(worker)
        worker.wait_idle()
    finally:
        worker.shutdown()
    return events


def test_worker_queues_a_query_behind_the_memory_update(model_folder, tmp_path):
    def jobs(worker):
        worker.open("c", 0, [])
        worker.send("c", 1, "Hi, I'm Ann.", tmp_path / "1.safetensors")
        worker.send("c", 2, "What is my name?", tmp_path / "2.safetensors")

    events = run_worker(model_folder, jobs)
    kinds = [
        (type(event).__name__, getattr(event, "turn", None)) for event in events if not isinstance(event, TokenText)
    ]
    assert kinds == [
        ("SessionReady", 0),
        ("TurnStarted", 1),
        ("AnswerFinished", 1),
        ("TurnSaved", 1),
        ("TurnStarted", 2),
        ("AnswerFinished", 2),
        ("TurnSaved", 2),
    ]
    expected, expected_stm = reference_answers(model_folder, ["Hi, I'm Ann.", "What is my name?"])
    saved = [event for event in events if isinstance(event, TurnSaved)]
    assert [event.answer for event in saved] == expected
    assert len(saved[1].stats.memory_change) == expected_stm.shape[0]
    assert all(change > 0 for change in saved[1].stats.memory_change)
    assert_stm_equal(load_stm(tmp_path / "2.safetensors", model_fingerprint=None)[0], expected_stm)


def test_worker_stop_keeps_and_memorizes_the_partial_answer(model_folder, tmp_path):
    def stop_after_first_token(worker, event):
        if isinstance(event, TokenText):
            worker.stop()

    def jobs(worker):
        worker.open("c", 0, [])
        worker.send("c", 1, "Hi, I'm Ann.", tmp_path / "1.safetensors")

    sampling = {"max_tokens": 32, "temperature": 0.0}
    events = run_worker(model_folder, jobs, stop_after_first_token, sampling)
    finished = next(event for event in events if isinstance(event, AnswerFinished))
    assert finished.stopped and 1 <= finished.tokens < 32
    saved = next(event for event in events if isinstance(event, TurnSaved))
    assert saved.stats.stopped and saved.answer == finished.text
    model, tokenizer = rxt_mlx.load(model_folder)
    partial = reference_tokens(model, tokenizer, "Hi, I'm Ann.")[: finished.tokens]
    assert finished.text == tokenizer.decode(partial)
    interaction = mx.array([tokenizer.query_ids("Hi, I'm Ann.") + partial], dtype=mx.uint32)
    expected = model.update_memory(model.initial_stm(batch=1, seed=0), interaction)
    stm, _ = load_stm(tmp_path / "1.safetensors", model_fingerprint=model.fingerprint)
    np.testing.assert_allclose(np.array(stm), np.array(expected), rtol=1e-5, atol=1e-6)


def test_worker_cancel_before_the_first_token_keeps_nothing(model_folder, tmp_path):
    def cancel_when_started(worker, event):
        if isinstance(event, TurnStarted) and event.turn == 1 and event.conversation_id == "c":
            worker.cancel("c", 1)

    def jobs(worker):
        worker.open("c", 0, [])
        worker.send("c", 1, "Hi, I'm Ann.", tmp_path / "1.safetensors")
        worker.cancel("c", 2)  # still queued
        worker.send("c", 2, "Hi again.", tmp_path / "2.safetensors")
        worker.open("d", 0, [])
        worker.send("d", 1, "What is my name?", tmp_path / "d1.safetensors")

    events = run_worker(model_folder, jobs, cancel_when_started)
    kinds = [(type(event).__name__, event.conversation_id, getattr(event, "turn", None)) for event in events]
    kinds = [kind for kind in kinds if kind[0] != "TokenText"]
    assert kinds == [
        ("SessionReady", "c", 0),
        ("TurnStarted", "c", 1),
        ("AnswerCancelled", "c", 1),
        ("AnswerCancelled", "c", 2),
        ("SessionReady", "d", 0),
        ("TurnStarted", "d", 1),
        ("AnswerFinished", "d", 1),
        ("TurnSaved", "d", 1),
    ]
    assert not (tmp_path / "1.safetensors").exists() and not (tmp_path / "2.safetensors").exists()
    assert events[-1].answer == reference_answers(model_folder, ["What is my name?"])[0][0]


def test_bad_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a folder"):
        run_app(tmp_path / "missing", tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        run_app(tmp_path / "empty", tmp_path / "data")
    (tmp_path / "empty" / "config.json").write_text('{"format": "rxt-mlx"}')
    with pytest.raises(ModelLoadError, match="cannot load the model in .*format_version"):
        run_app(tmp_path / "empty", tmp_path / "data")


# ----- the controller over the worker


def test_restart_continues_from_the_restored_memory(model_folder, tmp_path):
    data = tmp_path / "data"
    with RealController(model_folder, data, SAMPLING) as chat:
        conversation_id = chat.open_latest()
        chat.answer(conversation_id, "Hi, I'm Ann.")
    with RealController(model_folder, data, SAMPLING) as chat:
        assert chat.open_latest() == conversation_id
        snapshot, _ = load_stm(
            chat.storage.snapshot_path(conversation_id, 1), model_fingerprint=chat.worker.fingerprint
        )
        assert_stm_equal(chat.worker.session(conversation_id).stm, snapshot)
        second = chat.answer(conversation_id, "What is my name?")
    model, tokenizer = rxt_mlx.load(model_folder)
    restored = Session.restore(model, tokenizer, Storage(data).snapshot_path(conversation_id, 1))
    expected = [e.text for e in restored.interact("What is my name?", **SAMPLING) if isinstance(e, AnswerDone)]
    assert second == expected[0]
    # and the restored memory matters: from a fresh STM the same query is answered differently
    assert reference_answers(model_folder, ["What is my name?"])[0][0] != second


def test_rewind_and_fork_continue_from_the_memory_of_that_turn(model_folder, tmp_path):
    with RealController(model_folder, tmp_path / "data", SAMPLING) as chat:
        source = chat.open_latest()
        chat.answer(source, "Hi, I'm Ann.")
        second = chat.answer(source, "I like tea.")
        turn_one, _ = load_stm(chat.storage.snapshot_path(source, 1), model_fingerprint=chat.worker.fingerprint)
        turn_two = chat.storage.snapshot_path(source, 2)
        chat.controller.rewind(source)
        chat.ready(source)
        assert turn_two.name.startswith("2.") and not turn_two.exists()
        assert_stm_equal(chat.worker.session(source).stm, turn_one)
        assert chat.answer(source, "I like tea.") == second

        fork = chat.controller.fork(source, 1).id
        chat.controller.open(fork)
        chat.ready(fork)
        assert_stm_equal(chat.worker.session(fork).stm, turn_one)
        assert chat.answer(fork, "I like tea.") == second

        chat.controller.delete(fork)
        chat.worker.wait_idle()
        with pytest.raises(KeyError):
            chat.worker.session(fork)


@pytest.mark.parametrize(
    ("queries", "damage", "reason"),
    [
        (["Hi, I'm Ann.", "I like tea."], "corrupt", "checksum"),
        (["Hi, I'm Ann."], "missing", "cannot read STM file"),
    ],
)
def test_a_damaged_snapshot_is_rewound_to_the_last_good_turn(model_folder, tmp_path, queries, damage, reason):
    data = tmp_path / "data"
    with RealController(model_folder, data, SAMPLING) as chat:
        conversation_id = chat.open_latest()
        answers = [chat.answer(conversation_id, query) for query in queries]
        snapshot = chat.storage.snapshot_path(conversation_id, len(queries))
    if damage == "missing":
        snapshot.unlink()
    else:
        damaged = bytearray(snapshot.read_bytes())
        damaged[-5] ^= 0xFF
        snapshot.write_bytes(bytes(damaged))

    with RealController(model_folder, data, SAMPLING) as chat:
        assert chat.open_latest() == conversation_id
        state = chat.controller.state(conversation_id)
        assert reason in state.problem and state.last_good_turn == len(queries) - 1
        with pytest.raises(ActionRefused, match=reason):
            chat.controller.send(conversation_id, "Hello")
        assert chat.controller.rewind(conversation_id).turn_count == len(queries) - 1
        chat.ready(conversation_id)
        assert state.ready and state.problem is None
        assert chat.answer(conversation_id, queries[-1]) == answers[-1]


def test_a_query_the_model_refuses_is_reported_and_the_chat_goes_on(model_folder, tmp_path):
    with RealController(model_folder, tmp_path / "data", SAMPLING) as chat:
        conversation_id = chat.open_latest()
        chat.controller.send(conversation_id, "tea " * 80)
        chat.pump(lambda: not chat.controller.has_live_turns(), what="the refusal")
        (failure,) = [event for event in chat.events if isinstance(event, TurnFailed)]
        assert (failure.turn, failure.query) == (1, "tea " * 80) and "seq_len" in failure.message
        assert chat.storage.conversation(conversation_id).turn_count == 0
        chat.ready(conversation_id)
        assert chat.answer(conversation_id, "Hello") == reference_answers(model_folder, ["Hello"])[0][0]


CRASHING_CHAT = """
import os, signal, sys
from rxt_mlx.blas import preload_optimised_blas

preload_optimised_blas()
from tests.app_helpers import RealController

model, data, kill_on, queries = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]

def kill_before_it_is_handled(event):
    if type(event).__name__ == kill_on and event.turn == len(queries):
        os.kill(os.getpid(), signal.SIGKILL)

with RealController(model, data, {"max_tokens": 8, "temperature": 0.0}, kill_before_it_is_handled) as chat:
    conversation_id = chat.open_latest()
    for query in queries:
        chat.answer(conversation_id, query)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_on", ["TokenText", "AnswerFinished", "TurnSaved"])
def test_kill_9_loses_at_most_the_turn_in_progress(model_folder, tmp_path, kill_on):
    """SIGKILL while turn 2 streams, after its answer, or between its snapshot write and its commit."""
    data = tmp_path / "data"
    command = [sys.executable, "-c", CRASHING_CHAT, str(model_folder), str(data), kill_on]
    result = subprocess.run([*command, "Hi, I'm Ann.", "I like tea."], capture_output=True, timeout=300)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    storage = Storage(data)
    (conversation,) = storage.conversations()
    assert conversation.turn_count == 1
    assert [m.text for m in storage.messages(conversation.id)][0] == "Hi, I'm Ann."
    assert list((storage.snapshot_root / conversation.id).iterdir()) == [storage.snapshot_path(conversation.id, 1)]
    _, expected_stm = reference_answers(model_folder, ["Hi, I'm Ann."])
    model, _ = rxt_mlx.load(model_folder)
    stm, _ = load_stm(storage.snapshot_path(conversation.id, 1), model_fingerprint=model.fingerprint)
    # another process: BLAS may split its sums differently, so equal up to float32 rounding
    np.testing.assert_allclose(np.array(stm), np.array(expected_stm), rtol=1e-4, atol=1e-5)


# ----- the Textual app on the worker


async def test_the_app_streams_a_real_answer_and_saves_its_memory(model_folder, tmp_path):
    app: ChatApp | None = None
    tokens: list[TokenText] = []

    def post(event):
        if isinstance(event, TokenText):
            tokens.append(event)
        app.post_worker_event(event)

    worker = InferenceWorker(model_folder, post, SAMPLING).start()
    storage = Storage(tmp_path / "data")
    app = ChatApp(worker, storage)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.current is not None and app.controller.state(app.current.id).ready)
            app.query_one("#prompt").value = "Hi, I'm Ann."
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.current.turn_count == 1 and not app.controller.has_live_turns())
            answer = storage.messages(app.current.id)[-1].text
            expected, expected_stm = reference_answers(model_folder, ["Hi, I'm Ann."])
            assert answer == expected[0]
            assert len(tokens) > 1 and "".join(event.text for event in tokens) == answer
            assert [view.text for view in app.query(MessageView)] == ["Hi, I'm Ann.", answer]
            snapshot, metadata = load_stm(
                storage.snapshot_path(app.current.id, 1), model_fingerprint=worker.fingerprint
            )
            assert metadata["turn"] == "1"
            assert_stm_equal(snapshot, expected_stm)
            status = str(app.query_one("#status").render())
            assert "TTFT" in status and "tok/s" in status and "memory: ready" in status
            assert status.startswith(str(model_folder))  # rxt_mlx.hub.source_label: the folder, or repo@commit
            assert app.sub_title == worker.description and "parameters" in app.sub_title
    finally:
        worker.shutdown()
        storage.close()
