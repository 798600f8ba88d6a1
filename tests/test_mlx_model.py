"""The MLX RxT: shapes, cached decoding, batching, weights, save/load, quantization, memory gates."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear

import rxt_mlx
from rxt_mlx.attention import Rope
from rxt_mlx.config import ConfigError
from rxt_mlx.model import RxT, load_model, quantize_model, save_model
from rxt_mlx.weights import WeightError, load_weights, to_rxlm
from tests.factories import (
    PARITY_CONFIGS,
    beta_config,
    random_mlx_model,
    rev_sqa_config,
    tiny_config,
    write_model_folder,
)

TOLERANCE = 1e-4


def relative_error(actual: mx.array, expected: mx.array) -> float:
    actual, expected = np.array(actual, dtype=np.float64), np.array(expected, dtype=np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def token_ids(batch: int, length: int, seed: int = 1) -> mx.array:
    return mx.random.randint(10, 300, (batch, length), key=mx.random.key(seed)).astype(mx.int32)


@pytest.fixture(scope="module", params=list(PARITY_CONFIGS))
def model(request) -> RxT:
    return random_mlx_model(PARITY_CONFIGS[request.param](), seed=0)


def test_shapes_and_dtypes(model):
    layers, slots, dim = model.config.stm_shape
    ids = token_ids(2, 7)
    stm = model.initial_stm(batch=2, seed=3)
    assert stm.shape == (layers, 2, slots, dim) and stm.dtype == mx.float32
    logits = model.decoder(ids, stm)
    hidden = model.encoder(ids)
    new_stm = model.memory_attention(stm, hidden)
    assert logits.shape == (2, 7, model.config.decoder.vocab_size) and logits.dtype == mx.float32
    assert hidden.shape == (layers, 2, 7, dim) and hidden.dtype == mx.float32
    assert new_stm.shape == stm.shape and new_stm.dtype == mx.float32
    assert np.isfinite(np.array(logits)).all() and np.isfinite(np.array(new_stm)).all()


def test_initial_stm_is_seeded_standard_normal(model):
    first, again, other = model.initial_stm(1, seed=5), model.initial_stm(1, seed=5), model.initial_stm(1, seed=6)
    assert mx.array_equal(first, again) and not mx.array_equal(first, other)
    values = np.array(model.initial_stm(4, seed=0))
    assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05


def test_cached_decoding_matches_full_recompute(model):
    ids = token_ids(1, 12)
    stm = model.initial_stm(1, seed=2)
    full = model.decoder(ids, stm)
    memory = model.decoder.project_memory(stm)
    cache = model.decoder.make_cache()
    steps = [model.decoder(ids[:, :5], cache=cache, memory=memory)]
    for position in range(5, 9):
        steps.append(model.decoder(ids[:, position : position + 1], cache=cache, memory=memory))
    steps.append(model.decoder(ids[:, 9:], cache=cache, memory=memory))  # a multi-token chunk after the prefix
    assert cache[0].offset == 12
    assert relative_error(mx.concatenate(steps, axis=1), full) < TOLERANCE


def test_projected_memory_equals_stm(model):
    ids = token_ids(1, 6)
    stm = model.initial_stm(1, seed=4)
    from_stm = model.decoder(ids, stm)
    from_memory = model.decoder(ids, memory=model.decoder.project_memory(stm))
    assert mx.array_equal(from_stm, from_memory)
    with pytest.raises(ValueError, match="STM"):
        model.decoder(ids)


class CountingLinear(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def __call__(self, x: mx.array) -> mx.array:
        self.calls += 1
        return self.inner(x)


def test_memory_is_projected_once_per_turn():
    model = random_mlx_model(beta_config(), seed=1)
    counters = []
    for layer in model.decoder.layers:
        layer.memory_cross_attention.k_proj = CountingLinear(layer.memory_cross_attention.k_proj)
        counters.append(layer.memory_cross_attention.k_proj)
    memory = model.decoder.project_memory(model.initial_stm())
    cache = model.decoder.make_cache()
    ids = token_ids(1, 6)
    model.decoder(ids[:, :3], cache=cache, memory=memory)
    for position in range(3, 6):
        model.decoder(ids[:, position : position + 1], cache=cache, memory=memory)
    assert [counter.calls for counter in counters] == [1] * len(counters)


def test_batch_of_two_equals_two_single_runs(model):
    ids = token_ids(2, 9)
    stm = model.initial_stm(2, seed=7)
    logits = model.decoder(ids, stm)
    new_stm = model.update_memory(stm, ids)
    for row in range(2):
        single_ids, single_stm = ids[row : row + 1], stm[:, row : row + 1]
        assert relative_error(logits[row : row + 1], model.decoder(single_ids, single_stm)) < TOLERANCE
        assert relative_error(new_stm[:, row : row + 1], model.update_memory(single_stm, single_ids)) < TOLERANCE


def test_decoder_broadcasts_a_single_stm(model):
    ids = token_ids(2, 5)
    stm = model.initial_stm(1, seed=8)
    logits = model.decoder(ids, stm)
    assert relative_error(logits[1:], model.decoder(ids[1:], stm)) < TOLERANCE


def test_padding_mask_matches_unpadded_interaction(model):
    ids = token_ids(2, 10)
    mask = mx.array([[1] * 10, [1] * 7 + [0] * 3])
    stm = model.initial_stm(2, seed=9)
    hidden = model.encoder(ids, mask)
    new_stm = model.update_memory(stm, ids, mask)
    short_ids, short_stm = ids[1:, :7], stm[:, 1:]
    assert relative_error(hidden[:, 1:, :7], model.encoder(short_ids)) < TOLERANCE
    assert relative_error(new_stm[:, 1:], model.update_memory(short_stm, short_ids)) < TOLERANCE


def test_strict_loader_names_every_problem():
    model = random_mlx_model(beta_config(), seed=0)
    weights = dict(tree_flatten(model.parameters()))
    del weights["decoder.head.bias"]
    weights["decoder.layers.0.attention.rope.cache"] = mx.zeros((64, 4))
    weights["encoder.layers.1.norm1.weight"] = mx.zeros((63,))
    with pytest.raises(WeightError) as error:
        load_weights(RxT(beta_config()), weights)
    message = str(error.value)
    assert "decoder.head.bias" in message and "missing" in message
    assert "decoder.layers.0.attention.rope.cache" in message and "unexpected" in message
    assert "encoder.layers.1.norm1.weight: expected (64,), got (63,)" in message


@pytest.mark.parametrize("make_config", [beta_config, rev_sqa_config])
def test_save_load_round_trip_is_bit_exact(tmp_path, make_config):
    model = random_mlx_model(make_config(), seed=3)
    folder = save_model(model, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "rxt-mlx" and config["format_version"] == 1
    loaded = load_model(folder)
    original, restored = dict(tree_flatten(model.parameters())), dict(tree_flatten(loaded.parameters()))
    assert sorted(original) == sorted(restored)
    assert all(mx.array_equal(original[name], restored[name]) for name in original)
    assert loaded.config.to_dict() == {**model.config.to_dict(), "format": "rxt-mlx", "format_version": 1}
    ids, stm = token_ids(1, 6), model.initial_stm(1, seed=1)
    assert mx.array_equal(model.decoder(ids, stm), loaded.decoder(ids, stm))
    assert mx.array_equal(model.update_memory(stm, ids), loaded.update_memory(stm, ids))
    assert loaded.fingerprint == model.fingerprint
    other = load_model(write_model_folder(tmp_path / "other", make_config(), seed=4))
    assert other.fingerprint != loaded.fingerprint


def test_load_model_reads_shards(tmp_path):
    model = random_mlx_model(tiny_config(), seed=0)
    folder = save_model(model, tmp_path / "model")
    weights = mx.load(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        mx.save_safetensors(str(folder / file), {key: weights[key] for key in keys})
    weight_map = {key: file for file, keys in shards.items() for key in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ids, stm = token_ids(1, 4), model.initial_stm(1)
    assert mx.array_equal(load_model(folder).decoder(ids, stm), model.decoder(ids, stm))


def test_load_model_rejects_unconverted_and_incomplete_folders(tmp_path):
    folder = write_model_folder(tmp_path / "model", tiny_config(), seed=0)
    config = json.loads((folder / "config.json").read_text())
    weights = mx.load(str(folder / "model.safetensors"))
    del weights["memory_attention.attention_layers.1.out_proj.bias"]
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    with pytest.raises(WeightError, match=r"memory_attention\.attention_layers\.1\.out_proj\.bias"):
        load_model(folder)
    del config["format"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="rxt-convert"):
        load_model(folder)


def test_rxt_mlx_load_returns_model_and_tokenizer(tmp_path):
    from tests.tokenizer_factories import write_bpe_tokenizer

    folder = write_model_folder(tmp_path / "model", tiny_config(), seed=0, tokenizer_writer=write_bpe_tokenizer)
    model, tokenizer = rxt_mlx.load(folder)
    assert isinstance(model, rxt_mlx.RxT) and tokenizer.eos_id == 3
    ids = mx.array([tokenizer.query_ids("Hi")], dtype=mx.int32)
    assert model.decoder(ids, model.initial_stm()).shape == (1, ids.shape[1], 300)


def test_quantized_model_saves_loads_and_runs(tmp_path):
    model = random_mlx_model(beta_config(), seed=5)
    ids, stm = token_ids(1, 8), model.initial_stm(1, seed=2)
    reference = model.decoder(ids, stm)
    quantize_model(model, bits=8, group_size=32)
    assert model.config.extra["quantization"] == {"bits": 8, "group_size": 32}
    layer = model.decoder.layers[0]
    assert isinstance(layer.attention.q_proj, nn.QuantizedLinear)
    assert isinstance(layer.ff.experts.up_proj, QuantizedSwitchLinear)
    assert isinstance(model.decoder.embedding, nn.QuantizedEmbedding)
    assert type(layer.ff.router.gate) is nn.Linear and type(layer.ff.shared_expert_gate) is nn.Linear
    assert type(layer.norm1) is nn.RMSNorm
    quantized = model.decoder(ids, stm)
    assert relative_error(quantized, reference) < 0.05
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, bits=4, group_size=32)
    loaded = load_model(save_model(model, tmp_path / "q8"))
    assert mx.array_equal(loaded.decoder(ids, stm), quantized)
    assert loaded.fingerprint == model.fingerprint
    assert loaded.update_memory(stm, ids).shape == stm.shape


@pytest.mark.parametrize(("bits", "group_size"), [(5, 64), (4, 16)])
def test_quantize_rejects_unsupported_settings(bits, group_size):
    with pytest.raises(ValueError, match=str(bits if bits == 5 else group_size)):
        quantize_model(random_mlx_model(tiny_config(), seed=0), bits, group_size)


def _one_layer_update(memory_attention: dict, gate_logit: float | None = None):
    """The main gate, STM, main attention output and updated STM of a 1-layer simple memory attention."""
    model = random_mlx_model(tiny_config(num_layers=1, memory_attention=memory_attention), seed=6)
    attention = model.memory_attention
    gate = attention.residual_gate_layers[0]
    if gate_logit is not None:
        gate.gate = mx.full(gate.gate.shape, gate_logit)
    stm = model.initial_stm(2, seed=1)
    hidden = model.encoder(token_ids(2, 6))
    new = attention.attention_layers[0](
        attention.memory_norm_layers[0](stm[0]), attention.memory_input_norm_layers[0](hidden[0])
    )
    return gate, stm[0], new, attention(stm, hidden)[0]


GATED = {"use_gated_residual": True, "residual_gate_type": "static"}


@pytest.mark.parametrize(
    ("settings", "gate_logit", "expected"),
    [
        ({"use_gated_residual": False}, None, lambda old, new: new + old),
        ({"use_gated_residual": True, "disable_residual": True}, None, lambda old, new: new),
        ({**GATED, "use_tanh_residual_gate": False}, 0.0, lambda old, new: 0.5 * new + 0.5 * old),
        ({**GATED, "use_tanh_residual_gate": False}, 30.0, lambda old, new: new),
        ({**GATED, "use_tanh_residual_gate": True}, 0.0, lambda old, new: new + old),
        ({**GATED, "use_tanh_residual_gate": True}, -30.0, lambda old, new: 2 * old),
        ({**GATED, "residual_per_slot_gate": True, "use_tanh_residual_gate": False}, -30.0, lambda old, new: old),
    ],
)
def test_residual_gate_formulas(settings, gate_logit, expected):
    _, old, new, updated = _one_layer_update(settings, gate_logit)
    assert relative_error(updated, expected(old, new)) < TOLERANCE


def test_elementwise_gate_depends_on_the_slot_state():
    settings = {"use_gated_residual": True, "residual_gate_type": "elementwise", "residual_per_slot_gate": True}
    gate, old, new, updated = _one_layer_update({**settings, "use_tanh_residual_gate": False})
    value = mx.sigmoid(gate.gate * (new + old).mean(axis=-1, keepdims=True))
    assert relative_error(updated, value * new + (1 - value) * old) < TOLERANCE


@pytest.mark.parametrize("variant", ["self", "interlayer", "self-interlayer"])
def test_residual_base_is_the_pre_step_state(variant):
    """``main(U) = U + Attn(...)`` without gates: the update starts from the variant's ``U``, not ``S``."""
    config = tiny_config(memory_attention={"use_gated_residual": False}, memory_attention_variant=variant)
    model = random_mlx_model(config, seed=7)
    attention = model.memory_attention
    stm = model.initial_stm(1, seed=3)
    hidden = model.encoder(token_ids(1, 5))
    mean = attention.mean_stm_norm(stm.mean(axis=0)) if variant != "self" else None
    for index in range(2):
        state = stm[index]
        if variant == "self":
            normed = attention.self_memory_norm_layers[index](state)
            pre = state + attention.self_attention_layers[index](normed)
        else:
            normed = attention.mean_memory_norm_layers[index](state)
            keys = mean if variant == "interlayer" else normed + mean
            pre = state + attention.mean_attention_layers[index](normed, keys)
        main = attention.attention_layers[index](
            attention.memory_norm_layers[index](pre), attention.memory_input_norm_layers[index](hidden[index])
        )
        assert relative_error(attention(stm, hidden)[index], pre + main) < TOLERANCE


