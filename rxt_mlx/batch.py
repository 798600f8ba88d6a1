"""Decoding several conversations' answers together: one decoder call per step for every row.

Each row is one answer with its own STM (its projected memory, see
:meth:`rxt_mlx.decoder.Decoder.project_memory`), its own prompt and its own positions. A row is
prefilled as :class:`rxt_mlx.session.Session` prefills (rows joining together in one call, their
prompts padded on the right); then its self-attention keys/values are copied into the batch's
buffers, where every row writes its next token at its own position under a mask of its own
filled positions. Rows are never padded on the left: the memory cross-attention rotates queries
by the token's position, so shifted positions would change the answer. Rows leave when their
answer ends, and new rows can join between steps. :func:`update_memories` runs the memory
updates of answers that ended together as one batch.

Greedy answers decoded in a batch are the ones a Session decodes alone (each row's numbers go
through the same operations; tests/test_batch.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from rxt_mlx.attention import RotaryTables
from rxt_mlx.cache import CACHE_STEP
from rxt_mlx.decoder import Decoder, MemoryKV


class RowCache:
    """One layer's keys/values (B, H_kv, capacity, hd) for rows at different ``offsets`` (B,).

    Same interface as :class:`rxt_mlx.cache.KVCache` for one token per row: each row's new
    keys/values go to its own offset, and its mask covers its own filled positions.
    """

    def __init__(self, keys: mx.array, values: mx.array, offsets: mx.array):
        self.keys, self.values, self.offsets = keys, values, offsets

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        positions = mx.arange(self.keys.shape[2])
        written = (positions[None, :] == self.offsets[:, None])[:, None, :, None]  # (B, 1, capacity, 1)
        self.keys = mx.where(written, keys, self.keys)
        self.values = mx.where(written, values, self.values)
        mask = (positions[None, :] <= self.offsets[:, None])[:, None, None, :]  # (B, 1, 1, capacity)
        return self.keys, self.values, mask


@dataclass
class _Buffers:
    keys: list[mx.array]
    values: list[mx.array]


class DecodeBatch:
    """The rows being decoded together; see the module docstring.

    Args:
        decoder: the model's decoder.
        vocab: logits kept per token (the sampling vocabulary, as ``Session`` keeps).
    """

    def __init__(self, decoder: Decoder, vocab: int):
        self.decoder = decoder
        self.vocab = vocab
        self.layers = decoder.all_layers()
        self.offsets: list[int] = []
        self._buffers: _Buffers | None = None
        self._memory: MemoryKV = []
        self._compiled = mx.compile(self._step, inputs=decoder)

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def capacity(self) -> int:
        return 0 if self._buffers is None else self._buffers.keys[0].shape[2]

    def add(self, prompt: list[int], memory: MemoryKV) -> mx.array:
        """Prefill a new row (alone) and add it last; returns its next-token logits (1, vocab)."""
        return self.add_rows([prompt], [memory])

    def add_rows(self, prompts: list[list[int]], memories: list[MemoryKV]) -> mx.array:
        """Prefill new rows together and add them last, in order; returns their next-token logits (n, vocab).

        The prompts are padded on the right to the longest: a causal prefill never lets a token
        see the padding after it, and each row's mask in the later steps covers its own prompt
        only, so each row gets what it gets prefilled alone. One row is prefilled exactly as
        :class:`~rxt_mlx.session.Session` does.
        """
        lengths = [len(prompt) for prompt in prompts]
        longest = max(lengths)
        ids = mx.array([prompt + [0] * (longest - len(prompt)) for prompt in prompts], dtype=mx.uint32)
        memory = memories[0] if len(memories) == 1 else concatenated_rows(memories)
        cache = self.decoder.make_cache()
        logits = self.decoder(ids, cache=cache, memory=memory)
        last = mx.array(lengths, dtype=mx.int32).reshape(-1, 1, 1) - 1
        logits = mx.take_along_axis(logits, last, axis=1)[:, 0, : self.vocab]
        needed = max([longest, *self.offsets]) + 1
        self._reserve(needed)
        capacity = max(self.capacity, -(-needed // CACHE_STEP) * CACHE_STEP)
        row_keys = [_padded(layer.keys[..., :longest, :], capacity) for layer in cache]
        row_values = [_padded(layer.values[..., :longest, :], capacity) for layer in cache]
        if self._buffers is None:
            self._buffers = _Buffers(row_keys, row_values)
            self._memory = list(memory)
        else:
            self._buffers.keys = [mx.concatenate(pair) for pair in zip(self._buffers.keys, row_keys, strict=True)]
            self._buffers.values = [mx.concatenate(p) for p in zip(self._buffers.values, row_values, strict=True)]
            self._memory = concatenated_rows([self._memory, memory])
        self.offsets.extend(lengths)
        return logits

    def remove(self, index: int) -> None:
        """Drop row ``index`` (its answer ended); the rows after it move up by one."""
        del self.offsets[index]
        if not self.offsets:
            self._buffers, self._memory = None, []
            return
        kept = mx.array([row for row in range(len(self.offsets) + 1) if row != index])
        self._buffers.keys = [keys[kept] for keys in self._buffers.keys]
        self._buffers.values = [values[kept] for values in self._buffers.values]
        self._memory = [(keys[kept], values[kept]) for keys, values in self._memory]

    def step(self, tokens: mx.array) -> mx.array:
        """Feed each row its next token ``tokens`` (B,); returns the next logits (B, vocab)."""
        self._reserve(max(self.offsets) + 1)
        offsets = mx.array(self.offsets, dtype=mx.int32)
        logits, keys, values = self._compiled(
            tokens.reshape(-1, 1), offsets, self._buffers.keys, self._buffers.values, self._memory
        )
        self._buffers.keys, self._buffers.values = keys, values
        self.offsets = [offset + 1 for offset in self.offsets]
        return logits

    def _step(self, tokens, offsets, keys, values, memory):
        decoder = self.decoder
        caches = [RowCache(k, v, offsets) for k, v in zip(keys, values, strict=True)]
        x = decoder.embedding(tokens)
        positions = row_positions(self.layers, offsets, x.dtype)
        stateful = iter(memory)
        for layer, cache in zip(self.layers, caches, strict=True):
            layer_memory = next(stateful) if "memory_cross_attention" in layer else None
            x = layer(x, mask=None, memory=layer_memory, cache=cache, offset=positions)
        if "head_norm" in decoder:
            x = decoder.head_norm(x)
        logits = decoder.head(x)[:, -1, : self.vocab]
        return logits, [cache.keys for cache in caches], [cache.values for cache in caches]

    def _reserve(self, length: int) -> None:
        """Grow the buffers (whole CACHE_STEPs) so positions up to ``length`` fit."""
        if length <= self.capacity or self._buffers is None:
            return
        capacity = -(-length // CACHE_STEP) * CACHE_STEP
        self._buffers.keys = [_padded(keys, capacity) for keys in self._buffers.keys]
        self._buffers.values = [_padded(values, capacity) for values in self._buffers.values]


def concatenated_rows(memories: list[MemoryKV]) -> MemoryKV:
    """The projected memories of several rows as one batch: each layer's keys and values concatenated."""
    return [
        (mx.concatenate([keys for keys, _ in layer]), mx.concatenate([values for _, values in layer]))
        for layer in zip(*memories, strict=True)
    ]


