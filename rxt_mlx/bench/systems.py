"""The systems rxt-bench times, turn by turn, on one scripted conversation.

Each system plays the same :class:`Script` and returns a :class:`Timing` per turn: RxT through
:class:`rxt_mlx.session.Session` (:class:`RxTChat`), an mlx-lm decoder re-reading the history
(:class:`StatelessSystem`) and, as a plug-in registered by ``rxt_convert``, the PyTorch reference.
"""

from __future__ import annotations

import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points

SYSTEM_PLUGINS = "rxt_mlx.bench.systems"
"""Entry-point group of extra systems; ``rxt_convert`` registers ``reference`` (the PyTorch RxT)."""

_QUERY_WORDS = (
    "the memory of a reactive model keeps short notes about every turn while we talk over "
    "coffee and plans trips to old towns near rivers and hills with friends"
).split()


@dataclass
class Timing:
    """When the tokens of one answer arrived."""

    ttft_seconds: float
    decode_seconds: float
    tokens: int

    @property
    def decode_tokens_per_second(self) -> float:
        return (self.tokens - 1) / self.decode_seconds if self.tokens > 1 and self.decode_seconds > 0 else 0.0


def measure(tokens: Iterator[int]) -> Timing:
    """Consume a token stream; time to first token and first-to-last token time."""
    start = time.perf_counter()
    first = last = None
    count = 0
    for _ in tokens:
        last = time.perf_counter()
        first = first or last
        count += 1
    if first is None:
        raise RuntimeError("the system produced no token")
    return Timing(first - start, last - first, count)


def peak_memory() -> tuple[float, str]:
    """(MB, source): MLX's peak allocation since the last reset, else the process's peak RSS."""
    import mlx.core as mx

    peak = mx.get_peak_memory()
    if peak:
        return peak / 2**20, "mlx"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "rss"


@dataclass
class Script:
    """The scripted conversation: per turn the query text, its prompt ids and the forced answer."""

    query_texts: list[str]
    query_ids: list[list[int]]
    answer_ids: list[list[int]]
    end_ids: list[int]


def query_text(encode: Callable[[str], list[int]], n_tokens: int, seed: int) -> str:
    """Text of (at most, and normally exactly) ``n_tokens`` tokens, different for every seed.

    Words are added while they fit; single letters (spaced, then glued) fill the last tokens.
    """
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    text, count = "", 0
    while count < n_tokens:
        words = rng.sample(_QUERY_WORDS, len(_QUERY_WORDS))
        trials = [f"{text} {word}" if text else word for word in words]
        trials += [f"{text} {letter}" if text else letter for letter in letters]
        trials += [text + letter for letter in letters]
        for trial in trials:
            length = len(encode(trial))
            if count < length <= n_tokens:
                text, count = trial, length
                break
        else:
            break
    return text


def build_script(tokenizer, turns: int, query_tokens: int, answer_tokens: int, vocab_size: int, seed: int) -> Script:
    """N turns of queries of ``query_tokens`` tokens and random non-special answers of ``answer_tokens``."""
    rng = random.Random(seed)
    special = set(tokenizer.special_ids)
    ordinary = [token for token in range(min(vocab_size, tokenizer.vocab_size)) if token not in special]
    texts = [query_text(tokenizer.encode, query_tokens, seed * 1000 + turn) for turn in range(turns)]
    return Script(
        query_texts=texts,
        query_ids=[tokenizer.query_ids(text) for text in texts],
        answer_ids=[[rng.choice(ordinary) for _ in range(answer_tokens)] for _ in range(turns)],
        end_ids=[tokenizer.eos_id],
    )


class RxTChat:
    """The RxT side: one :class:`~rxt_mlx.session.Session`, answers forced by a logits processor."""

    def __init__(self, model, tokenizer, script: Script, seed: int):
        from rxt_mlx.session import Session

        self.script = script
        self.session = Session(model, tokenizer, stm=model.initial_stm(batch=1, seed=seed))
        self.memory_update_seconds: float | None = None

    def context_tokens(self, index: int) -> tuple[int, int]:
        """(tokens prefilled, tokens attended to by self-attention) of turn ``index``."""
        length = len(self.script.query_ids[index])
        return length, length

    def turn(self, index: int, commit: bool = True) -> Timing:
        """Answer turn ``index``, then update the memory; ``commit=False`` times it on a scratch session."""
        from rxt_mlx.sampling import forced_tokens_processor
        from rxt_mlx.session import MemoryUpdated, Session, TokenEvent

        query, answer = self.script.query_texts[index], list(self.script.answer_ids[index])
        forced = [forced_tokens_processor(answer)]
        if commit:
            events = self.session.interact(query, max_tokens=len(answer), logits_processors=forced)
        else:
            scratch = Session(self.session.model, self.session.tokenizer, stm=self.session.stm)
            events = scratch.generate(query, max_tokens=len(answer), logits_processors=forced)

        def tokens() -> Iterator[int]:
            for event in events:
                if isinstance(event, TokenEvent):
                    yield event.id
                elif isinstance(event, MemoryUpdated):
                    self.memory_update_seconds = event.seconds

        return measure(tokens())


class StatelessSystem:
    """The baseline side: a :class:`~rxt_mlx.bench.baseline.StatelessChat` playing the script."""

    def __init__(self, chat, script: Script):
        self.chat = chat
        self.script = script
        self.memory_update_seconds = None

    def context_tokens(self, index: int) -> tuple[int, int]:
        query = self.script.query_ids[index]
        return len(self.chat.prompt_for(query)), len(self.chat.history) + len(query)

    def turn(self, index: int, commit: bool = True) -> Timing:
        script = self.script
        return measure(
            self.chat.answer(script.query_ids[index], script.answer_ids[index], script.end_ids, commit=commit)
        )


def plugin_system(name: str):
    """The system factory registered under ``name`` in the :data:`SYSTEM_PLUGINS` entry-point group.

    A plug-in is found through the installed distributions' metadata, so the bench never imports
    the package that provides it (the PyTorch reference lives in ``rxt_convert``, which imports
    :mod:`rxt_mlx`). Raises ``SystemExit`` with the remedy when it is missing or cannot load.
    """
    found = [point for point in entry_points(group=SYSTEM_PLUGINS) if point.name == name]
    if not found:
        raise SystemExit(f"rxt-bench: no {name!r} system is installed (pip install -e '.[convert]' registers it)")
    try:
        return found[0].load()
    except ImportError as error:
        raise SystemExit(
            f"rxt-bench --{name} needs the PyTorch reference ({error}); pip install 'rxt-mlx[convert]'"
        ) from None
