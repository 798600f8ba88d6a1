"""The PyTorch reference RxT: rxlm key layout (docs/architecture.md §rxlm names), math checked against naive loops."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from rxt_convert.reference import RxTDecoder, RxTMemoryAttention, RxTReference
from rxt_convert.reference.checkpoint import legacy_moe_state_dict, load_reference, save_rxlm
from rxt_convert.reference.feedforward import MoeFeedForward
from rxt_convert.reference.layers import Attention, KVCache, RotaryPositionalEmbedding
from rxt_convert.reference.memory_attention import ResidualGate
from rxt_convert.reference.testing import randomize_, tiny_beta_config
from safetensors import safe_open

from rxt_mlx.config import MemoryAttentionConfig, TransformerConfig, attention_shape

torch.set_num_threads(1)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def random_model(variant: str = "grouped-self-interlayer", seed: int = 0, **overrides) -> RxTReference:
    torch.manual_seed(seed)
    model = RxTReference(tiny_beta_config(variant, **overrides))
    return randomize_(model, generator(seed)).eval()


# ----------------------------------------------------------------------------------------------
# Key layout (docs/architecture.md §rxlm names)

ROPE = {"rope.inv_freq": (4,), "rope.cache": (64, 4)}
DECODER_SELF = {
    **ROPE,
    "q_proj.weight": (32, 64),
    "k_proj.weight": (16, 64),
    "v_proj.weight": (16, 64),
    "out_proj.weight": (64, 32),
    "gate_proj.weight": (32, 64),
}
DECODER_CROSS = {
    **ROPE,
    "q_proj.weight": (32, 64),
    "k_proj.weight": (16, 64),
    "v_proj.weight": (16, 64),
    "out_proj.weight": (64, 32),
}
MOE = {
    "w1": (8, 64, 32),
    "w2": (8, 16, 64),
    "global_bias": (64,),
    "shared_w1": (2, 64, 48),
    "shared_w2": (2, 24, 64),
    "shared_experts_bias": (64,),
    "router.gate.weight": (8, 64),
    "shared_expert_gate.weight": (2, 64),
}
DENSE_96 = {"fc1.linear.weight": (192, 64), "fc1.linear.bias": (192,), "fc2.weight": (64, 96), "fc2.bias": (64,)}
NORM = (64,)


def prefixed(prefix: str, table: dict) -> dict:
    return {f"{prefix}.{key}": value for key, value in table.items()}


def expected_decoder_keys() -> dict[str, tuple[int, ...]]:
    keys = {
        "model.embedding.weight": (300, 64),
        "model.stm.memory": (4, 1, 16, 64),
        "model.head.weight": (300, 64),
        "model.head.bias": (300,),
        "model.head_norm.weight": NORM,
    }
    for layer in range(4):
        base = f"model.layers.{layer}"
        keys |= prefixed(f"{base}.attention", DECODER_SELF) | prefixed(f"{base}.memory_cross_attention", DECODER_CROSS)
        keys |= prefixed(f"{base}.ff", MOE) | {f"{base}.{norm}.weight": NORM for norm in ("norm1", "norm2", "norm3")}
        keys[f"{base}.stm_norm.weight"] = NORM
    stateless = {
        "model.stateless_layers.0": DENSE_96,
        "model.stateless_layers.1": MOE,
        "model.final_stateless_layers.0": MOE,
    }
    for base, ff in stateless.items():
        keys |= prefixed(f"{base}.attention", DECODER_SELF) | prefixed(f"{base}.ff", ff)
        keys |= {f"{base}.norm1.weight": NORM, f"{base}.norm3.weight": NORM}
    return keys


def expected_encoder_keys() -> dict[str, tuple[int, ...]]:
    keys = {"model.embedding.weight": (300, 64)}
    attention = {**ROPE, **{f"{p}_proj.weight": (32, 64) for p in "qkv"}}
    attention |= {"out_proj.weight": (64, 32), "gate_proj.weight": (32, 64)}
    for layer in range(4):
        base = f"model.layers.{layer}"
        keys |= prefixed(f"{base}.attention", attention) | prefixed(f"{base}.ff", DENSE_96)
        keys |= {f"{base}.norm1.weight": NORM, f"{base}.norm3.weight": NORM}
    return keys


MEMORY_ATTENTION = {f"{p}_proj.weight": (32, 64) for p in "qkv"} | {"out_proj.weight": (64, 32), "out_proj.bias": NORM}
GATE = {"gate": (16, 1)}


def expected_memory_attention_keys(variant: str) -> dict[str, tuple[int, ...]]:
    keys = {"model.stm.memory": (4, 1, 16, 64)}
    if variant in ("interlayer", "self-interlayer", "grouped-self-interlayer"):
        keys["model.mean_stm_norm.weight"] = NORM
    for layer in range(4):
        keys |= prefixed(f"model.attention_layers.{layer}", {**ROPE, **MEMORY_ATTENTION})
        keys |= {f"model.{name}.{layer}.weight": NORM for name in ("memory_norm_layers", "memory_input_norm_layers")}
        keys |= prefixed(f"model.residual_gate_layers.{layer}", GATE)
        if variant == "self":
            keys |= prefixed(f"model.self_attention_layers.{layer}", MEMORY_ATTENTION)
            keys[f"model.self_memory_norm_layers.{layer}.weight"] = NORM
        if variant in ("interlayer", "self-interlayer", "grouped-self-interlayer"):
            keys |= prefixed(f"model.mean_attention_layers.{layer}", MEMORY_ATTENTION)
            keys[f"model.mean_memory_norm_layers.{layer}.weight"] = NORM
            keys |= prefixed(f"model.mean_residual_gate_layers.{layer}", GATE)
        if variant in ("self-interlayer", "grouped-self-interlayer"):
            keys |= prefixed(f"model.interlayer_gate_layers.{layer}", GATE)
    return keys


def test_decoder_and_encoder_keys_match_rxlm():
    model = RxTReference(tiny_beta_config())
    assert shapes(model.decoder) == expected_decoder_keys()
    assert len(model.decoder.state_dict()) == 152
    assert shapes(model.encoder) == expected_encoder_keys()
    assert len(model.encoder.state_dict()) == 53


@pytest.mark.parametrize("variant", ["simple", "self", "interlayer", "self-interlayer", "grouped-self-interlayer"])
def test_memory_attention_keys_match_rxlm(variant):
    model = RxTMemoryAttention(tiny_beta_config(variant).memory_attention, variant)
    assert shapes(model) == expected_memory_attention_keys(variant)
    if variant == "grouped-self-interlayer":
        assert len(model.state_dict()) == 74


def test_full_model_shares_embedding_and_stm():
    model = RxTReference(tiny_beta_config())
    state = model.state_dict()
    assert model.decoder.model.embedding.weight is model.encoder.model.embedding.weight
    assert model.decoder.model.stm is model.memory_attention.model.stm
    assert "decoder.model.embedding.weight" in state and "encoder.model.embedding.weight" in state
    assert "decoder.model.stm.memory" in state and "memory_attention.model.stm.memory" in state
    assert model.decoder.model.layers[0].attention.rope is model.decoder.model.layers[3].memory_cross_attention.rope


def test_legacy_defaults_add_bias_and_shared_expert_keys():
    config = tiny_beta_config(
        decoder={"use_attention_output_bias": True, "num_shared_experts": 1, "moe_shared_experts_bias_mode": "local"},
        encoder={"skip_memory_cross_attention": False},
    )
    model = RxTReference(config)
    keys = set(model.state_dict())
    for key in (
        "decoder.model.layers.0.attention.out_proj.bias",
        "decoder.model.layers.0.memory_cross_attention.out_proj.bias",
        "decoder.model.layers.0.ff.shared_expert.fc1.linear.weight",
        "decoder.model.layers.0.ff.shared_expert.fc1.linear.bias",
        "decoder.model.layers.0.ff.shared_expert.fc2.weight",
        "decoder.model.layers.0.ff.shared_expert.fc2.bias",
        "encoder.model.stm.memory",
        "encoder.model.layers.0.memory_cross_attention.q_proj.weight",
        "encoder.model.layers.0.norm2.weight",
        "encoder.model.layers.0.stm_norm.weight",
    ):
        assert key in keys, key
    assert "decoder.model.layers.0.ff.shared_w1" not in keys


# ----------------------------------------------------------------------------------------------
# RoPE and attention


def test_rope_matches_hand_rotation():
    rope = RotaryPositionalEmbedding(head_dim=4, max_seq_len=8, base=100.0)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    position = 5
    out = rope.rotate(x, position).flatten()
    theta0, theta1 = position * 1.0, position * 100.0 ** (-2 / 4)
    expected = [
        1 * math.cos(theta0) - 2 * math.sin(theta0),
        1 * math.sin(theta0) + 2 * math.cos(theta0),
        3 * math.cos(theta1) - 4 * math.sin(theta1),
        3 * math.sin(theta1) + 4 * math.cos(theta1),
    ]
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    assert rope.inv_freq.tolist() == pytest.approx([1.0, 0.1])
    assert rope.cache[position].tolist() == pytest.approx([theta0, theta1])
    beyond = rope.rotate(x, 20).flatten()
    assert beyond[0].item() == pytest.approx(math.cos(20.0) - 2 * math.sin(20.0), abs=1e-5)


def naive_rotate(x: torch.Tensor, positions: range, head_dim: int, base: float) -> torch.Tensor:
    """``x (T, H, hd)`` rotated pair by pair at ``positions``."""
    out = x.clone()
    for t, position in enumerate(positions):
        for i in range(head_dim // 2):
            angle = position * base ** (-2 * i / head_dim)
            a, b = x[t, :, 2 * i], x[t, :, 2 * i + 1]
            out[t, :, 2 * i] = a * math.cos(angle) - b * math.sin(angle)
            out[t, :, 2 * i + 1] = a * math.sin(angle) + b * math.cos(angle)
    return out


def naive_attention(module: Attention, x_q, x_kv, *, causal, rope_q, rope_k, base=10000.0):
    """One sample, head by head: head j uses q head ``j mod Hq`` (revSQA) and kv head ``j // (Hq/Hkv)``."""
    shape = module.shape
    hd, hq, hkv = shape.head_dim, shape.query_heads, shape.kv_heads
    q = (x_q @ module.q_proj.weight.T).reshape(len(x_q), hq, hd)
    k = (x_kv @ module.k_proj.weight.T).reshape(len(x_kv), hkv, hd)
    v = (x_kv @ module.v_proj.weight.T).reshape(len(x_kv), hkv, hd)
    if rope_q:
        q = naive_rotate(q, range(len(x_q)), hd, base)
    if rope_k:
        k = naive_rotate(k, range(len(x_kv)), hd, base)
    heads = []
    for j in range(shape.out_heads):
        q_head = j % hq if hq < hkv else j
        kv_head = j // (hq // hkv) if hq > hkv else j
        scores = q[:, q_head] @ k[:, kv_head].T / math.sqrt(hd)
        if causal:
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v[:, kv_head])
    out = torch.cat(heads, dim=-1)
    if module.gate_proj is not None:
        out = out * torch.sigmoid(x_q @ module.gate_proj.weight.T)
    out = out @ module.out_proj.weight.T
    return out + module.out_proj.bias if module.out_proj.bias is not None else out


