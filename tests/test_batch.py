"""Answers decoded together (rxt_mlx.batch, and rxt-serve's worker over it) are the answers a
Session decodes alone: each row has its own STM, prompt length and positions, and rows join and
leave the batch at different steps."""

from __future__ import annotations

import threading
import time

import mlx.core as mx
import pytest
from mlx.utils import tree_map
from rxt_app.serving_worker import Generate, ServingWorker
from rxt_app.snapshot_writer import SnapshotWriter

from rxt_mlx.batch import DecodeBatch, update_memories
from rxt_mlx.sampling import SamplingOptions
from rxt_mlx.session import Session, TokenEvent
from rxt_mlx.stm import load_stm
from rxt_mlx.tokenizer import load_tokenizer
from tests.factories import PARITY_CONFIGS, random_mlx_model, tiny_config, write_model_folder
from tests.tokenizer_factories import write_bpe_tokenizer

QUERIES = ["Hi, I'm Ann.", "What is my name?", "Où est la bibliothèque ?", "I love pizza 🍕", "Numbers: 1, 2, 3."]
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe")
    return load_tokenizer(folder, write_bpe_tokenizer(folder))


def alone(model, tokenizer, stm, query: str) -> list[int]:
    events = Session(model, tokenizer, stm=stm).generate(query, max_tokens=MAX_TOKENS, temperature=0.0)
    return [event.id for event in events if isinstance(event, TokenEvent)]


def together(model, tokenizer, stms, queries, joins_at) -> list[list[int]]:
    """Greedy answers decoded as one batch; row i joins after ``joins_at[i]`` steps (rows joining
    at the same step are prefilled together)."""
    vocab = min(model.config.decoder.vocab_size, tokenizer.vocab_size)
    batch = DecodeBatch(model.decoder, vocab)
    answers: list[list[int]] = [[] for _ in queries]
    rows: list[int] = []  # the batch's rows, as indexes of queries
    budgets = [min(MAX_TOKENS, model.config.decoder.seq_len - len(tokenizer.query_ids(q))) for q in queries]

    def take(row: int, logits: mx.array) -> None:
        answers[row].append(mx.argmax(logits - mx.logsumexp(logits, axis=-1, keepdims=True)).item())

    def over(row: int) -> bool:
        return answers[row][-1] == tokenizer.eos_id or len(answers[row]) == budgets[row]

    step = 0
    while step == 0 or rows or any(not answer for answer in answers):
        joining = [row for row, join in enumerate(joins_at) if join == step]
        if joining:
            prompts = [tokenizer.query_ids(queries[row]) for row in joining]
            logits = batch.add_rows(prompts, [model.decoder.project_memory(stms[row]) for row in joining])
            for index, row in enumerate(joining):
                take(row, logits[index])
            rows.extend(joining)
        for index in reversed(range(len(rows))):
            if over(rows[index]):
                batch.remove(index)
                rows.pop(index)
        if rows:
            logits = batch.step(mx.array([answers[row][-1] for row in rows], dtype=mx.uint32))
            for index, row in enumerate(rows):
                take(row, logits[index])
        step += 1
    return answers


DENSE = ["dense_gqa"]  # bfloat16 on a dense model: MLX's CPU MoE (GatherMM) runs float32 only


