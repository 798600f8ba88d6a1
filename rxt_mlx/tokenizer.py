"""RxT tokenizer: ``tokenizer.json`` (HF ``tokenizers``) or ``tokenizer.model`` (sentencepiece).

The special-token ids come from the model's ``tokenizer_config`` (docs/architecture.md
§Tokenizer and template), never from the tokenizer file. Templates are built by concatenating
ids, which is what rxlm's tokenization of ``"[BOS][Q]query[A]"`` amounts to (added tokens
split the string, each piece is tokenized alone).

Byte-level BPE files made by rxlm say ``add_prefix_space=true`` and configure no decoder; rxlm
effectively tokenizes without a prefix space (transformers rewrites the pre-tokenizer), so we
load the file with ``add_prefix_space=false`` and a ByteLevel decoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import TokenizerConfig
from .errors import RxTError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
REPLACEMENT_CHARACTER = "\ufffd"  # what decoding gives for bytes that end inside a UTF-8 character


class TokenizerError(RxTError, ValueError):
    """The tokenizer file is missing or does not fit the model's tokenizer_config."""


class _HFBackend:
    """A ``tokenizers.Tokenizer`` loaded from tokenizer.json."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TokenizerError(f"{path}: cannot read tokenizer.json ({error})") from None
        self.byte_level = _disable_prefix_space(data.get("pre_tokenizer"))
        if self.byte_level and not data.get("decoder"):
            data["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        try:
            self.tokenizer = Tokenizer.from_str(json.dumps(data))
        except Exception as error:  # tokenizers raises a bare Exception on malformed files
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({error})") from None
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_ids = {i for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def id_to_piece(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id) or ""


class _SentencePieceBackend:
    """A sentencepiece model loaded from tokenizer.model."""

    def __init__(self, path: Path):
        import sentencepiece

        self.byte_level = False
        self.processor = sentencepiece.SentencePieceProcessor()
        try:
            self.processor.Load(str(path))
        except (OSError, RuntimeError) as error:
            raise TokenizerError(f"{path}: not a valid sentencepiece model ({error})") from None
        self.vocab_size = self.processor.get_piece_size()
        self.special_ids = {
            i for i in range(self.vocab_size) if self.processor.is_control(i) or self.processor.is_unknown(i)
        }

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)

    def id_to_piece(self, token_id: int) -> str:
        return self.processor.id_to_piece(token_id)


def _disable_prefix_space(pre_tokenizer: dict[str, Any] | None) -> bool:
    """Set every ByteLevel pre-tokenizer's add_prefix_space to False; True if there was one."""
    if not pre_tokenizer:
        return False
    if pre_tokenizer.get("type") == "ByteLevel":
        pre_tokenizer["add_prefix_space"] = False
        return True
    if pre_tokenizer.get("type") == "Sequence":
        found = [_disable_prefix_space(inner) for inner in pre_tokenizer.get("pretokenizers", [])]
        return any(found)
    return False


class TextStream:
    """Turns generated token ids into printable text pieces, one call per token.

    The pieces add up to :meth:`RxTTokenizer.decode` of the ids: each new id is decoded after
    the ids of the previous piece (its context: sentencepiece drops the space of a text's first
    piece, a byte-level piece may end inside a character), and the piece is the text it adds.
    Text ending inside a UTF-8 character is held back until the character is complete; special
    tokens and ids the tokenizer does not have print nothing.
    """

    def __init__(self, decode: Callable[[list[int]], str], skipped_ids: frozenset[int], vocab_size: int):
        self._decode = decode
        self._skipped_ids = skipped_ids
        self._vocab_size = vocab_size
        self._context: list[int] = []
        self._context_text = ""
        self._held: list[int] = []

    def add(self, token_id: int) -> str:
        """Add one token id; return the text that became printable (often ``""`` or one word)."""
        if token_id in self._skipped_ids or not 0 <= token_id < self._vocab_size:
            return ""
        self._held.append(token_id)
        text = self._decode(self._context + self._held)
        return "" if text.endswith(REPLACEMENT_CHARACTER) else self._flush(text)

    def finish(self) -> str:
        """Flush the text held back (an incomplete character becomes U+FFFD only here)."""
        return self._flush(self._decode(self._context + self._held)) if self._held else ""

    def _flush(self, text: str) -> str:
        piece = text[len(self._context_text) :]
        self._context, self._held = self._held, []
        self._context_text = self._decode(self._context)
        return piece