@pytest.mark.parametrize(
    ("att_type", "groups", "query_groups", "gated"),
    [
        ("sqa", 2, 4, True),
        ("sqa", 4, 2, False),
        ("sqa", 4, 4, True),
        ("gqa", 2, None, False),
        ("mqa", None, None, True),
    ],
)
@pytest.mark.parametrize("rope_on", ["qk", "q", "k"])
def test_attention_head_sharing_matches_naive_loop(att_type, groups, query_groups, gated, rope_on):
    shape = attention_shape(att_type, 32, 8, groups, query_groups, "test")
    rope = RotaryPositionalEmbedding(shape.head_dim, 16)
    module = Attention(32, shape, rope=rope, rope_on=rope_on, out_bias=not gated, gated=gated)
    randomize_(module, generator(1))
    x_q = torch.randn(7, 32, generator=generator(2))
    x_kv = x_q if rope_on == "qk" else torch.randn(5, 32, generator=generator(3))
    causal = rope_on == "qk"
    out = module(x_q[None], None if rope_on == "qk" else x_kv[None], causal=causal)[0]
    expected = naive_attention(module, x_q, x_kv, causal=causal, rope_q="q" in rope_on, rope_k="k" in rope_on)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_key_padding_mask_hides_padded_tokens():
    model = random_model()
    ids = torch.randint(6, 300, (1, 9), generator=generator(4))
    padded = torch.cat((ids, torch.zeros(1, 3, dtype=torch.long)), dim=1)
    mask = torch.cat((torch.ones(1, 9), torch.zeros(1, 3)), dim=1).bool()
    with torch.no_grad():
        hidden = model.encoder(ids)
        hidden_padded = model.encoder(padded, mask)
        torch.testing.assert_close(hidden_padded[:, :, :9], hidden, atol=1e-5, rtol=1e-5)
        stm = model.initial_stm(1, generator(5))
        torch.testing.assert_close(
            model.memory_attention(stm, hidden_padded, mask), model.memory_attention(stm, hidden), atol=1e-5, rtol=1e-5
        )