@pytest.mark.parametrize(
    ("name", "dtype"),
    [pytest.param(name, mx.float32, id=name) for name in sorted(PARITY_CONFIGS)]
    + [pytest.param(DENSE[0], mx.bfloat16, id=f"{DENSE[0]}-bfloat16")],
)
def test_rows_decoded_together_equal_sessions_alone(name, dtype, bpe):
    model = random_mlx_model(PARITY_CONFIGS[name](), seed=5)
    if dtype != mx.float32:
        model.update(tree_map(lambda array: array.astype(dtype), model.parameters()))
    stms = [model.initial_stm(1, seed=seed) for seed in range(len(QUERIES))]
    expected = [alone(model, bpe, stm, query) for stm, query in zip(stms, QUERIES, strict=True)]
    assert together(model, bpe, stms, QUERIES, joins_at=[0, 0, 0, 3, 7]) == expected


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_rows_prefilled_together_equal_rows_prefilled_alone(name, bpe):
    model = random_mlx_model(PARITY_CONFIGS[name](), seed=3)
    vocab = min(model.config.decoder.vocab_size, bpe.vocab_size)
    prompts = [bpe.query_ids(query) for query in QUERIES]
    assert len({len(prompt) for prompt in prompts}) > 1  # padded on the right to the longest
    memories = [model.decoder.project_memory(model.initial_stm(1, seed=seed)) for seed in range(len(QUERIES))]
    alone_batch, together_batch = DecodeBatch(model.decoder, vocab), DecodeBatch(model.decoder, vocab)
    logits_alone = mx.concatenate([alone_batch.add(p, m) for p, m in zip(prompts, memories, strict=True)])
    logits_together = together_batch.add_rows(prompts, memories)
    assert together_batch.offsets == alone_batch.offsets == [len(prompt) for prompt in prompts]
    assert mx.allclose(logits_together, logits_alone, atol=1e-5, rtol=1e-5).item()
    tokens = mx.argmax(logits_alone, axis=-1)
    for _ in range(3):  # the cached keys/values of each row's prompt are its own
        stepped_alone, stepped_together = alone_batch.step(tokens), together_batch.step(tokens)
        assert mx.allclose(stepped_together, stepped_alone, atol=1e-5, rtol=1e-5).item()
        tokens = mx.argmax(stepped_alone, axis=-1)


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_memory_updates_together_equal_updates_alone(name, bpe):
    model = random_mlx_model(PARITY_CONFIGS[name](), seed=4)
    stms = [model.initial_stm(1, seed=seed) for seed in range(len(QUERIES))]
    interactions = [bpe.interaction_ids(query, query[::-1]) for query in QUERIES]
    assert len({len(interaction) for interaction in interactions}) > 1
    alone = [
        model.update_memory(stm, mx.array([ids], dtype=mx.uint32)) for stm, ids in zip(stms, interactions, strict=True)
    ]
    together = update_memories(model, stms, interactions)
    for stm_alone, stm_together in zip(alone, together, strict=True):
        assert stm_together.shape == stm_alone.shape
        assert mx.allclose(stm_together, stm_alone, atol=1e-5, rtol=1e-5).item()
    assert mx.array_equal(update_memories(model, stms[:1], interactions[:1])[0], alone[0]).item()  # one row: Session's


def test_the_serving_worker_decodes_queued_greedy_turns_together(tmp_path, monkeypatch):
    """Four turns queued together: prefilled in one call, decoded as one batch, their memory
    updates run as one batch; answers equal Sessions' alone, saved STMs within fp32 rounding."""
    import rxt_mlx.batch as batch_module

    folder = write_model_folder(tmp_path / "model", tiny_config(), seed=0, tokenizer_writer=write_bpe_tokenizer)
    sizes, joined, updated, events = [], [], [], []
    step, add_rows, update_memories_together = DecodeBatch.step, DecodeBatch.add_rows, batch_module.update_memories

    def recording_step(self, tokens):
        sizes.append(len(self))
        return step(self, tokens)

    def recording_add_rows(self, prompts, memories):
        joined.append(len(prompts))
        return add_rows(self, prompts, memories)

    def recording_update_memories(model, stms, interactions):
        updated.append(len(stms))
        return update_memories_together(model, stms, interactions)

    monkeypatch.setattr(DecodeBatch, "step", recording_step)
    monkeypatch.setattr(DecodeBatch, "add_rows", recording_add_rows)
    monkeypatch.setattr(batch_module, "update_memories", recording_update_memories)
    worker = ServingWorker(folder, events.append, {"max_tokens": MAX_TOKENS})
    conversations = [f"c{index}" for index in range(4)]
    for conversation_id in conversations:  # all queued before the model loads: they arrive together
        worker.open(conversation_id, 0, [])
    plan = Generate(SamplingOptions(max_tokens=MAX_TOKENS))
    for conversation_id, query in zip(conversations, QUERIES, strict=False):
        worker.plan_turn(conversation_id, plan)
        worker.send(conversation_id, 1, query, tmp_path / f"{conversation_id}.safetensors")
    try:
        worker.start().wait_idle()
    finally:
        worker.shutdown()
    model, tokenizer = worker.model, worker.tokenizer
    sessions = [Session(model, tokenizer) for _ in conversations]
    expected = [
        tokenizer.decode(
            [
                event.id
                for event in session.interact(query, max_tokens=MAX_TOKENS, temperature=0.0)
                if isinstance(event, TokenEvent)
            ]
        )
        for session, query in zip(sessions, QUERIES, strict=False)
    ]
    saved = {event.conversation_id: event for event in events if type(event).__name__ == "TurnSaved"}
    assert [saved[conversation_id].answer for conversation_id in conversations] == expected
    assert max(sizes) == 4 and joined == [4] and max(updated) > 1
    for conversation_id, session in zip(conversations, sessions, strict=True):
        stm, _ = load_stm(saved[conversation_id].snapshot, model_fingerprint=model.fingerprint)
        assert mx.allclose(stm, session.stm, atol=1e-5, rtol=1e-5).item()