def test_grouped_variant_means_over_each_group():
    model = random_mlx_model(beta_config(), seed=8)
    attention = model.memory_attention
    stm = model.initial_stm(1, seed=4)
    means = attention._layer_means(stm)
    for group in range(2):
        expected = attention.mean_stm_norm(stm[2 * group : 2 * group + 2].mean(axis=0))
        assert relative_error(means[group], expected) < 1e-6


def test_half_precision_rope_rounds_angles_like_the_reference():
    """bf16 models rotate by ``bf16(position * inv_freq)``, as the reference does (docs/architecture.md §RoPE)."""
    rope = Rope(head_dim=8, base=10000.0)
    x = mx.random.normal((1, 1, 4, 8), key=mx.random.key(0))
    rotated = rope(x.astype(mx.bfloat16), offset=1000).astype(mx.float32)
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, 8, 2, dtype=np.float32) / 8)
    angles = mx.array(np.arange(1000, 1004, dtype=np.float32)[:, None] * inv_freq)
    angles = np.array(angles.astype(mx.bfloat16).astype(mx.float32))
    even, odd = np.array(x)[..., 0::2], np.array(x)[..., 1::2]
    expected = np.stack(
        [even * np.cos(angles) - odd * np.sin(angles), even * np.sin(angles) + odd * np.cos(angles)], -1
    )
    assert relative_error(rotated, expected.reshape(x.shape)) < 2e-2
    exact = rope(x, offset=1000)  # fp32: exact angles, visibly different at this position
    assert relative_error(exact, expected.reshape(x.shape)) > 0.1


