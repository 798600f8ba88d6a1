"""Sampling settings of one answer, validated, turned into mlx-lm samplers and logits processors.

A logits processor is mlx-lm's ``(tokens, logits) -> logits`` callable: ``tokens`` are the ids
so far (prompt and answer), ``logits`` (1, V) the next token's. mlx-lm is imported only when a
sampler is built: importing it pulls in transformers, and the command line validates these
settings before it loads anything heavy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlx.core as mx

LogitsProcessor = Callable[["mx.array", "mx.array"], "mx.array"]


@dataclass(frozen=True)
class SamplingOptions:
    """How one answer is generated; invalid values raise ``ValueError`` naming the value.

    Args:
        max_tokens: most answer tokens (>= 1); EOS ends the answer earlier.
        temperature: 0 is greedy (argmax); > 0 samples.
        top_p: nucleus sampling mass in (0, 1]; 1 disables it.
        top_k: keep the k most likely tokens; 0 disables it.
        min_p: drop tokens below ``min_p`` x the top probability, in [0, 1); 0 disables it.
        repetition_penalty: > 0 (1 or ``None`` disables it), over the last 20 tokens incl. the query.
        seed: seeds MLX's global random generator before the answer (``None``: not reseeded).
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float | None = None
    seed: int | None = None

    def __post_init__(self):
        _check_int("max_tokens", self.max_tokens, minimum=1)
        _check_int("top_k", self.top_k, minimum=0)
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=0)
        _check_number("temperature", self.temperature, lambda v: v >= 0, ">= 0")
        _check_number("top_p", self.top_p, lambda v: 0 < v <= 1, "in (0, 1]")
        _check_number("min_p", self.min_p, lambda v: 0 <= v < 1, "in [0, 1)")
        if self.repetition_penalty is not None:
            _check_number("repetition_penalty", self.repetition_penalty, lambda v: v > 0, "> 0 (or None to disable it)")

    @classmethod
    def of(cls, options: SamplingOptions | None = None, **overrides: Any) -> SamplingOptions:
        """``options`` (default: all defaults) with the fields named in ``overrides`` replaced.

        Raises ``TypeError`` for an unknown field name or an ``options`` that is not
        SamplingOptions, ``ValueError`` for an invalid value.
        """
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"sampling options must be SamplingOptions, got {options!r}")
        unknown = sorted(set(overrides) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            names = ", ".join(field.name for field in dataclasses.fields(cls))
            raise TypeError(f"unknown sampling option {', '.join(unknown)} (expected one of {names})")
        return dataclasses.replace(options or cls(), **overrides)

    def sampler(self):
        """The mlx-lm sampler: log-probabilities (1, V) -> token (1,)."""
        from mlx_lm.sample_utils import make_sampler

        return make_sampler(self.temperature, top_p=self.top_p, min_p=self.min_p, top_k=self.top_k)

    def logits_processors(self) -> list[LogitsProcessor]:
        """The mlx-lm logits processors (the repetition penalty, when set and not 1)."""
        if self.repetition_penalty in (None, 1.0):
            return []
        from mlx_lm.sample_utils import make_logits_processors

        return make_logits_processors(repetition_penalty=self.repetition_penalty)

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of :meth:`rxt_mlx.session.Session.interact`."""
        return dataclasses.asdict(self)


def forced_tokens_processor(token_ids: Sequence[int]) -> LogitsProcessor:
    """A logits processor that leaves only ``token_ids[i]`` possible at its ``i``-th call.

    For benchmarks: the answer is scripted, yet the model does the work of a free decode. The
    last id stays forced after the script ends (mlx-lm's ``generate_step`` computes one step
    past its last token); end the answer with ``max_tokens=len(token_ids)``.
    """
    ids = [int(token) for token in token_ids]
    if not ids or min(ids) < 0:
        raise ValueError(f"forced token ids must be a non-empty list of ids >= 0, got {list(token_ids)!r}")
    import mlx.core as mx

    calls, vocab = 0, mx.arange(0)

    def force(tokens: mx.array, logits: mx.array) -> mx.array:
        nonlocal calls, vocab
        token = ids[min(calls, len(ids) - 1)]
        calls += 1
        if token >= logits.shape[-1]:
            raise ValueError(f"forced token id {token} is outside the {logits.shape[-1]} logits")
        if vocab.size != logits.shape[-1]:
            vocab = mx.arange(logits.shape[-1])
        return mx.where(vocab == token, logits, -mx.inf)

    return force


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any, valid: Callable[[float], bool], expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or not valid(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
