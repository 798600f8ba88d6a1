"""rxlm attention (MHA / GQA / MQA / SQA) with optional RoPE, gating and KV cache.

One class covers every attention of the three components; what differs between them
(which side gets RoPE, output bias, gating) is decided by the constructor arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from rxt_mlx.cache import KVCache
from rxt_mlx.config import AttentionShape
from rxt_mlx.layers import activation


@dataclass(frozen=True)
class RotaryTables:
    """cos/sin of the rotary angles at some positions, (T, hd/2), computed once per decode step
    and shared by every attention of the decoder (see :meth:`Rope.tables`)."""

    cos: mx.array
    sin: mx.array


@dataclass(frozen=True)
class Rope:
    """Interleaved ("traditional", GPT-J) rotary embedding over the whole head dimension.

    In half precision the reference rounds the angles ``position * inv_freq`` to the
    activation dtype before cos/sin (a bf16-trained model learned those rotations), so the
    angles are rounded the same way here; fp32 uses ``mx.fast.rope``.
    """

    head_dim: int
    base: float

    def __call__(self, x: mx.array, offset: int | mx.array | RotaryTables = 0) -> mx.array:
        """Rotate ``x`` (..., T, hd) whose first position is ``offset`` (or by precomputed tables)."""
        if isinstance(offset, RotaryTables):
            return _rotate(x, offset.cos, offset.sin)
        if x.dtype == mx.float32:
            return mx.fast.rope(x, self.head_dim, traditional=True, base=self.base, scale=1.0, offset=offset)
        return _rotate(x, *self._rounded_cos_sin(offset, x.shape[-2], x.dtype))

    def tables(self, offset: mx.array, length: int, dtype: mx.Dtype) -> RotaryTables:
        """cos/sin of positions ``offset .. offset + length - 1`` for activations of ``dtype``.

        Rotating with them gives exactly what ``self(x, offset)`` gives (in fp32 the same
        formula as MLX's CPU ``fast.rope``, bit for bit; in half precision the rounded angles).
        """
        if dtype != mx.float32:
            return RotaryTables(*self._rounded_cos_sin(offset, length, dtype))
        half = self.head_dim // 2
        inv_freq = mx.exp(-mx.arange(0.0, half) * (math.log(self.base) / half))
        angles = (mx.arange(length) + offset).astype(mx.float32)[:, None] * inv_freq
        return RotaryTables(mx.cos(angles), mx.sin(angles))

    def _rounded_cos_sin(self, offset: int | mx.array, length: int, dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
        exponents = mx.arange(0, self.head_dim, 2, dtype=mx.float32) / self.head_dim
        inv_freq = 1.0 / mx.power(mx.array(self.base, dtype=mx.float32), exponents)
        positions = (mx.arange(length) + offset).astype(mx.float32)  # offset: int or scalar array
        angles = (positions[:, None] * inv_freq).astype(dtype)  # (T, hd/2)
        return mx.cos(angles), mx.sin(angles)


def _rotate(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    even, odd = x[..., 0::2], x[..., 1::2]
    return mx.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(x.shape)


class Attention(nn.Module):
    """``softmax(q kᵀ / sqrt(hd)) v`` followed by ``out_proj``, rxlm style.

    Args:
        embed_dim: model width D.
        shape: head layout from :func:`rxt_mlx.config.attention_shape`.
        output_bias: whether ``out_proj`` has a bias.
        gated: add ``gate_proj``; the concatenated heads are multiplied by
            ``gate_activation(gate_proj(query_input))`` before ``out_proj``.
        gate_activation: activation name of the gate.
        rope: rotary embedding, or None for position-free attention.
        rope_queries / rope_keys: which side the rotary embedding is applied to.
    """

    def __init__(
        self,
        embed_dim: int,
        shape: AttentionShape,
        *,
        output_bias: bool,
        gated: bool = False,
        gate_activation: str = "sigmoid",
        rope: Rope | None = None,
        rope_queries: bool = True,
        rope_keys: bool = True,
    ):
        super().__init__()
        self.shape = shape
        hd = shape.head_dim
        self.q_proj = nn.Linear(embed_dim, shape.query_heads * hd, bias=False)
        self.k_proj = nn.Linear(embed_dim, shape.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(embed_dim, shape.kv_heads * hd, bias=False)
        self.out_proj = nn.Linear(shape.out_heads * hd, embed_dim, bias=output_bias)
        if gated:
            self.gate_proj = nn.Linear(embed_dim, shape.out_heads * hd, bias=False)
            self.gate_activation = activation(gate_activation)
        self.rope = rope
        self.rope_queries = rope is not None and rope_queries
        self.rope_keys = rope is not None and rope_keys
        self.scale = 1.0 / math.sqrt(hd)

    def _heads(self, x: mx.array, heads: int) -> mx.array:
        batch, length, _ = x.shape
        return x.reshape(batch, length, heads, self.shape.head_dim).transpose(0, 2, 1, 3)

    def project_kv(self, source: mx.array, offset: int | mx.array | RotaryTables = 0) -> tuple[mx.array, mx.array]:
        """Keys and values ``(B, H_kv, T, hd)`` of ``source`` (RoPE on keys if configured)."""
        keys = self._heads(self.k_proj(source), self.shape.kv_heads)
        values = self._heads(self.v_proj(source), self.shape.kv_heads)
        if self.rope_keys:
            keys = self.rope(keys, offset)
        return keys, values

    def __call__(
        self,
        x: mx.array,
        context: mx.array | None = None,
        *,
        kv: tuple[mx.array, mx.array] | None = None,
        mask: mx.array | str | None = None,
        cache: KVCache | None = None,
        offset: int | mx.array | RotaryTables = 0,
    ) -> mx.array:
        """Attend from ``x`` (B, T, D) to ``context`` (default: ``x``) or to precomputed ``kv``.

        ``offset`` is the position of ``x[:, 0]`` (for RoPE: an int, a scalar array or the
        tables of :meth:`Rope.tables`). ``cache`` receives the new keys/values and returns what
        to attend to, with its own mask in place of ``mask``.
        """
        queries = self._heads(self.q_proj(x), self.shape.query_heads)
        if self.rope_queries:
            queries = self.rope(queries, offset)
        keys, values = kv if kv is not None else self.project_kv(x if context is None else context, offset)
        if cache is not None:
            keys, values, mask = cache.update_and_fetch(keys, values)
        return self._attend(x, queries, keys, values, mask)

    def _attend(self, x: mx.array, queries: mx.array, keys: mx.array, values: mx.array, mask) -> mx.array:
        if keys.shape[0] != queries.shape[0]:
            keys = mx.broadcast_to(keys, (queries.shape[0], *keys.shape[1:]))
            values = mx.broadcast_to(values, (queries.shape[0], *values.shape[1:]))
        if self.shape.query_heads < self.shape.kv_heads:
            # revSQA: output head j uses query head j mod Hq
            queries = mx.tile(queries, (1, self.shape.kv_heads // self.shape.query_heads, 1, 1))
        out = mx.fast.scaled_dot_product_attention(queries, keys, values, scale=self.scale, mask=mask)
        batch, _, length, _ = out.shape
        out = out.transpose(0, 2, 1, 3).reshape(batch, length, -1)
        if "gate_proj" in self:
            out = out * self.gate_activation(self.gate_proj(x))
        return self.out_proj(out)


def key_padding_mask(mask: mx.array | None) -> mx.array | None:
    """(B, T) keep-mask (1/True = real token) to the (B, 1, 1, T) boolean SDPA mask."""
    if mask is None:
        return None
    return (mask != 0)[:, None, None, :]
