"""A linear layer as several products over row blocks of its weight: CPU BLAS tuning, not model math."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

OPENBLAS_ONE_THREAD_MACS = 65_536 * 4
"""OpenBLAS runs a product of at most this many multiply-adds on the calling thread and a larger
one on its thread pool (``interface/gemm.c``: ``SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD``)."""

BLOCK_MACS = 196_608
"""Multiply-adds of one block (768 weight rows for one input row at D=256), under the threshold."""

MAX_BLOCKS = 16
"""A product needing more blocks than this (many input rows, a large vocabulary) stays whole."""


def linear_rows(x: mx.array, linear: nn.Module) -> mx.array:
    """``linear(x)``; on the CPU, in row blocks of the weight when that keeps OpenBLAS on one thread.

    A product of one or a few input rows (a decode step) above :data:`OPENBLAS_ONE_THREAD_MACS`
    goes to OpenBLAS's thread pool and waits for its slowest thread; when other processes keep
    the cores busy, that thread is often not running. Such a product is computed as blocks of
    about :data:`BLOCK_MACS` multiply-adds (each on the calling thread), if at most
    :data:`MAX_BLOCKS` are needed; the concatenated blocks equal ``linear(x)`` up to float
    rounding (~2e-6 on logits of magnitude 4). A layer that is not an ``nn.Linear`` (a
    quantized one), a product under the threshold and a device other than the CPU get one
    product.

    Measured with rxt-bench's RxT turns (32-token queries, 32 forced answer tokens, best of 3
    runs a turn) on its bench model (D=256, 6 layers, vocabulary 4096: the head is 6 blocks,
    each gated FFN projection 2) on a 2-core AMD EPYC VM with OpenBLAS 0.3.21, blocks and whole
    products interleaved turn by turn in one process while other processes kept the load
    average near 5: decode 87.7 tok/s in blocks, 70.3 tok/s whole (medians of 64 turns; paired
    whole/blocks 0.88), TTFT unchanged. On the idle machine the two are within the noise of
    the decode step, and a one-row product alone is faster whole (the head: 950 us against
    1134 us in blocks).

    Args:
        x: the input (..., D).
        linear: the layer.

    Returns:
        ``linear(x)`` (..., N).
    """
    weight = linear.weight
    rows = x.size // x.shape[-1]
    if type(linear) is not nn.Linear or mx.default_device() != mx.cpu or rows * weight.size <= OPENBLAS_ONE_THREAD_MACS:
        return linear(x)
    block = max(64, BLOCK_MACS // (rows * weight.shape[-1]))
    if weight.shape[0] > block * MAX_BLOCKS:
        return linear(x)
    bias = linear.bias if "bias" in linear else None
    products = []
    for start in range(0, weight.shape[0], block):
        part = weight[start : start + block].T
        products.append(x @ part if bias is None else mx.addmm(bias[start : start + block], x, part))
    return mx.concatenate(products, axis=-1)
