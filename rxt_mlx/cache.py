"""The per-turn self-attention KV cache of the decoder (mlx-lm ``KVCache`` style, our own buffers).

A layer's keys/values live in preallocated buffers that grow :data:`CACHE_STEP` positions at a
time. A prefill attends causally to the filled prefix; a single new token attends to the whole
buffer under a mask of the filled positions, so its shapes depend on the buffer's capacity only
and :class:`rxt_mlx.decoder.Decoder` compiles that one-token call once per capacity.
"""

from __future__ import annotations

import mlx.core as mx

CACHE_STEP = 64
"""Growth step of the buffers (mlx-lm: 256). Each new capacity costs one trace of the compiled
one-token call (~20 ms, once per process) and that call attends over the whole buffer, so a
smaller step wastes less work."""

Mask = mx.array | str | None


class KVCache:
    """Keys and values (B, H_kv, capacity, hd) of one self-attention layer.

    ``offset`` is the number of filled positions: a Python int, or a scalar int32 array while
    the decoder traces its compiled one-token call (see :meth:`at`).
    """

    def __init__(self, step: int = CACHE_STEP):
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset: int | mx.array = 0
        self.step = step

    @classmethod
    def at(cls, keys: mx.array, values: mx.array, offset: mx.array) -> KVCache:
        """A cache over existing buffers with ``offset`` (scalar array) filled positions.

        The buffers must already have room for the tokens to come (:meth:`reserve`): a traced
        offset cannot decide whether to grow them.
        """
        cache = cls()
        cache.keys, cache.values, cache.offset = keys, values, offset
        return cache

    @property
    def capacity(self) -> int:
        """Positions the buffers hold (filled or not)."""
        return 0 if self.keys is None else self.keys.shape[2]

    def reserve(self, length: int, like: tuple[mx.array, mx.array] | None = None) -> None:
        """Grow the buffers (whole steps, filled prefix kept) so ``length`` more positions fit.

        ``like``: keys and values of the new positions, giving the buffers' batch, heads, head
        size and dtype when there are none yet.
        """
        needed = self.offset + length
        if needed <= self.capacity:
            return
        keys, values = (self.keys, self.values) if self.keys is not None else like or (None, None)
        if keys is None:
            raise ValueError("KVCache.reserve: an empty cache needs like=(keys, values) to size its buffers")
        capacity = -(-needed // self.step) * self.step
        self.keys = _resized(keys, self.offset, capacity)
        self.values = _resized(values, self.offset, capacity)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array, Mask]:
        """Append ``keys``/``values`` (B, H_kv, T, hd); return what the new queries attend to.

        Returns ``(keys, values, mask)`` for :func:`mx.fast.scaled_dot_product_attention`: for
        several tokens the filled prefix and ``"causal"``; for one token the whole buffers and
        the (capacity,) mask of the positions up to and including it.
        """
        length = keys.shape[2]
        if isinstance(self.offset, int):
            self.reserve(length, like=(keys, values))
        if length == 1:
            start = mx.array(self.offset, dtype=mx.int32).reshape(1)
            self.keys = mx.slice_update(self.keys, keys, start, axes=(2,))
            self.values = mx.slice_update(self.values, values, start, axes=(2,))
            mask = mx.arange(self.capacity) <= self.offset
            self.offset = self.offset + 1
            return self.keys, self.values, mask
        previous = self.offset
        self.offset = previous + length
        self.keys[..., previous : self.offset, :] = keys
        self.values[..., previous : self.offset, :] = values
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :], "causal"


def _resized(buffer: mx.array, filled: int, capacity: int) -> mx.array:
    """``buffer``'s first ``filled`` positions followed by zeros, ``capacity`` positions in all."""
    shape = (*buffer.shape[:2], capacity - filled, buffer.shape[3])
    empty = mx.zeros(shape, dtype=buffer.dtype)
    return mx.concatenate([buffer[..., :filled, :], empty], axis=2) if filled else empty
