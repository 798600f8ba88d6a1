"""The chat's inference worker on a real tiny model takes a conversation's own settings: its
system prompt in the memory of turn 0 and its sampling options for each turn; it tells the
size of a query against the model's limit."""

from __future__ import annotations

import queue

import numpy as np
import pytest
from rxt_app.worker import AnswerFinished, InferenceWorker, SessionReady, TurnSaved

import rxt_mlx
from rxt_mlx.session import Session
from tests.factories import tiny_config, write_model_folder
from tests.tokenizer_factories import write_bpe_tokenizer

SYSTEM = "You answer in one word."


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return write_model_folder(
        tmp_path_factory.mktemp("model"), tiny_config(), seed=0, tokenizer_writer=write_bpe_tokenizer
    )


def next_event(events: queue.Queue, kind):
    while True:
        event = events.get(timeout=120)
        if isinstance(event, kind):
            return event


def test_system_prompt_and_sampling_of_a_conversation(model_folder, tmp_path):
    events: queue.Queue = queue.Queue()
    worker = InferenceWorker(model_folder, events.put, {"max_tokens": 8, "temperature": 0.0}).start()
    try:
        worker.system_prompt_of = lambda conversation_id: SYSTEM if conversation_id == "with" else None
        worker.sampling_of = lambda conversation_id: {"max_tokens": 1} if conversation_id == "with" else {}
        for conversation_id in ("with", "without"):
            worker.open(conversation_id, 0, [])
            next_event(events, SessionReady)
        worker.wait_idle()
        model, tokenizer = rxt_mlx.load(model_folder)
        expected = Session(model, tokenizer, system_prompt=SYSTEM).stm
        np.testing.assert_array_equal(np.array(worker.session("with").stm), np.array(expected))
        np.testing.assert_array_equal(np.array(worker.session("without").stm), np.array(Session(model, tokenizer).stm))

        worker.send("with", 1, "Hello there", tmp_path / "with.safetensors")
        assert next_event(events, AnswerFinished).tokens == 1  # the conversation's max_tokens
        next_event(events, TurnSaved)
        worker.send("without", 1, "Hello there", tmp_path / "without.safetensors")
        assert next_event(events, AnswerFinished).tokens > 1
        next_event(events, TurnSaved)

        assert worker.query_limit == model.config.decoder.seq_len - 1
        assert worker.query_tokens("Hello there") == len(tokenizer.query_ids("Hello there"))
    finally:
        worker.shutdown()
