"""Tiny tokenizers trained offline, with the RxT special tokens at fixed ids.

Both kinds share the ids [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3 [Q]=4 [A]=5 [T]=6 [I]=7 [C]=8 [U]=9
[MASK]=10 and cover accents, CJK and emoji (byte-level BPE natively, sentencepiece through
byte fallback), so multi-byte streaming can be tested.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[Q]", "[A]", "[T]", "[I]", "[C]", "[U]", "[MASK]"]

TRAINING_TEXT = [
    "Hi, I'm Ann. What is your name?",
    "My name is Rex, the reactive transformer. I remember what you tell me.",
    "The short-term memory keeps a fixed number of slots, so every turn costs the same.",
    "Où est la bibliothèque ? Elle est à côté du café, près de l'école.",
    "Ça va très bien, merci ! Günther läuft über die Straße.",
    "東京は日本の首都です。私はラーメンが好きです。",
    "你好，世界！今天天气很好。",
    "안녕하세요, 반갑습니다.",
    "I love pizza 🍕 and coffee ☕, and my cat 🐈 loves fish 🐟. 😀👍🎉",
    "Numbers: 1, 2, 3, 42, 3.14 and 2025-10-01.",
    "What did I say my name was? You said your name is Ann.",
]

MULTIBYTE_SAMPLES = [
    "Où est la bibliothèque ? À côté du café.",
    "東京は日本の首都です。",
    "I love pizza 🍕 and my cat 🐈!",
    "Señor Müller 你好 😀👍 fin.",
]


def tokenizer_config(internal: bool = True) -> dict[str, Any]:
    """The ``tokenizer_config`` matching both factories; ``internal=False`` gives the RxT-Alpha form."""
    config = {
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 3,
        "query_token_id": 4,
        "answer_token_id": 5,
        "think_token_id": 6,
        "tool_call_token_id": 8,
        "tool_use_token_id": 9,
    }
    if internal:
        config["internal_token_id"] = 7
    return config


def write_bpe_tokenizer(folder: str | Path, vocab_size: int = 300, internal: bool = True) -> dict[str, Any]:
    """Train a byte-level BPE ``tokenizer.json`` like rxlm's into ``folder``.

    The default size fits the tiny models of ``tests.factories`` (``VOCAB_SIZE`` = 300).

    Like rxlm's files, the pre-tokenizer says ``add_prefix_space=true`` and no decoder is set.

    Returns:
        the matching ``tokenizer_config`` dict.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT * 4, trainer=trainer)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer_config(internal)


def write_sentencepiece_tokenizer(folder: str | Path, vocab_size: int = 400, internal: bool = True) -> dict[str, Any]:
    """Train a sentencepiece ``tokenizer.model`` (byte fallback, specials as control symbols).

    Its 256 byte pieces plus the characters of the training text need a vocabulary of ~380, more
    than ``tests.factories.VOCAB_SIZE``: pair it with a model config of ``vocab_size >= 400``.

    Returns:
        the matching ``tokenizer_config`` dict.
    """
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_TEXT * 4),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        hard_vocab_limit=False,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="[PAD]",
        unk_piece="[UNK]",
        bos_piece="[BOS]",
        eos_piece="[EOS]",
        control_symbols=SPECIAL_TOKENS[4:],
        minloglevel=2,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return tokenizer_config(internal)