def test_a_snapshot_is_reported_saved_only_once_it_is_written(tmp_path):
    writer = SnapshotWriter()
    reported = []
    try:
        target = tmp_path / "conversation" / "1.safetensors"
        writer.write(target, b"stm bytes", lambda: reported.append(("saved", target.read_bytes())), None)
        blocked = tmp_path / "file"
        blocked.write_text("not a folder")
        writer.write(blocked / "2.safetensors", b"x", None, lambda error, details: reported.append(("failed", error)))
        writer.wait()
    finally:
        writer.close()
    outcomes = dict(reported)
    assert outcomes["saved"] == b"stm bytes" and isinstance(outcomes["failed"], OSError)
    assert not any(thread.is_alive() for thread in writer._threads)


def test_snapshots_of_other_conversations_are_written_meanwhile_and_one_conversations_in_order(tmp_path, monkeypatch):
    import rxt_app.snapshot_writer as snapshot_writer

    slow_folder, written, release = tmp_path / "slow", [], threading.Event()

    def write_stm_file(path, data):
        if path.parent == slow_folder:
            release.wait(10)
        written.append(path.relative_to(tmp_path).as_posix())

    monkeypatch.setattr(snapshot_writer, "write_stm_file", write_stm_file)
    writer = SnapshotWriter(threads=2)
    folders = [slow_folder] + [
        folder for folder in (tmp_path / f"c{index}" for index in range(8)) if hash(folder) % 2 != hash(slow_folder) % 2
    ][:1]
    try:
        for turn in (1, 2, 3):
            for folder in folders:
                writer.write(folder / f"{turn}.safetensors", b"", lambda: None, None)
        deadline = time.monotonic() + 10
        while len(written) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        other = folders[1].name
        assert written == [f"{other}/1.safetensors", f"{other}/2.safetensors", f"{other}/3.safetensors"]
        release.set()
        writer.wait()
    finally:
        writer.close()
    assert written[3:] == ["slow/1.safetensors", "slow/2.safetensors", "slow/3.safetensors"]


def test_take_job_takes_the_next_job_only_when_it_may_run(tmp_path):
    worker = ServingWorker(tmp_path / "no model", lambda event: None)
    worker.forget("a")
    worker.forget("b")
    assert worker.take_job(lambda job: job.conversation_id == "b") is None  # "a" stays first
    taken = worker.take_job(lambda job: job.conversation_id == "a")
    assert taken.conversation_id == "a"
    worker.job_done()
    assert worker.take_job(lambda job: True).conversation_id == "b"
    worker.job_done()
    assert worker.take_job(lambda job: True) is None
    worker.wait_idle()
    worker.shutdown()