def test_moe_matches_rxlm_math_on_canonical_weights():
    """Routed experts through SwitchGLU equal ``sum_k w_k (a * act(g)) w2`` with ``[a|g] = x w1`` + biases."""
    config = rev_sqa_config()
    model = random_mlx_model(config, seed=2)
    moe = model.decoder.layers[0].ff
    weights = {name: np.array(value, np.float64) for name, value in tree_flatten(moe.parameters())}
    canonical = to_rxlm(dict(tree_flatten(model.parameters())))
    w1, w2 = canonical["decoder.model.layers.0.ff.w1"], canonical["decoder.model.layers.0.ff.w2"]
    x = np.array(mx.random.normal((5, config.decoder.embed_dim), key=mx.random.key(3)), np.float64)
    logits = x @ weights["router.gate.weight"].T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1)[:, : config.decoder.moe_top_k]
    expected = np.zeros_like(x)
    for token in range(x.shape[0]):
        chosen = probs[token, top[token]]
        for expert, weight in zip(top[token], chosen / (chosen.sum() + 1e-9), strict=True):
            value, gate = np.split(x[token] @ w1[expert], 2)
            hidden = value * np.array(nn.gelu(mx.array(gate.astype(np.float32))), np.float64)
            expected[token] += weight * (hidden @ w2[expert])
    expected += weights["global_bias"]
    shared = moe.shared_expert(mx.array(x.astype(np.float32)))
    expected = expected * (2 / 3) + (np.array(shared, np.float64) + weights["shared_experts_bias"]) / 3
    assert relative_error(moe(mx.array(x.astype(np.float32))), expected) < TOLERANCE