def update_memories(model, stms: list[mx.array], interactions: list[list[int]]) -> list[mx.array]:
    """Each row's memory update at once: STM_t (L, 1, S, D) of every STM_{t-1} in ``stms`` with its
    interaction ``[BOS][Q]query[A]answer`` (``RxT.update_memory``, one call over all rows).

    The interactions are padded on the right to the longest, under the padding mask of the
    encoder's self-attention and the memory attention's keys, so each row's STM is the one its
    update alone gives (up to float rounding of the batched products). One row runs exactly as
    :class:`~rxt_mlx.session.Session` runs it.
    """
    if len(stms) == 1:
        return [model.update_memory(stms[0], mx.array(interactions, dtype=mx.uint32))]
    longest = max(len(interaction) for interaction in interactions)
    ids = mx.array([row + [0] * (longest - len(row)) for row in interactions], dtype=mx.uint32)
    mask = mx.array([[True] * len(row) + [False] * (longest - len(row)) for row in interactions])
    updated = model.update_memory(mx.concatenate(stms, axis=1), ids, mask)
    return [mx.take(updated, mx.array([row]), axis=1) for row in range(len(stms))]  # copies: no row keeps the batch


def row_positions(layers, offsets: mx.array, dtype: mx.Dtype):
    """Each row's RoPE tables at its own position ``offsets`` (B,), shaped to broadcast over heads
    (B, 1, 1, hd/2); the same values ``Rope.tables`` gives one row at that offset."""
    rope = layers[0].attention.rope if layers else None
    if rope is None:
        return offsets.reshape(-1, 1, 1, 1)
    tables = rope.tables(offsets.reshape(-1, 1), 1, dtype)
    shape = (offsets.shape[0], 1, 1, -1)
    return RotaryTables(tables.cos.reshape(shape), tables.sin.reshape(shape))


def _padded(buffer: mx.array, capacity: int) -> mx.array:
    """``buffer`` (B, H, T, hd) followed by zeros up to ``capacity`` positions."""
    missing = capacity - buffer.shape[2]
    if missing <= 0:
        return buffer
    zeros = mx.zeros((*buffer.shape[:2], missing, buffer.shape[3]), dtype=buffer.dtype)
    return mx.concatenate([buffer, zeros], axis=2)
