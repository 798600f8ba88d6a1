"""One conversation with an RxT model: streamed answers, then the memory update.

A turn has two phases, exposed separately so an app can show the answer before the memory
update runs:

    for event in session.generate("Hi, I'm Ann."):     # TokenEvent..., AnswerDone
        ...
    session.update_memory()                            # -> MemoryUpdated

``interact()`` chains both. If ``generate()`` is called while the previous turn's update is still
pending, the update runs first: a turn never reads a stale STM.

Threading: all MLX work of a session must happen on one thread (for example a dedicated worker
thread of an app); the session keeps no thread-local state, so that thread need not be the one
that created it. Only :meth:`Session.stop` may be called from another thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from . import stm as stm_file
from .sampling import LogitsProcessor, SamplingOptions
from .tokenizer import RxTTokenizer


@dataclass(frozen=True)
class TokenEvent:
    """One answer token and the text it made printable (often ``""`` or one word)."""

    id: int
    text: str


@dataclass(frozen=True)
class AnswerDone:
    """The answer is complete (EOS, token budget or :meth:`Session.stop`).

    ``prompt_seconds``: the prefill, until the first token was computed (the STM's projection is
    done when the STM changes: at the memory update, a load, the session's creation);
    ``ttft_seconds``: from the ``generate()`` call to the first token (includes a pending memory
    update and tokenization); ``decode_tokens_per_second``: tokens after the first / their time.
    ``text`` is the decoded answer. It equals the concatenated ``TokenEvent.text`` pieces except
    after ``stop()``, when a held-back partial character or space may be missing from the stream.
    """

    tokens: int
    prompt_seconds: float
    ttft_seconds: float
    decode_tokens_per_second: float
    text: str
    stopped: bool


@dataclass(frozen=True)
class MemoryUpdated:
    """The STM now holds the interaction; ``turn`` completed turns so far.

    ``seconds``: the update (encoder + memory attention) and the new STM's decoder projection.
    """

    seconds: float
    turn: int


Event = TokenEvent | AnswerDone | MemoryUpdated


class QueryTooLong(ValueError):
    """The query with its template fills the decoder's context: no room is left for an answer."""


def answer_budget(seq_len: int, prompt_length: int, max_tokens: int) -> int:
    """Tokens an answer may take: the decoder context left after the prompt, at most ``max_tokens``.

    Raises :class:`QueryTooLong` when the prompt leaves no room.
    """
    room = seq_len - prompt_length
    if room < 1:
        raise QueryTooLong(
            f"query is {prompt_length} tokens with its template ([BOS][Q]...[A]); the decoder's seq_len "
            f"is {seq_len}, which leaves no room for an answer (shorten the query below {seq_len - 1} tokens)"
        )
    return min(max_tokens, room)


class Session:
    """A conversation: the STM, the turn counter and the generation loop.

    Args:
        model: an :class:`rxt_mlx.model.RxT`.
        tokenizer: its :class:`rxt_mlx.tokenizer.RxTTokenizer`.
        stm: the starting STM (L, 1, S, D); default ``model.initial_stm(1, seed=0)``.
        system_prompt: text written into the STM by one memory update before the first turn
            (RxT-Beta or RxT-Alpha form, see ``RxTTokenizer.system_prompt_ids``); not a turn.
        turn: completed turns the given STM already holds (used when resuming).

    Answer length: the decoder context is ``config.decoder.seq_len`` tokens for the whole
    interaction, so the answer budget is ``min(max_tokens, seq_len - len([BOS][Q]query[A]))``
    (rxlm bounds it the same way); a query that leaves no room raises :class:`QueryTooLong` (a ``ValueError``).
    """

    def __init__(self, model, tokenizer: RxTTokenizer, stm: mx.array | None = None, system_prompt=None, *, turn=0):
        self.model = model
        self.tokenizer = tokenizer
        layers, slots, dim = model.config.stm_shape
        self.stm_shape = (layers, 1, slots, dim)
        if stm is None:
            stm = model.initial_stm(batch=1, seed=0)
        if tuple(stm.shape) != self.stm_shape:
            raise ValueError(f"STM has shape {tuple(stm.shape)}, this model needs {self.stm_shape}")
        self._set_stm(stm)
        self.turn = turn
        self.created: str | None = None
        self._model_vocab = model.config.decoder.vocab_size
        self._sampling_vocab = min(self._model_vocab, tokenizer.vocab_size)
        model.decoder.warm_up(slots)  # the compiled decode step, traced once per model
        self._pending: list[int] | None = None
        self._stop = threading.Event()
        if system_prompt:
            self._apply_update(self._checked_ids(tokenizer.system_prompt_ids(system_prompt), "system prompt"))

    def _set_stm(self, stm: mx.array) -> None:
        """Make ``stm`` current, evaluated together with its decoder projection.

        The cross-attention keys/values are what the next answer needs from the STM; projecting
        them here (after a memory update, a load) takes that work off the next query's TTFT.
        """
        memory = self.model.decoder.project_memory(stm)
        mx.eval(stm, memory)
        self._stm, self._memory = stm, memory

    @property
    def stm(self) -> mx.array:
        """The current STM (L, 1, S, D); it excludes a turn whose memory update is pending."""
        return self._stm

    @property
    def memory(self):
        """The current STM's decoder projection (``Decoder.project_memory``), computed with it."""
        return self._memory

    @property
    def update_pending(self) -> bool:
        """Whether the last answer still waits for :meth:`update_memory`."""
        return self._pending is not None

    def stop(self) -> None:
        """End the generation in progress after the current token (thread-safe).

        The partial answer is kept and goes into the memory update.
        """
        self._stop.set()

    def interact(
        self,
        query: str,
        options: SamplingOptions | None = None,
        *,
        logits_processors: Sequence[LogitsProcessor] | None = None,
        **sampling: Any,
    ) -> Iterator[Event]:
        """One turn: ``TokenEvent``s, ``AnswerDone``, then ``MemoryUpdated``.

        Arguments as :meth:`generate`.
        """
        yield from self.generate(query, options, logits_processors=logits_processors, **sampling)
        yield self.update_memory()

    def generate(
        self,
        query: str,
        options: SamplingOptions | None = None,
        *,
        logits_processors: Sequence[LogitsProcessor] | None = None,
        **sampling: Any,
    ) -> Iterator[TokenEvent | AnswerDone]:
        """Stream the answer to ``query``: ``TokenEvent`` per token, then ``AnswerDone``.

        Args:
            query: the user's text (not empty).
            options: how to sample (default :class:`~rxt_mlx.sampling.SamplingOptions()`,
                greedy, 256 tokens at most).
            logits_processors: mlx-lm style ``(tokens, logits) -> logits`` callables applied
                after those of ``options`` (the repetition penalty), for example
                :func:`rxt_mlx.sampling.forced_tokens_processor`.
            **sampling: fields of :class:`~rxt_mlx.sampling.SamplingOptions` overriding
                ``options`` (``max_tokens=64, temperature=0.0``).

        The generator validates its arguments at the first ``next()``; it raises ``ValueError``
        for an empty query, a query too long for the decoder or invalid sampling values, and
        ``TypeError`` for an unknown sampling name. Afterwards call :meth:`update_memory` (or
        use :meth:`interact`).
        """
        started = time.perf_counter()
        options = SamplingOptions.of(options, **sampling)
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query must be non-empty text, got {query!r}")
        prompt = self.tokenizer.query_ids(query)
        budget = self._answer_budget(len(prompt), options.max_tokens)
        self._checked_ids(prompt, "query")
        if self._pending is not None:
            self._run_update()
        self._stop.clear()
        if options.seed is not None:
            mx.random.seed(options.seed)
        answer: list[int] = []
        processors = [*options.logits_processors(), *(logits_processors or ())]
        timing = yield from self._decode(prompt, budget, options.sampler(), processors, answer)
        prompt_seconds, first_token_at, last_token_at, stopped = timing
        self._pending = prompt + answer
        decode_seconds = last_token_at - first_token_at
        yield AnswerDone(
            tokens=len(answer),
            prompt_seconds=prompt_seconds,
            ttft_seconds=first_token_at - started if answer else 0.0,
            decode_tokens_per_second=(len(answer) - 1) / decode_seconds if len(answer) > 1 and decode_seconds else 0.0,
            text=self.tokenizer.decode(answer),
            stopped=stopped,
        )

    def _decode(self, prompt, budget, sampler, processors, answer):
        """The token loop (mlx-lm ``generate_step`` style: the next step is queued before yielding)."""
        decoder = self.model.decoder
        cache = decoder.make_cache()
        history = mx.array(prompt, dtype=mx.uint32)  # what the logits processors see
        eos = self.tokenizer.eos_id
        text_stream = self.tokenizer.streaming_detokenizer()

        def step(ids: mx.array) -> mx.array:
            logits = decoder(ids[None], cache=cache, memory=memory)[:, -1, : self._sampling_vocab]
            for processor in processors:
                logits = processor(history, logits)
            return sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

        prefill_started = time.perf_counter()
        memory = self._memory
        sampled = step(history)
        mx.async_eval(sampled)
        prompt_seconds = first_token_at = last_token_at = 0.0
        stopped = False
        for index in range(budget):
            is_last = index + 1 == budget
            if not is_last:
                if processors:
                    history = mx.concatenate([history, sampled])
                next_sampled = step(sampled)
                mx.async_eval(next_sampled)
            if index == 0:
                mx.eval(sampled)
                first_token_at = time.perf_counter()
                prompt_seconds = first_token_at - prefill_started
            if self._stop.is_set():
                stopped = True
                break
            token = sampled.item()
            answer.append(token)
            last_token_at = time.perf_counter()
            is_last = is_last or token == eos
            text = text_stream.add(token)
            yield TokenEvent(token, text + text_stream.finish() if is_last else text)
            if is_last:
                break
            sampled = next_sampled
        return prompt_seconds, first_token_at, last_token_at, stopped

    def update_memory(self) -> MemoryUpdated:
        """Run the pending memory update (encoder over the interaction, then memory attention).

        The interaction is ``[BOS][Q]query[A]answer``, ending with EOS when the model generated
        it (as in rxlm's ``interact``).
        """
        if self._pending is None:
            raise RuntimeError("no answer is waiting for a memory update (call generate() first)")
        return MemoryUpdated(self._run_update(), self.turn)

    def _run_update(self) -> float:
        seconds = self._apply_update(self._pending)
        self._pending = None
        self.turn += 1
        return seconds

    def _apply_update(self, interaction: list[int]) -> float:
        started = time.perf_counter()
        self._set_stm(self.model.update_memory(self._stm, mx.array([interaction], dtype=mx.uint32)))
        return time.perf_counter() - started

    def _checked_ids(self, ids: list[int], what: str) -> list[int]:
        out_of_vocab = [i for i in ids if i >= self._model_vocab]
        if out_of_vocab:
            raise ValueError(
                f"{what}: tokenizer produced id {out_of_vocab[0]} but the model vocabulary has "
                f"{self._model_vocab} entries (tokenizer and model do not match)"
            )
        limit = self.model.config.encoder.seq_len
        if len(ids) > limit:
            raise ValueError(f"{what} is {len(ids)} tokens, more than the model's seq_len {limit}")
        return ids

    def _answer_budget(self, prompt_length: int, max_tokens: int) -> int:
        return answer_budget(self.model.config.decoder.seq_len, prompt_length, max_tokens)

    def save_stm(self, path: str | Path) -> dict[str, str]:
        """Save the STM and turn counter atomically (see :func:`rxt_mlx.stm.save_stm`)."""
        metadata = stm_file.save_stm(
            path, self._stm, model_fingerprint=self.model.fingerprint, turn=self.turn, created=self.created
        )
        self.created = metadata["created"]
        return metadata

    def load_stm(self, path: str | Path) -> dict[str, str]:
        """Replace this session's STM and turn counter by a saved one.

        On refusal (an :class:`rxt_mlx.stm.STMFileError`) the session is unchanged.
        """
        stm, metadata = stm_file.load_stm(
            path,
            model_fingerprint=self.model.fingerprint,
            expected_shape=self.stm_shape,
            expected_dtype=self._stm.dtype,
        )
        self._set_stm(stm)
        self.turn, self.created, self._pending = int(metadata["turn"]), metadata["created"], None
        return metadata

    @classmethod
    def restore(cls, model, tokenizer: RxTTokenizer, path: str | Path) -> Session:
        """A session resuming from an STM file saved by :meth:`save_stm` for the same model."""
        session = cls(model, tokenizer)
        session.load_stm(path)
        return session