# ----------------------------------------------------------------------------------------------
# Feed-forward and MoE


def moe_config(**overrides) -> TransformerConfig:
    values = {
        "num_layers": 1,
        "vocab_size": 10,
        "embed_dim": 16,
        "att_heads": 4,
        "att_groups": 2,
        "att_query_groups": 2,
        "ff_dim": 8,
        "use_moe": True,
        "num_experts": 5,
        "moe_top_k": 2,
        "shared_expert_dim": 12,
    }
    return TransformerConfig.from_dict(values | overrides)


def naive_moe(module: MoeFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Token by token, straight from the formulas (docs/architecture.md §Feed-forward and MoE)."""
    hidden = module.hidden_dim

    def gated(token, w1, w2, b1, b2):
        h = token @ w1 + (0 if b1 is None else b1)
        return (h[: w1.shape[1] // 2] * F.silu(h[w1.shape[1] // 2 :])) @ w2 + (0 if b2 is None else b2)

    outputs = []
    for token in x:
        probs = torch.softmax(module.router.gate.weight @ token, dim=-1)
        top = sorted(range(len(probs)), key=lambda e: -probs[e].item())[: module.top_k]
        total = sum(probs[e] for e in top) + 1e-9
        routed = 0
        for e in top:
            if module.vectorized:
                local = module.bias_mode == "local"
                w1, w2 = module.w1[e], module.w2[e]
                b1, b2 = (module.b1[e], module.b2[e]) if local else (None, None)
            else:
                expert = module.experts[e]
                w1, w2 = expert.fc1.linear.weight.T, expert.fc2.weight.T
                b1, b2 = expert.fc1.linear.bias, expert.fc2.bias
            assert w1.shape[1] == 2 * hidden
            routed = routed + probs[e] / total * gated(token, w1, w2, b1, b2)
        if module.bias_mode == "global":
            routed = routed + module.global_bias
        shared = 0
        if module.num_shared == 1:
            fc1, fc2 = module.shared_expert.fc1.linear, module.shared_expert.fc2
            shared = gated(token, fc1.weight.T, fc2.weight.T, fc1.bias, fc2.bias)
        elif module.num_shared > 1:
            weights = torch.softmax(module.shared_expert_gate.weight @ token, dim=-1)
            local = module.shared_bias_mode == "local"
            for s in range(module.num_shared):
                b1, b2 = (module.shared_b1[s], module.shared_b2[s]) if local else (None, None)
                shared = shared + weights[s] * gated(token, module.shared_w1[s], module.shared_w2[s], b1, b2)
        if module.num_shared and module.shared_bias_mode == "global":
            shared = shared + module.shared_experts_bias
        if module.weighted_shared:
            k, s = module.top_k, module.num_shared
            outputs.append(routed * k / (k + s) + shared * s / (k + s))
        else:
            outputs.append(routed + shared)
    return torch.stack(outputs)


@pytest.mark.parametrize(
    "overrides",
    [
        {"moe_bias_mode": "global", "num_shared_experts": 2, "moe_shared_experts_bias_mode": "global"},
        {"moe_bias_mode": "local", "num_shared_experts": 2, "moe_shared_experts_bias_mode": "local"},
        {"moe_bias_mode": "off", "num_shared_experts": 1, "moe_shared_experts_bias_mode": "local"},
        {"moe_bias_mode": "global", "num_shared_experts": 1, "moe_shared_experts_bias_mode": "global"},
        {"moe_bias_mode": "global", "num_shared_experts": 0},
        {"num_shared_experts": 3, "moe_shared_experts_bias_mode": "off", "moe_use_weighted_shared_experts": True},
        {"use_vectorized_moe": False, "num_shared_experts": 0, "moe_top_k": 3},
    ],
)
def test_moe_matches_naive_token_loop(overrides):
    module = MoeFeedForward(moe_config(**overrides))
    randomize_(module, generator(6))
    x = torch.randn(2, 6, 16, generator=generator(7))
    with torch.no_grad():
        out = module(x)
        expected = naive_moe(module, x.reshape(-1, 16)).reshape(2, 6, 16)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_legacy_and_vectorized_moe_agree_after_weight_copy():
    vectorized = MoeFeedForward(moe_config(moe_bias_mode="local", num_shared_experts=1))
    legacy = MoeFeedForward(moe_config(use_vectorized_moe=False, num_shared_experts=1))
    randomize_(vectorized, generator(8))
    state = legacy_moe_state_dict({f"layer.ff.{k}": v for k, v in vectorized.state_dict().items()})
    legacy.load_state_dict({k.removeprefix("layer.ff."): v for k, v in state.items()})
    assert "experts.4.fc1.linear.weight" in legacy.state_dict() and "w1" not in legacy.state_dict()
    x = torch.randn(10, 16, generator=generator(9))
    with torch.no_grad():
        torch.testing.assert_close(legacy(x), vectorized(x), atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Residual gates and memory attention


def gate_config(**overrides) -> MemoryAttentionConfig:
    values = {"num_layers": 1, "embed_dim": 4, "att_heads": 2, "att_groups": 2, "att_query_groups": 2, "stm_size": 3}
    return MemoryAttentionConfig.from_dict(values | {"use_gated_residual": True} | overrides)


@pytest.mark.parametrize("tanh", [True, False])
def test_residual_gate_formulas(tanh):
    old = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 10 - 1
    new = torch.cos(torch.arange(24, dtype=torch.float32)).reshape(2, 3, 4)
    act = torch.tanh if tanh else torch.sigmoid

    def mix(g):
        return (1 + g) * new + (1 - g) * old if tanh else g * new + (1 - g) * old

    common = {"use_tanh_residual_gate": tanh, "residual_gate_init": 0.5}
    static = ResidualGate(gate_config(residual_gate_type="static", **common), use_gate=True)
    assert static.gate.shape == (1,) and static.gate.item() == 0.5
    torch.testing.assert_close(static(old, new), mix(act(torch.tensor(0.5))))

    per_slot = ResidualGate(
        gate_config(residual_gate_type="elementwise", residual_per_slot_gate=True, **common), use_gate=True
    )
    per_slot.gate.data = torch.tensor([[0.5], [-1.0], [2.0]])
    slot_mean = (new + old).mean(dim=-1, keepdim=True)
    torch.testing.assert_close(per_slot(old, new), mix(act(per_slot.gate * slot_mean)))

    scalar = ResidualGate(gate_config(residual_gate_type="elementwise", **common), use_gate=True)
    torch.testing.assert_close(scalar(old, new), mix(act(0.5 * (new + old).mean(dim=(1, 2), keepdim=True))))

    linear = ResidualGate(gate_config(residual_gate_type="linear", residual_per_slot_gate=True, **common), True)
    randomize_(linear, generator(10))
    expected = act((new + old).mean(-1) @ linear.gate.weight.T + linear.gate.bias)[..., None]
    torch.testing.assert_close(linear(old, new), mix(expected))

    status = ResidualGate(
        gate_config(residual_gate_type="linear", residual_gate_slot_status_type="linear", **common), True
    )
    randomize_(status, generator(11))
    slot_status = (new + old) @ status.slot_status.weight.T + status.slot_status.bias
    expected = act(slot_status[..., 0] @ status.gate.weight.T + status.gate.bias)[..., None]
    assert expected.shape == (2, 1, 1)
    torch.testing.assert_close(status(old, new), mix(expected))

    torch.testing.assert_close(ResidualGate(gate_config(), use_gate=False)(old, new), new + old)
    neutral = ResidualGate(gate_config(residual_gate_init=0.0, use_tanh_residual_gate=tanh), use_gate=True)
    # g = tanh(0) = 0 gives new + old; g = sigmoid(0) = 1/2 gives the average
    torch.testing.assert_close(neutral(old, new), new + old if tanh else (new + old) / 2)
    assert ResidualGate(gate_config(), use_gate=True, disable_residual=True)(old, new) is new


def naive_memory_attention(model: RxTMemoryAttention, stm, hidden, groups=1):
    """The variants table of docs/architecture.md §Memory attention, layer by layer from the modules' pieces."""
    m = model.model
    layers = stm.shape[0]
    size = layers // groups
    out = []
    for index in range(layers):
        state = stm[index]
        if model.variant == "self":
            p = m.self_memory_norm_layers[index](state)
            state = state + m.self_attention_layers[index](p, p)
        elif model.variant != "simple":
            group = index // size
            mean = m.mean_stm_norm(stm[group * size : (group + 1) * size].mean(0))
            p = m.mean_memory_norm_layers[index](state)
            keys = mean if model.variant == "interlayer" else m.interlayer_gate_layers[index](p, mean)
            state = m.mean_residual_gate_layers[index](state, m.mean_attention_layers[index](p, keys))
        attended = m.attention_layers[index](
            m.memory_norm_layers[index](state), m.memory_input_norm_layers[index](hidden[index])
        )
        out.append(m.residual_gate_layers[index](state, attended))
    return torch.stack(out)


@pytest.mark.parametrize("variant", ["simple", "self", "interlayer", "self-interlayer", "grouped-self-interlayer"])
def test_memory_attention_variants_follow_the_spec_table(variant):
    model = random_model(variant)
    stm = model.initial_stm(2, generator(12))
    hidden = torch.randn(4, 2, 7, 64, generator=generator(13))
    with torch.no_grad():
        new = model.memory_attention(stm, hidden)
        expected = naive_memory_attention(
            model.memory_attention, stm, hidden, 2 if variant.startswith("grouped") else 1
        )
    torch.testing.assert_close(new, expected)
    assert not torch.allclose(new, stm)


def test_interlayer_is_not_self_interlayer_without_gates():
    overrides = {"memory_attention": {"use_gated_residual": False}}
    interlayer = random_model("interlayer", **overrides)
    self_interlayer = random_model("self-interlayer", **overrides)
    self_interlayer.load_state_dict(interlayer.state_dict())
    stm = interlayer.initial_stm(1, generator(14))
    hidden = torch.randn(4, 1, 5, 64, generator=generator(15))
    with torch.no_grad():
        assert not torch.allclose(
            interlayer.memory_attention(stm, hidden), self_interlayer.memory_attention(stm, hidden)
        )


# ----------------------------------------------------------------------------------------------
# Decoder, cached decoding, training


def test_decoder_broadcasts_batch_one_stm_and_is_causal():
    model = random_model()
    ids = torch.randint(6, 300, (2, 8), generator=generator(16))
    stm = model.initial_stm(1, generator(17))
    with torch.no_grad():
        logits = model.decoder(ids, stm)
        assert logits.shape == (2, 8, 300)
        torch.testing.assert_close(logits, model.decoder(ids, stm.expand(-1, 2, -1, -1).contiguous()))
        changed = ids.clone()
        changed[:, 5:] = 7
        torch.testing.assert_close(model.decoder(changed, stm)[:, :5], logits[:, :5])
        other_stm = model.initial_stm(1, generator(18))
        assert not torch.allclose(model.decoder(ids, other_stm), logits)


@torch.no_grad()
def cached_logits(model: RxTReference, ids: torch.Tensor, stm: torch.Tensor, chunks: list[int]):
    """Logits of ``ids`` fed through the KV cache in pieces of ``chunks`` tokens, and the cache."""
    cache, memory = model.decoder.make_cache(), model.decoder.project_memory(stm)
    steps, start = [], 0
    for size in chunks:
        steps.append(model.decoder(ids[:, start : start + size], cache=cache, memory=memory))
        start += size
    return torch.cat(steps, dim=1), cache


def test_cached_decoding_matches_full_recompute(monkeypatch):
    monkeypatch.setattr(KVCache, "step", 4)  # the cache storage grows several times
    model = random_model()
    ids = torch.randint(6, 300, (1, 12), generator=generator(19))
    stm = model.initial_stm(1, generator(20))
    with torch.no_grad():
        full = model.decoder(ids, stm)
    logits, cache = cached_logits(model, ids, stm, [5, 1, 1, 1, 1, 1, 2])
    assert cache[0].offset == 12 and len(cache) == 7
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)


