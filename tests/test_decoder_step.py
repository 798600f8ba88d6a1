"""The compiled single-token decoder step: the same logits as the uncompiled path and full recompute."""

from __future__ import annotations

import mlx.core as mx
import pytest

import rxt_mlx.decoder as decoder_module
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


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_compiled_step_equals_uncompiled_path_and_full_recompute(name, monkeypatch):
    model = random_mlx_model(PARITY_CONFIGS[name](), seed=5)
    decoder, ids = model.decoder, token_ids(12)
    memory = decoder.project_memory(model.initial_stm(1, seed=2))
    compiled = decode(decoder, ids, memory, prefix=4)
    monkeypatch.setattr(decoder_module, "_steppable", lambda cache: False)
    uncompiled = decode(decoder, ids, memory, prefix=4)
    full = decoder(ids, memory=memory)
    assert mx.allclose(compiled, uncompiled, atol=1e-5, rtol=1e-5).item()
    assert mx.allclose(compiled, full, atol=1e-4, rtol=1e-4).item()
    assert mx.array_equal(compiled.argmax(-1), full.argmax(-1)).item()


def test_step_crosses_cache_buffer_boundaries():
    config = tiny_config(seq_len=256)
    model = random_mlx_model(config, seed=6)
    decoder, ids = model.decoder, token_ids(decoder_module.CACHE_STEP * 2 + 5, seed=3)
    memory = decoder.project_memory(model.initial_stm(1, seed=4))
    stepped = decode(decoder, ids, memory, prefix=decoder_module.CACHE_STEP - 2)
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


def test_head_blocks_match_the_single_product(monkeypatch):
    model = random_mlx_model(tiny_config(), seed=8)
    decoder = model.decoder
    monkeypatch.setattr(decoder_module, "HEAD_BLOCK_MACS", 32 * 40)  # 64-row blocks at D=32
    x = mx.random.normal((1, 1, 32), key=mx.random.key(0))
    assert mx.allclose(decoder._step_head(x), decoder._head(x), atol=1e-6).item()
