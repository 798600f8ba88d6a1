"""Train the sentencepiece tokenizer of a demo model on dialogue text.

The model is BPE with byte fallback (any text is encodable, held-out names included),
digits split one by one, and the RxT interaction tokens at fixed ids:
[PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3 [Q]=4 [A]=5 [T]=6 [I]=7. [Q] [A] [T] [I] are control
symbols: they are never produced from user text, only placed by the interaction template.
``rxt-train`` trains it on :func:`rxt_mlx.bench.dialogues.template_lines`, the dialogue text with the
entity values cut out: template words become whole pieces, while every name, city or number is
spelled in short pieces, the same way whether the model saw that value in training or not,
which is what lets the model copy a value it never saw.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from rxt_mlx.errors import RxTError

TOKENIZER_FILE = "tokenizer.model"
SPECIAL_TOKENS = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3, "[Q]": 4, "[A]": 5, "[T]": 6, "[I]": 7}


def tokenizer_config() -> dict[str, int]:
    """The rxlm ``tokenizer_config`` matching :data:`SPECIAL_TOKENS`."""
    return {
        "pad_token_id": SPECIAL_TOKENS["[PAD]"],
        "bos_token_id": SPECIAL_TOKENS["[BOS]"],
        "eos_token_id": SPECIAL_TOKENS["[EOS]"],
        "query_token_id": SPECIAL_TOKENS["[Q]"],
        "answer_token_id": SPECIAL_TOKENS["[A]"],
        "think_token_id": SPECIAL_TOKENS["[T]"],
        "internal_token_id": SPECIAL_TOKENS["[I]"],
    }


def train_tokenizer(
    lines: Iterable[str],
    folder: str | Path,
    vocab_size: int = 1024,
    max_piece_length: int = 6,
    seed: int = 0,
) -> Path:
    """Train on ``lines`` and write ``folder/tokenizer.model``; returns its path.

    Args:
        lines: training text, one sentence per item.
        folder: output folder (created).
        vocab_size: total vocabulary including the 8 special tokens and 256 byte pieces.
        max_piece_length: longest piece in characters; short pieces keep entity values
            composed of pieces seen in many other values.
        seed: sentencepiece's sampling seed, for reproducible models.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        _train(lines, model, vocab_size, max_piece_length)
    except RuntimeError as error:
        raise TokenizerTrainingError(_training_advice(str(error), vocab_size)) from None
    path = folder / TOKENIZER_FILE
    path.write_bytes(model.getvalue())
    check_special_ids(path)
    return path


class TokenizerTrainingError(RxTError, ValueError):
    """sentencepiece could not train a tokenizer of the requested size on the training text."""


def _training_advice(message: str, vocab_size: int) -> str:
    """sentencepiece's failure as what to change in the rxt-train config."""
    small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if small:
        return (
            f"vocab_size {vocab_size} is too small for the training text: its characters, the byte pieces and "
            f"the special tokens alone need {small[2]}; set vocab_size to at least {small[2]} in the config"
        )
    large = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
    if large:
        return (
            f"vocab_size {vocab_size} is more than the training text can fill (at most {large[2]} pieces); "
            f"set vocab_size to at most {large[2]}, or train on more text (tokenizer_conversations)"
        )
    return f"training the tokenizer (vocab_size {vocab_size}) failed: {' '.join(message.split())}"


def _train(lines: Iterable[str], model: io.BytesIO, vocab_size: int, max_piece_length: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines)),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        max_sentencepiece_length=max_piece_length,
        pad_id=SPECIAL_TOKENS["[PAD]"],
        unk_id=SPECIAL_TOKENS["[UNK]"],
        bos_id=SPECIAL_TOKENS["[BOS]"],
        eos_id=SPECIAL_TOKENS["[EOS]"],
        pad_piece="[PAD]",
        unk_piece="[UNK]",
        bos_piece="[BOS]",
        eos_piece="[EOS]",
        control_symbols=["[Q]", "[A]", "[T]", "[I]"],
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )


def check_special_ids(path: str | Path) -> None:
    """Raise ``ValueError`` if ``path``'s special pieces are not at the fixed ids."""
    processor = spm.SentencePieceProcessor(model_file=str(path))
    for piece, expected in SPECIAL_TOKENS.items():
        actual = processor.piece_to_id(piece)
        if actual != expected:
            raise ValueError(f"{path}: special token {piece} has id {actual}, expected {expected}")
