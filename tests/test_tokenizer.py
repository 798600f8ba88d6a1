"""Tokenizer: both file kinds, templates, prefix space, streaming of multi-byte text."""

from __future__ import annotations

import json

import pytest

from rxt_mlx.config import TokenizerConfig
from rxt_mlx.tokenizer import TokenizerError, load_tokenizer
from tests.tokenizer_factories import (
    MULTIBYTE_SAMPLES,
    write_bpe_tokenizer,
    write_sentencepiece_tokenizer,
)

FACTORIES = {"bpe": write_bpe_tokenizer, "sentencepiece": write_sentencepiece_tokenizer}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def tokenizer(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    config = FACTORIES[request.param](folder)
    return load_tokenizer(folder, config)


def stream(tokenizer, ids):
    text_stream = tokenizer.streaming_detokenizer()
    return [text_stream.add(i) for i in ids] + [text_stream.finish()]


def test_kind_and_special_ids(tokenizer):
    assert tokenizer.kind in ("byte-level-bpe", "sentencepiece")
    assert tokenizer.eos_id == 3
    assert tokenizer.bos_id == 2
    assert {0, 1, 2, 3, 4, 5, 6, 7} <= tokenizer.special_ids


@pytest.mark.parametrize("text", MULTIBYTE_SAMPLES + ["Hi there, Ann.", " leading space", "line\nbreak"])
def test_multibyte_text_streams_intact(tokenizer, text):
    ids = tokenizer.encode(text)
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_stream_holds_back_incomplete_characters(tokenizer):
    ids = tokenizer.encode("🍕東")
    pieces = stream(tokenizer, ids)
    assert len(ids) > 2
    assert [piece for piece in pieces if piece] == ["🍕", "東"]


def test_special_tokens_are_not_printed(tokenizer):
    text_ids = tokenizer.encode("Ça va? Oui 😀")
    ids = [2, 4, *text_ids[:3], 5, *text_ids[3:], 3, 7]
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids) == "Ça va? Oui 😀"


def test_ids_outside_the_vocabulary_print_nothing(tokenizer):
    ids = [*tokenizer.encode("abc"), tokenizer.vocab_size + 5]
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids) == "abc"


def test_templates(tokenizer):
    query = tokenizer.encode("Hi, I'm Ann.")
    answer = tokenizer.encode("Hello Ann!")
    assert tokenizer.query_ids("Hi, I'm Ann.") == [2, 4, *query, 5]
    assert tokenizer.interaction_ids("Hi, I'm Ann.", "Hello Ann!") == [2, 4, *query, 5, *answer, 3]
    assert tokenizer.interaction_ids("Hi, I'm Ann.", [*answer, 3]) == [2, 4, *query, 5, *answer, 3]
    assert tokenizer.system_prompt_ids("Be brief.") == [2, 7, *tokenizer.encode("SYSTEM INSTRUCTIONS\n\nBe brief."), 3]


def test_alpha_system_prompt_form(tmp_path):
    config = write_bpe_tokenizer(tmp_path, internal=False)
    tokenizer = load_tokenizer(tmp_path, config)
    assert tokenizer.system_prompt_ids("Be brief.") == [2, 4, *tokenizer.encode("Be brief."), 5, 3]


def test_system_prompt_title_comes_from_the_model(tmp_path):
    config = write_bpe_tokenizer(tmp_path)
    tokenizer = load_tokenizer(tmp_path, config, system_prompt_title="RULES")
    assert tokenizer.system_prompt_ids("x") == [2, 7, *tokenizer.encode("RULES\n\nx"), 3]


def test_bpe_loads_without_prefix_space(tmp_path):
    """rxlm's files say add_prefix_space=true; the effective ids have no prefix space
    (docs/architecture.md §Tokenizer and template)."""
    config = write_bpe_tokenizer(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data["pre_tokenizer"]["add_prefix_space"] is True
    assert data["decoder"] is None
    tokenizer = load_tokenizer(tmp_path, TokenizerConfig.from_dict(config))
    pieces = [tokenizer._backend.id_to_piece(i) for i in tokenizer.encode("Hi there")]
    assert not pieces[0].startswith("\u0120")
    assert "".join(pieces).replace("\u0120", " ") == "Hi there"


def test_missing_tokenizer_and_bad_ids_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path, {"bos_token_id": 2, "eos_token_id": 3, "query_token_id": 4, "answer_token_id": 5})
    config = write_bpe_tokenizer(tmp_path)
    config["eos_token_id"] = 100000
    with pytest.raises(TokenizerError, match="eos_token_id = 100000"):
        load_tokenizer(tmp_path, config)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(tmp_path, config)


def test_non_byte_level_tokenizer_json_streams_intact(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tests.tokenizer_factories import SPECIAL_TOKENS, TRAINING_TEXT, tokenizer_config

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=SPECIAL_TOKENS, unk_token="[UNK]")
    backend.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    backend.save(str(tmp_path / "tokenizer.json"))
    tokenizer = load_tokenizer(tmp_path, tokenizer_config())
    assert tokenizer.kind == "other"
    text = "Où est la bibliothèque ? Ça va très bien."
    ids = tokenizer.encode(text)
    assert "".join(stream(tokenizer, [2, 4, *ids, 3])) == tokenizer.decode(ids) == text