def test_generate_turn_forced_and_greedy_tokens_follow_the_logits():
    from rxt_convert.reference.generate import generate_turn

    model = random_model()
    stm = model.initial_stm(1, generator(21))
    query = [2, 4, 17, 18, 19, 5]
    greedy = generate_turn(model, query, stm, max_new_tokens=4, update_memory=True)
    ids = torch.tensor([query])
    for token in greedy.tokens:
        with torch.no_grad():
            assert token == int(model.decoder(ids, stm)[0, -1].argmax())
        ids = torch.cat((ids, torch.tensor([[token]])), dim=1)
    assert len(greedy.token_seconds) == 3 and greedy.prompt_seconds > 0
    with torch.no_grad():
        torch.testing.assert_close(greedy.new_stm, model.update_memory(stm, ids))
    forced = generate_turn(model, query, stm, max_new_tokens=0, force_tokens=[9, 3, 9])
    assert forced.tokens == [9, 3, 9]


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = RxTReference(tiny_beta_config())
    ids = torch.randint(6, 300, (4, 16), generator=generator(22))
    stm = model.initial_stm(4, generator(23))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        new_stm = model.update_memory(stm, ids)
        logits = model.decoder(ids[:, :-1], new_stm)
        loss = F.cross_entropy(logits.reshape(-1, 300), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(p.grad is not None for p in model.memory_attention.parameters())


# ----------------------------------------------------------------------------------------------
# save_rxlm / load_reference


def safetensors_keys(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_slice(key).get_dtype() for key in handle.keys()}


def outputs(model: RxTReference) -> list[torch.Tensor]:
    ids = torch.randint(6, 300, (1, 9), generator=generator(24))
    stm = model.initial_stm(1, generator(25)).float()
    with torch.no_grad():
        return [model.decoder(ids, stm), model.encoder(ids), model.update_memory(stm, ids)]


def test_save_rxlm_full_dedupes_like_rxlm(tmp_path):
    model = random_model()
    save_rxlm(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert set(config) == {
        "decoder_config",
        "encoder_config",
        "memory_attention_config",
        "tokenizer_config",
        "memory_attention_variant",
        "system_prompt_title",
        "tokenizer",
    }
    assert config["tokenizer"] is None and config["memory_attention_variant"] == "grouped-self-interlayer"
    keys = set(safetensors_keys(tmp_path / "model.safetensors"))
    assert "decoder.model.embedding.weight" in keys and "encoder.model.embedding.weight" not in keys
    assert "decoder.model.stm.memory" in keys and "memory_attention.model.stm.memory" not in keys
    rope = sorted(key for key in keys if ".rope." in key)
    assert rope == [
        f"{prefix}.rope.{name}"
        for prefix in (
            "decoder.model.final_stateless_layers.0.attention",
            "encoder.model.layers.0.attention",
            "memory_attention.model.attention_layers.0",
        )
        for name in ("cache", "inv_freq")
    ]
    full = set(model.state_dict())
    assert keys <= full and len(full - keys) == 1 + 1 + ((7 + 4) * 2 - 2) + (4 * 2 - 2) + (4 * 2 - 2)
    for left, right in zip(outputs(load_reference(tmp_path)), outputs(model), strict=True):
        torch.testing.assert_close(left, right)


def test_save_rxlm_components_bf16_and_stm_batch(tmp_path):
    model = random_model("self-interlayer")
    save_rxlm(model, tmp_path, layout="components", dtype=torch.bfloat16, stm_batch=3)
    decoder = safetensors_keys(tmp_path / "decoder" / "model.safetensors")
    assert set(decoder.values()) == {"BF16"}
    assert "model.embedding.weight" in decoder and "model.stm.memory" in decoder
    assert sorted(key for key in decoder if ".rope." in key) == [
        "model.final_stateless_layers.0.attention.rope.cache",
        "model.final_stateless_layers.0.attention.rope.inv_freq",
    ]
    memory = safetensors_keys(tmp_path / "memory_attention" / "model.safetensors")
    assert "model.attention_layers.0.rope.cache" in memory and "model.attention_layers.1.rope.cache" not in memory
    with safe_open(str(tmp_path / "memory_attention" / "model.safetensors"), "pt") as handle:
        assert handle.get_slice("model.stm.memory").get_shape() == [4, 3, 16, 64]
    flat = json.loads((tmp_path / "decoder" / "config.json").read_text())
    assert flat["embed_dim"] == 64 and "decoder_config" not in flat
    loaded = load_reference(tmp_path)
    assert loaded.config.memory_attention_variant == "self-interlayer"
    reference = RxTReference(model.config)
    reference.load_state_dict(model.state_dict())
    reference.to(torch.bfloat16).float()
    for left, right in zip(outputs(loaded), outputs(reference), strict=True):
        torch.testing.assert_close(left, right)
    assert model.memory_attention.model.stm.memory.shape[1] == 1


def test_save_rxlm_bin_and_legacy_moe(tmp_path):
    model = random_model(decoder={"moe_bias_mode": "local"})
    save_rxlm(model, tmp_path, file_format="bin", legacy_moe=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["decoder_config"]["use_vectorized_moe"] is False
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert "encoder.model.embedding.weight" in state and "memory_attention.model.stm.memory" in state
    assert "decoder.model.layers.0.ff.experts.7.fc2.bias" in state
    assert "decoder.model.layers.0.ff.router.gate.weight" in state
    assert not any(key.endswith((".ff.w1", ".ff.b1")) for key in state)
    for left, right in zip(outputs(load_reference(tmp_path)), outputs(model), strict=True):
        torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)


def test_legacy_moe_refuses_a_global_bias(tmp_path):
    with pytest.raises(ValueError, match=r"stateless_layers\.1\.ff\.global_bias: a non-zero global MoE bias"):
        save_rxlm(random_model(), tmp_path, legacy_moe=True)


def test_load_reference_from_training_checkpoint_and_errors(tmp_path):
    model = random_model()
    torch.save({"config": model.config.to_dict(), "model": model.state_dict(), "step": 3}, tmp_path / "ckpt.pt")
    for left, right in zip(outputs(load_reference(tmp_path / "ckpt.pt")), outputs(model), strict=True):
        torch.testing.assert_close(left, right)
    save_rxlm(model, tmp_path / "full")
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    config["decoder_config"]["ff_dim"] = 32
    (tmp_path / "full" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"layers\.0\.ff\.w1 \(8, 64, 32\) \(expected \(8, 64, 64\)\)"):
        load_reference(tmp_path / "full")


def test_decoder_component_alone():
    decoder = RxTDecoder(tiny_beta_config().decoder)
    ids = torch.randint(0, 300, (1, 4))
    with torch.no_grad():
        assert decoder(ids).shape == (1, 4, 300)


UNUSUAL_CONFIGS = {
    "alpha-like": dict(
        variant="self",
        decoder={
            "self_att_type": "gqa",
            "att_groups": 2,
            "cross_att_type": "mqa",
            "use_rms_norm": False,
            "head_norm_type": "layer_norm",
            "use_gated": False,
            "use_moe": False,
            "ff_dim": 48,
            "stateless_layers_config": None,
            "final_stateless_layers_config": None,
            "use_attention_output_bias": True,
            "use_gated_attention": False,
            "rope_base": 500.0,
        },
        encoder={"skip_memory_cross_attention": False, "use_nope": True, "self_att_type": "mha"},
        memory_attention={
            "residual_gate_type": "static",
            "residual_per_slot_gate": False,
            "use_tanh_residual_gate": True,
            "use_gate_for_self_attention": True,
            "self_att_type": "mqa",
        },
    ),
    "revsqa-legacy-moe": dict(
        variant="interlayer",
        decoder={
            "att_query_groups": 2,
            "att_groups": 4,
            "cross_att_query_groups": 4,
            "cross_att_groups": 2,
            "use_vectorized_moe": False,
            "num_shared_experts": 1,
            "moe_shared_experts_bias_mode": "local",
            "moe_use_weighted_shared_experts": True,
            "use_gated_cross_attention": True,
            "gated_attention_activation": "tanh",
            "final_stateless_layers_config": ["dense"],
        },
        memory_attention={"residual_gate_type": "linear", "residual_gate_slot_status_type": "linear"},
    ),
}


@pytest.mark.parametrize("name", sorted(UNUSUAL_CONFIGS))
def test_unusual_configs_decode_with_cache_and_round_trip(name, tmp_path):
    model = random_model(**UNUSUAL_CONFIGS[name])
    keys = set(model.state_dict())
    if name == "alpha-like":
        assert {"decoder.model.layers.0.norm1.bias", "decoder.model.head_norm.bias"} <= keys
        assert {"decoder.model.layers.0.ff.fc1.weight", "encoder.model.stm.memory"} <= keys
        assert "memory_attention.model.self_residual_gate_layers.0.gate" in keys
        assert not any(".rope." in key for key in keys if key.startswith("encoder."))
        assert model.decoder.model.layers[0].memory_cross_attention.k_proj.weight.shape == (8, 64)
    else:
        assert "decoder.model.layers.0.ff.experts.7.fc1.linear.bias" in keys
        assert "decoder.model.layers.0.memory_cross_attention.gate_proj.weight" in keys
        assert "memory_attention.model.residual_gate_layers.0.slot_status.weight" in keys
        assert model.decoder.model.layers[0].attention.out_proj.weight.shape == (64, 32)
    ids = torch.randint(6, 300, (1, 8), generator=generator(26))
    stm = model.initial_stm(1, generator(27))
    with torch.no_grad():
        full = model.decoder(ids, stm)
    torch.testing.assert_close(cached_logits(model, ids, stm, [3, 1, 1, 1, 1, 1])[0], full, atol=1e-5, rtol=1e-5)
    save_rxlm(model, tmp_path)
    for left, right in zip(outputs(load_reference(tmp_path)), outputs(model), strict=True):
        torch.testing.assert_close(left, right)


def test_bf16_model_runs_with_bf16_rope_angles():
    model = random_model().to(torch.bfloat16)
    assert model.decoder.model.layers[0].attention.rope.cache.dtype == torch.bfloat16
    ids = torch.randint(6, 300, (1, 6), generator=generator(28))
    stm = model.initial_stm(1, generator(29))
    assert stm.dtype == torch.bfloat16
    with torch.no_grad():
        assert model.decoder(ids, stm).dtype == torch.bfloat16
        assert model.update_memory(stm, ids).dtype == torch.bfloat16
