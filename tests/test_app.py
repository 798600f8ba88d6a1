"""The chat app end to end with tiny random models: streaming, restart with restored memory,
rewind, fork, delete, a conversation of another model, a corrupt snapshot, a bad --model."""

from __future__ import annotations

from contextlib import asynccontextmanager

import mlx.core as mx
import numpy as np
import pytest
from rxt_app.storage import Storage
from rxt_app.tui import ChatApp, run_app
from rxt_app.worker import AnswerFinished, InferenceWorker, ModelLoadError, TokenText, TurnSaved

import rxt_mlx
from rxt_mlx.session import AnswerDone, Session, TokenEvent
from rxt_mlx.stm import load_stm
from tests.app_helpers import wait_until
from tests.factories import tiny_config, write_model_folder
from tests.tokenizer_factories import write_bpe_tokenizer

SAMPLING = {"max_tokens": 8, "temperature": 0.0}


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    config = tiny_config()
    return {
        "a": write_model_folder(root / "a", config, seed=0, tokenizer_writer=write_bpe_tokenizer),
        "b": write_model_folder(root / "b", config, seed=1, tokenizer_writer=write_bpe_tokenizer),
    }


@asynccontextmanager
async def running_chat(model_folder, data_dir, wait_ready: bool = True):
    """A started worker and the app on it, under run_test; stops both afterwards.

    Waits until a conversation is shown and (``wait_ready``) its memory is loaded.
    """
    app: ChatApp | None = None
    tokens: list[TokenText] = []

    def post(event):
        if isinstance(event, TokenText):
            tokens.append(event)
        app.post_worker_event(event)

    worker = InferenceWorker(model_folder, post, SAMPLING).start()
    storage = Storage(data_dir)
    app = ChatApp(worker, storage)
    app.token_events = tokens
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.current is not None, what="a conversation")
            if wait_ready:
                await wait_until(pilot, lambda: app.controller.state(app.current.id).ready, what="memory loaded")
            yield app, pilot
    finally:
        worker.shutdown()
        storage.close()


async def send_and_wait(pilot, text: str) -> str:
    """Type ``text``, send it, wait until the turn is committed; returns the shown answer."""
    app = pilot.app
    turn = app.current.turn_count + 1
    app.query_one("#prompt").value = text
    await pilot.press("enter")
    await wait_until(pilot, lambda: app.current.turn_count == turn and not app.controller.has_live_turns(), what=f"turn {turn}")
    return app.controller.storage.messages(app.current.id)[-1].text


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


def assert_stm_equal(actual: mx.array, expected: mx.array) -> None:
    np.testing.assert_array_equal(np.array(actual), np.array(expected))


async def test_streamed_answer_matches_a_session(model_folders, tmp_path):
    async with running_chat(model_folders["a"], tmp_path / "data") as (app, pilot):
        answer = await send_and_wait(pilot, "Hi, I'm Ann.")
        expected, expected_stm = reference_answers(model_folders["a"], ["Hi, I'm Ann."])
        assert answer == expected[0]
        assert len([e for e in app.token_events if e.turn == 1]) > 1
        assert "".join(e.text for e in app.token_events) == answer
        shown = [view.text for view in app.query("MessageView")]
        assert shown == ["Hi, I'm Ann.", answer]
        snapshot, metadata = load_stm(
            app.controller.storage.snapshot_path(app.current.id, 1), model_fingerprint=app.controller.worker.fingerprint
        )
        assert metadata["turn"] == "1"
        assert_stm_equal(snapshot, expected_stm)
        status = str(app.query_one("#status").render())
        assert "TTFT" in status and "tok/s" in status and "memory: ready" in status


