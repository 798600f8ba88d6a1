"""Linear layers as several products over row blocks of the weight: CPU BLAS tuning, not model math.

The blocks' outputs, concatenated, equal ``linear(x)`` up to float rounding (bit-identical for
the halves of a gated FFN; ~2e-6 on logits of magnitude 4 for a blocked head).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

BLOCK_MACS = 196_608
"""Multiply-adds of one head block for a one-row input (768 weight rows at D=256)."""

MAX_BLOCKS = 16
"""A head needing more blocks than this (a large vocabulary) stays one product."""


def linear_rows(x: mx.array, linear: nn.Module, parts: int | None = None) -> list[mx.array]:
    """``linear(x)`` (bias included) as products with consecutive row blocks of its weight.

    Args:
        x: the input (..., D).
        linear: an ``nn.Linear``; any other layer (a quantized one) is applied once and its
            output split.
        parts: this many equal blocks (the value and gate halves of a gated FFN); ``None``:
            blocks of about :data:`BLOCK_MACS` multiply-adds when ``x`` is one row and that
            makes 2 to :data:`MAX_BLOCKS` blocks, otherwise one product.

    Returns:
        The blocks' outputs in order along the last axis (concatenate them for ``linear(x)``).

    Why: MEASUREMENT
    Off the CPU (Metal) it is always one product.
    """
    weight = linear.weight
    if type(linear) is not nn.Linear or mx.default_device() != mx.cpu:
        out = linear(x)
        return mx.split(out, parts, axis=-1) if parts else [out]
    if parts is None:
        rows = max(64, BLOCK_MACS // weight.shape[-1])
        if x.size != x.shape[-1] or not rows < weight.shape[0] <= rows * MAX_BLOCKS:
            return [linear(x)]
    else:
        rows = -(-weight.shape[0] // parts)
    bias = linear.bias if "bias" in linear else None
    blocks = []
    for start in range(0, weight.shape[0], rows):
        block = weight[start : start + rows].T
        blocks.append(x @ block if bias is None else mx.addmm(bias[start : start + rows], x, block))
    return blocks
