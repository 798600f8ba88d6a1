"""Session: cached generation parity, streaming, memory update, stop, validation, save/restore."""

from __future__ import annotations

import threading

import mlx.core as mx
import pytest

from rxt_mlx.sampling import SamplingOptions
from rxt_mlx.sampling import forced_tokens_processor as force
from rxt_mlx.session import AnswerDone, MemoryUpdated, Session, TokenEvent
from rxt_mlx.stm import STMModelMismatchError
from rxt_mlx.tokenizer import load_tokenizer
from tests.factories import PARITY_CONFIGS, SEQ_LEN, random_mlx_model, tiny_config
from tests.tokenizer_factories import MULTIBYTE_SAMPLES, write_bpe_tokenizer, write_sentencepiece_tokenizer

QUERIES = ["Hi, I'm Ann.", "What is my name?"]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe")
    return load_tokenizer(folder, write_bpe_tokenizer(folder))


@pytest.fixture(scope="module")
def small_model():
    return random_mlx_model(tiny_config(), seed=3)


def split_events(events):
    tokens = [event for event in events if isinstance(event, TokenEvent)]
    done = [event for event in events if isinstance(event, AnswerDone)]
    updated = [event for event in events if isinstance(event, MemoryUpdated)]
    assert len(done) == 1
    return tokens, done[0], updated


def recompute_greedy(model, stm, prompt, max_tokens, eos, vocab, repetition_penalty=None):
    """Reference: the full sequence through the decoder at every step, no cache, STM re-projected."""
    ids = list(prompt)
    answer = []
    for _ in range(max_tokens):
        logits = model.decoder(mx.array([ids]), stm)[0, -1, :vocab]
        if repetition_penalty is not None:
            context = mx.array(ids[-20:])
            selected = logits[context]
            logits[context] = mx.where(selected < 0, selected * repetition_penalty, selected / repetition_penalty)
        token = mx.argmax(logits).item()
        ids.append(token)
        answer.append(token)
        if token == eos:
            break
    return answer


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_cached_greedy_generation_equals_full_recompute(name, bpe):
    model = random_mlx_model(PARITY_CONFIGS[name](), seed=11)
    session = Session(model, bpe)
    for query in QUERIES:
        stm = session.stm
        prompt = bpe.query_ids(query)
        tokens, done, updated = split_events(list(session.interact(query, max_tokens=12)))
        answer = [event.id for event in tokens]
        assert answer == recompute_greedy(model, stm, prompt, 12, bpe.eos_id, bpe.vocab_size)
        assert done.tokens == len(answer) and not done.stopped
        expected_stm = model.update_memory(stm, mx.array([prompt + answer]))
        assert mx.allclose(session.stm, expected_stm, atol=1e-5).item()
        assert updated[0].turn == session.turn
    assert session.turn == len(QUERIES)


def test_repetition_penalty_uses_query_and_answer_as_context(small_model, bpe):
    session = Session(small_model, bpe)
    stm = session.stm
    prompt = bpe.query_ids(QUERIES[0])
    tokens, _, _ = split_events(list(session.generate(QUERIES[0], max_tokens=16, repetition_penalty=1.5)))
    expected = recompute_greedy(small_model, stm, prompt, 16, bpe.eos_id, bpe.vocab_size, repetition_penalty=1.5)
    assert [event.id for event in tokens] == expected


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_multibyte_answers_stream_intact(kind, tmp_path):
    if kind == "bpe":
        config, tokenizer_config = tiny_config(), write_bpe_tokenizer(tmp_path)
    else:
        vocab = {"vocab_size": 400}
        config = tiny_config(decoder=vocab, encoder=vocab)
        tokenizer_config = write_sentencepiece_tokenizer(tmp_path)
    tokenizer = load_tokenizer(tmp_path, tokenizer_config)
    session = Session(random_mlx_model(config, seed=4), tokenizer)
    for text in MULTIBYTE_SAMPLES:
        forced = tokenizer.encode(text) + [tokenizer.eos_id]
        tokens, done, _ = split_events(list(session.interact("Say it", logits_processors=[force(forced)])))
        pieces = [event.text for event in tokens]
        assert [event.id for event in tokens] == forced
        assert "".join(pieces) == done.text == tokenizer.decode(forced) == text
        assert not any("\ufffd" in piece for piece in pieces)