async def test_restart_continues_from_the_restored_memory(model_folders, tmp_path):
    data = tmp_path / "data"
    async with running_chat(model_folders["a"], data) as (app, pilot):
        first = await send_and_wait(pilot, "Hi, I'm Ann.")
        conversation_id = app.current.id
        await pilot.press("ctrl+q")
    async with running_chat(model_folders["a"], data) as (app, pilot):
        assert app.current.id == conversation_id
        assert [view.text for view in app.query("MessageView")] == ["Hi, I'm Ann.", first]
        snapshot, _ = load_stm(app.controller.storage.snapshot_path(conversation_id, 1), model_fingerprint=app.controller.worker.fingerprint)
        assert_stm_equal(app.controller.worker.session(conversation_id).stm, snapshot)
        second = await send_and_wait(pilot, "What is my name?")
    model, tokenizer = rxt_mlx.load(model_folders["a"])
    restored = Session.restore(model, tokenizer, Storage(data).snapshot_path(conversation_id, 1))
    expected = [e.text for e in restored.interact("What is my name?", **SAMPLING) if isinstance(e, AnswerDone)]
    assert second == expected[0]
    # and the restored memory matters: from a fresh STM the same query is answered differently
    assert reference_answers(model_folders["a"], ["What is my name?"])[0][0] != second


async def test_rewind_fork_and_delete(model_folders, tmp_path):
    async with running_chat(model_folders["a"], tmp_path / "data") as (app, pilot):
        await send_and_wait(pilot, "Hi, I'm Ann.")
        second = await send_and_wait(pilot, "I like tea.")
        source = app.current.id
        turn_one, _ = load_stm(app.controller.storage.snapshot_path(source, 1), model_fingerprint=app.controller.worker.fingerprint)

        await pilot.press("ctrl+z")
        await wait_until(pilot, lambda: app.current.turn_count == 1 and app.controller.state(source).ready, what="rewound")
        assert not app.controller.storage.snapshot_path(source, 2).exists()
        assert_stm_equal(app.controller.worker.session(source).stm, turn_one)
        assert await send_and_wait(pilot, "I like tea.") == second

        await pilot.press("ctrl+f")
        await wait_until(pilot, lambda: app.screen.__class__.__name__ == "ForkScreen")
        app.screen.query_one("#answer").value = "1"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.current.id != source and app.controller.state(app.current.id).ready, what="fork")
        fork = app.current.id
        assert app.current.turn_count == 1
        assert_stm_equal(app.controller.worker.session(fork).stm, turn_one)
        assert await send_and_wait(pilot, "I like tea.") == second

        await pilot.press("f8")
        await wait_until(pilot, lambda: app.screen.__class__.__name__ == "ConfirmScreen")
        await pilot.click("#confirm")
        await wait_until(pilot, lambda: app.current.id == source)
        assert [c.id for c in app.controller.storage.conversations()] == [source]
        assert not (app.controller.storage.snapshot_root / fork).exists()


async def test_conversation_of_another_model_is_read_only(model_folders, tmp_path):
    data = tmp_path / "data"
    async with running_chat(model_folders["a"], data) as (app, pilot):
        await send_and_wait(pilot, "Hi, I'm Ann.")
        foreign = app.current.id
    async with running_chat(model_folders["b"], data, wait_ready=False) as (app, pilot):
        await wait_until(pilot, lambda: app.current.id == foreign)
        assert "another model" in str(app.query_one("#notice").render())
        assert app.query_one("#prompt").disabled
        assert foreign not in app.controller.worker._sessions
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: app.current.id != foreign and app.controller.state(app.current.id).ready)
        assert await send_and_wait(pilot, "Hello") == reference_answers(model_folders["b"], ["Hello"])[0][0]


