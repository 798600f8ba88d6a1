"""One answer being decoded, token by token, as the serving worker streams it.

:class:`AnswerRow` is what :class:`rxt_mlx.session.Session` does around its decoder calls (the
token budget, EOS, a stop request checked before each token, the streaming detokenizer, the
timings), plus OpenAI's stop strings, for an answer decoded as one row of a batch. Both ways of
decoding (a row of a batch, or Session alone) end in a :class:`DecodedAnswer`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rxt_app.stop_strings import StopStrings


@dataclass(frozen=True)
class DecodedAnswer:
    """An answer before its memory update.

    ``ids``: the answer's tokens as a Session appends them (EOS included when generated);
    ``text``: what the client got (the answer before a stop string); ``cut``: a stop string
    ended it, so the memory takes ``text`` rather than ``ids``; ``stopped``: a stop request
    ended it (kept and memorised).
    """

    ids: list[int]
    text: str
    finish_reason: str
    stopped: bool
    cut: bool
    prompt_seconds: float
    ttft_seconds: float
    tokens_per_second: float


def finish_reason(cut: bool, last_token: int | None, eos: int, stopped: bool) -> str:
    """``stop`` (EOS or a stop string), ``cancelled`` (a stop request) or ``length`` (the budget)."""
    if cut or last_token == eos:
        return "stop"
    return "cancelled" if stopped else "length"


@dataclass
class AnswerRow:
    """One answer decoded as a row of a batch.

    Args:
        prompt: ``[BOS][Q]query[A]``.
        budget: most answer tokens (``min(max_tokens, seq_len - len(prompt))``).
        eos: the EOS id.
        stops: the request's stop strings.
        detokenizer: a fresh ``RxTTokenizer.streaming_detokenizer()``.
        decode: ``RxTTokenizer.decode`` (the final text, as Session gives it).
        show: called with each piece of text the client may see.
        stop_requested: whether the answer must end before its next token.
    """

    prompt: list[int]
    budget: int
    eos: int
    stops: StopStrings
    detokenizer: object
    decode: Callable[[list[int]], str]
    show: Callable[[str], None]
    stop_requested: Callable[[], bool]
    started: float = field(default_factory=time.perf_counter)
    ids: list[int] = field(default_factory=list)
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    stopped: bool = False

    def accept(self, token: int) -> bool:
        """Take the next sampled token; returns True when the answer is over."""
        now = time.perf_counter()
        if not self.ids:
            self.first_token_at = now
        if self.stop_requested():
            self.stopped = True
            return True
        self.ids.append(token)
        self.last_token_at = now
        last = len(self.ids) == self.budget or token == self.eos
        piece = self.detokenizer.add(token)
        self.show(self.stops.add(piece + self.detokenizer.finish() if last else piece))
        return last or self.stops.hit

    def result(self) -> DecodedAnswer:
        """The finished answer; the text held back for stop strings is shown now."""
        if self.stops.hit:
            text = self.stops.visible
        else:
            self.show(self.stops.finish())
            text = self.decode(self.ids)
            if text.startswith(self.stops.text):  # after a stop request, a held-back character
                self.show(text[len(self.stops.text) :])
        decode_seconds = self.last_token_at - self.first_token_at
        count = len(self.ids)
        return DecodedAnswer(
            ids=self.ids,
            text=text,
            finish_reason=finish_reason(self.stops.hit, self.ids[-1] if self.ids else None, self.eos, self.stopped),
            stopped=self.stopped,
            cut=self.stops.hit,
            prompt_seconds=self.first_token_at - self.started,
            ttft_seconds=self.first_token_at - self.started if self.ids else 0.0,
            tokens_per_second=(count - 1) / decode_seconds if count > 1 and decode_seconds else 0.0,
        )
