"""The decoder's cached forward path: the compiled one-token call equals the same path run
uncompiled and the full recompute; the KV cache it relies on; the row-blocked CPU products."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from rxt_mlx import cpu_matmul
from rxt_mlx.cache import CACHE_STEP, KVCache
from rxt_mlx.model import quantize_model
from tests.factories import PARITY_CONFIGS, random_mlx_model, tiny_config


def token_ids(length: int, seed: int = 1) -> mx.array:
    return mx.random.randint(10, 300, (1, length), key=mx.random.key(seed)).astype(mx.int32)


def decode(decoder, ids: mx.array, memory, prefix: int) -> mx.array:
    """Logits of a prefill of ``prefix`` tokens then one decoder call per remaining token."""
    cache = decoder.make_cache()
    steps = [decoder(ids[:, :prefix], cache=cache, memory=memory)]
    steps += [
        decoder(ids[:, position : position + 1], cache=cache, memory=memory) for position in range(prefix, ids.shape[1])
    ]
    assert cache[0].offset == ids.shape[1]
    return mx.concatenate(steps, axis=1)


def uncompiled_decode(decoder, ids, memory, prefix):
    mx.disable_compile()
    try:
        return decode(decoder, ids, memory, prefix)
    finally:
        mx.enable_compile()


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_compiled_step_equals_uncompiled_path_and_full_recompute(name):
    model = random_mlx_model(PARITY_CONFIGS[name](), seed=5)
    decoder, ids = model.decoder, token_ids(12)
    memory = decoder.project_memory(model.initial_stm(1, seed=2))
    compiled = decode(decoder, ids, memory, prefix=4)
    uncompiled = uncompiled_decode(decoder, ids, memory, prefix=4)
    full = decoder(ids, memory=memory)
    assert mx.allclose(compiled, uncompiled, atol=1e-5, rtol=1e-5).item()
    assert mx.allclose(compiled, full, atol=1e-4, rtol=1e-4).item()
    assert mx.array_equal(compiled.argmax(-1), full.argmax(-1)).item()


def test_step_crosses_cache_buffer_boundaries():
    config = tiny_config(seq_len=256)
    model = random_mlx_model(config, seed=6)
    decoder, ids = model.decoder, token_ids(CACHE_STEP * 2 + 5, seed=3)
    memory = decoder.project_memory(model.initial_stm(1, seed=4))
    stepped = decode(decoder, ids, memory, prefix=CACHE_STEP - 2)
    assert mx.allclose(stepped, decoder(ids, memory=memory), atol=1e-4, rtol=1e-4).item()


def test_step_picks_up_replaced_and_quantized_weights():
    model = random_mlx_model(tiny_config(embed_dim=64), seed=7)
    decoder, ids = model.decoder, token_ids(6)
    memory = decoder.project_memory(model.initial_stm(1, seed=1))
    decode(decoder, ids, memory, prefix=3)  # traces the compiled step
    decoder.head.bias = decoder.head.bias + 1.0
    assert mx.allclose(decode(decoder, ids, memory, prefix=3), decoder(ids, memory=memory), atol=1e-4).item()
    quantize_model(model, bits=8, group_size=32)
    memory = decoder.project_memory(model.initial_stm(1, seed=1))
    assert mx.allclose(decode(decoder, ids, memory, prefix=3), decoder(ids, memory=memory), atol=1e-3).item()


def test_cache_appends_in_buffers_that_grow_by_whole_steps():
    cache = KVCache(step=4)
    keys = mx.random.normal((2, 3, 7, 5), key=mx.random.key(0))
    values = keys + 1
    fetched_keys, fetched_values, mask = cache.update_and_fetch(keys[:, :, :3], values[:, :, :3])
    assert mask == "causal" and fetched_keys.shape == (2, 3, 3, 5) and cache.capacity == 4
    for position in (3, 4):
        fetched_keys, fetched_values, mask = cache.update_and_fetch(
            keys[:, :, position : position + 1], values[:, :, position : position + 1]
        )
    assert cache.offset == 5 and cache.capacity == 8 and fetched_keys.shape == (2, 3, 8, 5)
    assert mask.tolist() == [True] * 5 + [False] * 3
    assert mx.array_equal(fetched_keys[:, :, :5], keys[:, :, :5]).item()
    assert mx.array_equal(fetched_values[:, :, :5], values[:, :, :5]).item()
    fetched_keys, _, mask = cache.update_and_fetch(keys[:, :, 5:], values[:, :, 5:])
    assert mask == "causal" and mx.array_equal(fetched_keys, keys).item()


@pytest.mark.parametrize(("rows", "bias"), [(1, True), (1, False), (3, True)])
def test_row_blocks_match_the_single_product(monkeypatch, rows, bias):
    monkeypatch.setattr(cpu_matmul, "OPENBLAS_ONE_THREAD_MACS", 1000)
    monkeypatch.setattr(cpu_matmul, "BLOCK_MACS", 64 * 32)  # 64-row blocks for one row at D=32
    linear = nn.Linear(32, 320, bias=bias)
    x = mx.random.normal((1, rows, 32), key=mx.random.key(0))
    assert mx.allclose(cpu_matmul.linear_rows(x, linear), linear(x), atol=1e-6).item()


def test_small_and_quantized_products_stay_whole():
    linear = nn.Linear(32, 320)
    x = mx.random.normal((1, 1, 32), key=mx.random.key(0))
    assert mx.array_equal(cpu_matmul.linear_rows(x, linear), linear(x)).item()
    quantized = nn.QuantizedLinear.from_linear(nn.Linear(64, 8192), group_size=32, bits=8)
    x = mx.random.normal((1, 1, 64), key=mx.random.key(1))
    assert mx.array_equal(cpu_matmul.linear_rows(x, quantized), quantized(x)).item()