async def test_corrupt_snapshot_offers_rewind_to_last_good_turn(model_folders, tmp_path):
    data = tmp_path / "data"
    async with running_chat(model_folders["a"], data) as (app, pilot):
        await send_and_wait(pilot, "Hi, I'm Ann.")
        second = await send_and_wait(pilot, "I like tea.")
        conversation_id = app.current.id
        snapshot = app.controller.storage.snapshot_path(conversation_id, 2)
    damaged = bytearray(snapshot.read_bytes())
    damaged[-5] ^= 0xFF
    snapshot.write_bytes(bytes(damaged))
    async with running_chat(model_folders["a"], data, wait_ready=False) as (app, pilot):
        await wait_until(pilot, lambda: app.controller.state(conversation_id).problem is not None, what="problem shown")
        notice = str(app.query_one("#notice").render())
        assert "checksum" in notice and "rewind to turn 1" in notice
        assert app.query_one("#prompt").disabled
        await pilot.press("ctrl+z")
        await wait_until(pilot, lambda: app.controller.state(conversation_id).ready and app.current.turn_count == 1)
        assert await send_and_wait(pilot, "I like tea.") == second


def test_bad_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a folder"):
        run_app(tmp_path / "missing", tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        run_app(tmp_path / "empty", tmp_path / "data")
    (tmp_path / "empty" / "config.json").write_text('{"format": "rxt-mlx"}')
    with pytest.raises(ModelLoadError, match="cannot load the model in .*format_version"):
        run_app(tmp_path / "empty", tmp_path / "data")


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
    return events, worker


def test_worker_queues_a_query_behind_the_memory_update(model_folders, tmp_path):
    def jobs(worker):
        worker.open("c", 0, [])
        worker.send("c", 1, "Hi, I'm Ann.", tmp_path / "1.safetensors")
        worker.send("c", 2, "What is my name?", tmp_path / "2.safetensors")

    events, _ = run_worker(model_folders["a"], jobs)
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
    expected, expected_stm = reference_answers(model_folders["a"], ["Hi, I'm Ann.", "What is my name?"])
    saved = [event for event in events if isinstance(event, TurnSaved)]
    assert [event.answer for event in saved] == expected
    assert len(saved[1].stats.memory_change) == expected_stm.shape[0]
    assert all(change > 0 for change in saved[1].stats.memory_change)
    assert_stm_equal(load_stm(tmp_path / "2.safetensors", model_fingerprint=None)[0], expected_stm)


def test_worker_stop_keeps_and_memorizes_the_partial_answer(model_folders, tmp_path):
    def stop_after_first_token(worker, event):
        if isinstance(event, TokenText):
            worker.stop()

    def jobs(worker):
        worker.open("c", 0, [])
        worker.send("c", 1, "Hi, I'm Ann.", tmp_path / "1.safetensors")

    sampling = {"max_tokens": 32, "temperature": 0.0}
    events, worker = run_worker(model_folders["a"], jobs, stop_after_first_token, sampling)
    finished = next(event for event in events if isinstance(event, AnswerFinished))
    assert finished.stopped and 1 <= finished.tokens < 32
    saved = next(event for event in events if isinstance(event, TurnSaved))
    assert saved.stats.stopped and saved.answer == finished.text
    model, tokenizer = rxt_mlx.load(model_folders["a"])
    partial = reference_tokens(model, tokenizer, "Hi, I'm Ann.")[: finished.tokens]
    assert finished.text == tokenizer.decode(partial)
    interaction = mx.array([tokenizer.query_ids("Hi, I'm Ann.") + partial], dtype=mx.uint32)
    expected = model.update_memory(model.initial_stm(batch=1, seed=0), interaction)
    stm, _ = load_stm(tmp_path / "1.safetensors", model_fingerprint=model.fingerprint)
    np.testing.assert_allclose(np.array(stm), np.array(expected), rtol=1e-5, atol=1e-6)


def reference_tokens(model, tokenizer, query: str) -> list[int]:
    session = Session(model, tokenizer)
    events = session.generate(query, max_tokens=32, temperature=0.0)
    return [event.id for event in events if isinstance(event, TokenEvent)]


async def test_missing_snapshot_offers_rewind_to_the_start(model_folders, tmp_path):
    data = tmp_path / "data"
    async with running_chat(model_folders["a"], data) as (app, pilot):
        await send_and_wait(pilot, "Hi, I'm Ann.")
        conversation_id = app.current.id
        app.controller.storage.snapshot_path(conversation_id, 1).unlink()
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: app.current.id != conversation_id and app.controller.state(app.current.id).ready)
    async with running_chat(model_folders["a"], data, wait_ready=False) as (app, pilot):
        await pilot.click("#conversations > ConversationItem:last-of-type")
        await wait_until(pilot, lambda: app.current.id == conversation_id)
        await wait_until(pilot, lambda: app.controller.state(conversation_id).problem is not None, what="problem shown")
        notice = str(app.query_one("#notice").render())
        assert "cannot read STM file" in notice and "rewind to turn 0" in notice
        other = [c for c in app.controller.storage.conversations() if c.id != conversation_id][0]
        await app.switch_to(other.id)
        assert await send_and_wait(pilot, "Hello") == reference_answers(model_folders["a"], ["Hello"])[0][0]