def test_forced_tokens_override_sampling_and_end_at_eos(small_model, bpe):
    session = Session(small_model, bpe)
    forced = [40, 41, 39, 42, bpe.eos_id, 43]
    tokens, done, _ = split_events(
        list(session.generate("Hi", temperature=0.7, seed=1, logits_processors=[force(forced)]))
    )
    assert [event.id for event in tokens] == forced[:5]
    assert done.tokens == 5
    with pytest.raises(ValueError, match="forced token id 100000"):
        list(session.generate("Hi", logits_processors=[force([5, 100000])]))
    with pytest.raises(ValueError, match="forced token ids"):
        force([])


def test_options_and_keyword_overrides(small_model, bpe):
    options = SamplingOptions(max_tokens=3, temperature=0.0)
    events = list(Session(small_model, bpe).generate("Hi", options, max_tokens=2, logits_processors=[force([40] * 9)]))
    assert [event.id for event in events if isinstance(event, TokenEvent)] == [40, 40]
    with pytest.raises(TypeError, match="unknown sampling option force_tokens"):
        list(Session(small_model, bpe).generate("Hi", force_tokens=[40]))
    with pytest.raises(TypeError, match="must be SamplingOptions"):
        list(Session(small_model, bpe).generate("Hi", 16))


def test_sampling_is_seeded_and_stays_in_the_tokenizer_vocabulary(small_model, tmp_path):
    tokenizer = load_tokenizer(tmp_path, write_bpe_tokenizer(tmp_path, vocab_size=280))
    session = Session(small_model, tokenizer)
    kwargs = dict(max_tokens=24, temperature=1.5, top_p=0.95, top_k=50, min_p=0.01, seed=7)
    first = [e.id for e in session.generate("Hi", **kwargs) if isinstance(e, TokenEvent)]
    session = Session(small_model, tokenizer)
    second = [e.id for e in session.generate("Hi", **kwargs) if isinstance(e, TokenEvent)]
    assert first == second
    assert all(0 <= token < 280 for token in first)


def test_stop_keeps_the_partial_answer_for_the_memory_update(small_model, bpe):
    session = Session(small_model, bpe)
    stm = session.stm
    events = []
    for event in session.interact("Hi, I'm Ann.", max_tokens=30, logits_processors=[force(range(20, 50))]):
        events.append(event)
        if isinstance(event, TokenEvent) and len(events) == 3:
            session.stop()
    tokens, done, updated = split_events(events)
    assert [event.id for event in tokens] == [20, 21, 22]
    assert done.stopped and done.tokens == 3
    assert updated[0].turn == 1
    expected = small_model.update_memory(stm, mx.array([bpe.query_ids("Hi, I'm Ann.") + [20, 21, 22]]))
    assert mx.allclose(session.stm, expected, atol=1e-5).item()


def test_session_runs_on_a_worker_thread_and_stops_from_another(small_model, bpe):
    expected = [e.id for e in Session(small_model, bpe).generate("Hi", max_tokens=10) if isinstance(e, TokenEvent)]
    session = Session(small_model, bpe)
    results = {}
    started = threading.Event()

    def worker():
        results["tokens"] = [e.id for e in session.generate("Hi", max_tokens=10) if isinstance(e, TokenEvent)]
        events = []
        for event in session.interact("Again", max_tokens=50, logits_processors=[force(range(20, 70))]):
            events.append(event)
            started.set()
            if len(events) == 40:  # never reached when stop() works
                break
        results["second"] = events

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait(timeout=60)
    session.stop()
    thread.join(timeout=120)
    assert results["tokens"] == expected
    _, done, updated = split_events(results["second"])
    assert done.stopped and done.tokens < 39
    assert session.turn == 2 and updated[0].turn == 2


def test_system_prompt_initialises_the_stm(small_model, bpe):
    initial = small_model.initial_stm(batch=1, seed=0)
    session = Session(small_model, bpe, system_prompt="Be brief.")
    expected = small_model.update_memory(initial, mx.array([bpe.system_prompt_ids("Be brief.")]))
    assert mx.allclose(session.stm, expected, atol=1e-5).item()
    assert session.turn == 0