class RxTTokenizer:
    """Text <-> ids plus the RxT interaction templates.

    Args:
        backend: the loaded tokenizer file.
        config: the special-token ids of the model (``config.tokenizer``).
        system_prompt_title: the RxT-Beta system-prompt title (``config.system_prompt_title``).
    """

    def __init__(
        self,
        backend: _HFBackend | _SentencePieceBackend,
        config: TokenizerConfig,
        system_prompt_title: str = "SYSTEM INSTRUCTIONS",
    ):
        self._backend = backend
        self.config = config
        self.system_prompt_title = system_prompt_title
        self.vocab_size = backend.vocab_size
        template_ids = {name: value for name, value in config.to_dict().items() if value is not None}
        for name, value in template_ids.items():
            if not 0 <= value < self.vocab_size:
                raise TokenizerError(
                    f"tokenizer_config.{name} = {value} is outside the tokenizer vocabulary (size {self.vocab_size})"
                )
        self.special_ids = frozenset(template_ids.values()) | frozenset(backend.special_ids)

    @property
    def kind(self) -> str:
        """``"byte-level-bpe"``, ``"sentencepiece"`` or ``"other"`` (a non-byte-level tokenizer.json)."""
        if isinstance(self._backend, _SentencePieceBackend):
            return "sentencepiece"
        return "byte-level-bpe" if self._backend.byte_level else "other"

    @property
    def bos_id(self) -> int:
        return self.config.bos_token_id

    @property
    def eos_id(self) -> int:
        return self.config.eos_token_id

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        return list(self._backend.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens and ids outside the vocabulary are dropped."""
        return self._backend.decode([i for i in ids if i not in self.special_ids and 0 <= i < self.vocab_size])

    def query_ids(self, query: str) -> list[int]:
        """``[BOS][Q]query[A]``: the decoder prompt of one turn."""
        config = self.config
        return [config.bos_token_id, config.query_token_id, *self.encode(query), config.answer_token_id]

    def interaction_ids(self, query: str, answer: str | Sequence[int]) -> list[int]:
        """``[BOS][Q]query[A]answer[EOS]``: the encoder input of the memory update.

        ``answer`` is text or token ids; an answer whose ids already end with EOS keeps one EOS.
        """
        answer_ids = self.encode(answer) if isinstance(answer, str) else list(answer)
        if not answer_ids or answer_ids[-1] != self.eos_id:
            answer_ids.append(self.eos_id)
        return self.query_ids(query) + answer_ids

    def system_prompt_ids(self, text: str) -> list[int]:
        """The system prompt that initialises the STM through one memory update.

        RxT-Beta (the config has ``internal_token_id``): ``[BOS][I]{title}\\n\\n{text}[EOS]``;
        RxT-Alpha: ``[BOS][Q]{text}[A][EOS]`` (an interaction with an empty answer).
        """
        config = self.config
        if config.internal_token_id is not None:
            body = self.encode(f"{self.system_prompt_title}\n\n{text}")
            return [config.bos_token_id, config.internal_token_id, *body, config.eos_token_id]
        return self.interaction_ids(text, [])

    def streaming_detokenizer(self) -> TextStream:
        """A fresh :class:`TextStream` for one answer."""
        return TextStream(self._backend.decode, self.special_ids, self.vocab_size)


def find_tokenizer_file(folder: str | Path) -> Path:
    """The tokenizer file of a model folder (tokenizer.json preferred over tokenizer.model)."""
    folder = Path(folder)
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            return folder / name
    raise TokenizerError(f"{folder}: no tokenizer found (expected {' or '.join(TOKENIZER_FILES)})")


def load_tokenizer(
    folder: str | Path,
    tokenizer_config: TokenizerConfig | dict[str, Any],
    system_prompt_title: str = "SYSTEM INSTRUCTIONS",
) -> RxTTokenizer:
    """Load the tokenizer of a model folder.

    Args:
        folder: a folder with ``tokenizer.json`` or ``tokenizer.model`` (or the file itself).
        tokenizer_config: the model's special-token ids (``RxTConfig.tokenizer`` or its dict).
        system_prompt_title: title of the RxT-Beta system prompt (``RxTConfig.system_prompt_title``).

    Returns:
        An :class:`RxTTokenizer`.
    """
    path = Path(folder)
    if not path.is_file():
        path = find_tokenizer_file(path)
    if isinstance(tokenizer_config, dict):
        tokenizer_config = TokenizerConfig.from_dict(tokenizer_config)
    backend = _SentencePieceBackend(path) if path.suffix == ".model" else _HFBackend(path)
    return RxTTokenizer(backend, tokenizer_config, system_prompt_title)