CRASHING_CHAT = """
import asyncio, os, signal, sys
from rxt_app.storage import Storage
from rxt_app.tui import ChatApp
from rxt_app.worker import InferenceWorker
from tests.app_helpers import wait_until

model, data, kill_on, queries = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
app = None

def post(event):
    if type(event).__name__ == kill_on and event.turn == len(queries):
        os.kill(os.getpid(), signal.SIGKILL)
    app.post_worker_event(event)

async def main():
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.current is not None and app.controller.state(app.current.id).ready)
        for query in queries:
            turn = app.current.turn_count + 1
            app.query_one("#prompt").value = query
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.current.turn_count == turn, timeout=120)

worker = InferenceWorker(model, post, {"max_tokens": 8, "temperature": 0.0}).start()
app = ChatApp(worker, Storage(data))
asyncio.run(main())
"""


@pytest.mark.parametrize("kill_on", ["TokenText", "AnswerFinished", "TurnSaved"])
def test_kill_9_loses_at_most_the_turn_in_progress(model_folders, tmp_path, kill_on):
    """SIGKILL while turn 2 streams, after its answer, or between its snapshot write and its commit."""
    import subprocess
    import sys

    data = tmp_path / "data"
    command = [sys.executable, "-c", CRASHING_CHAT, str(model_folders["a"]), str(data), kill_on]
    result = subprocess.run([*command, "Hi, I'm Ann.", "I like tea."], capture_output=True, timeout=300)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    storage = Storage(data)
    (conversation,) = storage.conversations()
    assert conversation.turn_count == 1
    assert [m.text for m in storage.messages(conversation.id)][0] == "Hi, I'm Ann."
    assert sorted(p.name for p in (storage.snapshot_root / conversation.id).iterdir()) == ["1.safetensors"]
    _, expected_stm = reference_answers(model_folders["a"], ["Hi, I'm Ann."])
    model, _ = rxt_mlx.load(model_folders["a"])
    stm, _ = load_stm(storage.snapshot_path(conversation.id, 1), model_fingerprint=model.fingerprint)
    # another process: BLAS may split its sums differently, so equal up to float32 rounding
    np.testing.assert_allclose(np.array(stm), np.array(expected_stm), rtol=1e-4, atol=1e-5)


async def test_a_query_the_model_refuses_is_reported_and_the_chat_goes_on(model_folders, tmp_path):
    async with running_chat(model_folders["a"], tmp_path / "data") as (app, pilot):
        app.query_one("#prompt").value = "tea " * 80
        await pilot.press("enter")
        await wait_until(pilot, lambda: not app.controller.has_live_turns() and len(app._notifications) > 0, what="the error")
        assert any("seq_len" in notification.message for notification in app._notifications)
        assert app.current.turn_count == 0 and list(app.query("MessageView")) == []
        assert app.query_one("#prompt").value == ("tea " * 80).strip()  # given back to edit
        assert await send_and_wait(pilot, "Hello") == reference_answers(model_folders["a"], ["Hello"])[0][0]