def test_a_pending_update_runs_before_the_next_turn(small_model, bpe):
    session = Session(small_model, bpe)
    stm = session.stm
    answer = [e.id for e in session.generate("Hi", max_tokens=5) if isinstance(e, TokenEvent)]
    assert session.update_pending and session.turn == 0
    list(session.generate("Again", max_tokens=2))
    assert session.turn == 1 and session.update_pending
    expected = small_model.update_memory(stm, mx.array([bpe.query_ids("Hi") + answer]))
    assert mx.allclose(session.stm, expected, atol=1e-5).item()
    session.update_memory()
    with pytest.raises(RuntimeError, match="no answer"):
        session.update_memory()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("temperature", -0.1, "temperature must be >= 0, got -0.1"),
        ("top_p", 0.0, "top_p must be in \\(0, 1\\], got 0.0"),
        ("top_p", 1.5, "top_p must be in \\(0, 1\\], got 1.5"),
        ("top_k", -1, "top_k must be an integer >= 0, got -1"),
        ("min_p", 1.0, "min_p must be in \\[0, 1\\), got 1.0"),
        ("min_p", -0.5, "min_p must be in \\[0, 1\\), got -0.5"),
        ("repetition_penalty", 0.0, "repetition_penalty must be > 0"),
        ("max_tokens", 0, "max_tokens must be an integer >= 1, got 0"),
        ("temperature", "hot", "temperature must be >= 0, got 'hot'"),
    ],
)
def test_invalid_sampling_values_are_rejected(small_model, bpe, name, value, message):
    session = Session(small_model, bpe)
    with pytest.raises(ValueError, match=message):
        list(session.interact("Hi", **{name: value}))
    with pytest.raises(ValueError, match=message):
        SamplingOptions(**{name: value})
    assert session.turn == 0 and not session.update_pending


@pytest.mark.parametrize("query", ["", "   \n"])
def test_empty_query_is_rejected(small_model, bpe, query):
    with pytest.raises(ValueError, match="query must be non-empty"):
        list(Session(small_model, bpe).interact(query))


def test_too_long_query_is_rejected_and_the_answer_budget_is_bounded(small_model, bpe):
    session = Session(small_model, bpe)
    long_query = " ".join(["word"] * SEQ_LEN)
    with pytest.raises(ValueError, match=rf"query is \d+ tokens .* seq_len is {SEQ_LEN}"):
        list(session.interact(long_query))
    filler = bpe.decode(list(range(40, 40 + SEQ_LEN - 5)))
    prompt_length = len(bpe.query_ids(filler))
    assert prompt_length < SEQ_LEN
    room = SEQ_LEN - prompt_length
    forced = list(range(20, 20 + SEQ_LEN))
    tokens, done, _ = split_events(list(session.generate(filler, max_tokens=200, logits_processors=[force(forced)])))
    assert [event.id for event in tokens] == forced[:room] and done.tokens == room
    done = [e for e in session.generate(filler, max_tokens=200) if isinstance(e, AnswerDone)][0]
    assert done.tokens <= room


def test_save_and_restore(small_model, bpe, tmp_path):
    session = Session(small_model, bpe)
    for query in QUERIES:
        list(session.interact(query, max_tokens=4))
    path = tmp_path / "chat.stm"
    metadata = session.save_stm(path)
    assert metadata["turn"] == "2"
    restored = Session.restore(small_model, bpe, path)
    assert restored.turn == 2
    assert mx.array_equal(restored.stm, session.stm).item()
    assert restored.created == metadata["created"]

    other = random_mlx_model(tiny_config(), seed=99)
    with pytest.raises(STMModelMismatchError):
        Session.restore(other, bpe, path)
    fresh = Session(other, bpe)
    before = fresh.stm
    with pytest.raises(STMModelMismatchError):
        fresh.load_stm(path)
    assert fresh.turn == 0 and fresh.stm is before


def test_stm_of_the_wrong_shape_is_rejected(small_model, bpe):
    with pytest.raises(ValueError, match="needs"):
        Session(small_model, bpe, stm=mx.zeros((2, 1, 4, 32)))
