"""Tiny RxT configs (the parity matrix) and random MLX models / model folders for tests.

Every named config is small enough for CPU tests and together they cover every
architecture feature of the published RxT-Alpha / RxT-Beta families.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from rxt_mlx.config import RxTConfig
from rxt_mlx.model import RxT, save_model
from tests.tokenizer_factories import tokenizer_config

VOCAB_SIZE = 300
ROUTER_SCALE = 4.0
"""Router weights are scaled up so top-k choices sit far from ties (cached and full runs agree)."""
SEQ_LEN = 64
TOKENIZER_CONFIG = tokenizer_config()
"""[PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3 [Q]=4 [A]=5 [T]=6 [I]=7 [C]=8 [U]=9, as in tests/tokenizer_factories."""


def tiny_config(
    *,
    decoder: dict[str, Any] | None = None,
    encoder: dict[str, Any] | None = None,
    memory_attention: dict[str, Any] | None = None,
    memory_attention_variant: str = "simple",
    stm_size: int = 8,
    **shared: Any,
) -> RxTConfig:
    """A small dense RxT (D=32, 2 layers, SQA 2/2); the dicts override per-component settings.

    ``shared`` keyword arguments (e.g. ``embed_dim``, ``num_layers``, ``att_heads``) apply to
    all three components.
    """
    common = {"embed_dim": 32, "num_layers": 2, "att_heads": 4, "seq_len": SEQ_LEN, "stm_size": stm_size, **shared}
    transformer = {
        **common,
        "vocab_size": VOCAB_SIZE,
        "ff_dim": 48,
        "att_groups": 2,
        "att_query_groups": 2,
        "self_att_type": "sqa",
        "cross_att_type": "sqa",
        "use_moe": False,
        "num_shared_experts": 0,
    }
    values = {
        "decoder_config": {**transformer, **(decoder or {})},
        "encoder_config": {**transformer, "skip_memory_cross_attention": True, **(encoder or {})},
        "memory_attention_config": {
            **common,
            "att_type": "sqa",
            "att_groups": 2,
            "att_query_groups": 2,
            **(memory_attention or {}),
        },
        "tokenizer_config": dict(TOKENIZER_CONFIG),
        "memory_attention_variant": memory_attention_variant,
    }
    return RxTConfig.from_dict(values)


def alpha_config() -> RxTConfig:
    """RxT-Alpha style: SQA, out-proj biases, legacy-style MoE (local biases, no shared experts),
    encoder layers that still own cross-attention weights, interlayer memory attention with
    tanh static per-slot gates."""
    return tiny_config(
        decoder={
            "att_query_groups": 2,
            "att_groups": 1,
            "use_moe": True,
            "num_experts": 4,
            "moe_top_k": 2,
            "ff_dim": 16,
            "num_shared_experts": 0,
            "moe_bias_mode": "local",
            "use_vectorized_moe": False,
            "use_attention_output_bias": True,
        },
        encoder={"skip_memory_cross_attention": False},
        memory_attention={
            "use_gated_residual": True,
            "residual_gate_type": "static",
            "residual_per_slot_gate": True,
            "use_tanh_residual_gate": True,
        },
        memory_attention_variant="interlayer",
    )


def beta_config() -> RxTConfig:
    """RxT-Beta style (docs/architecture.md §Published configs): gated self-attention, no out
    bias, stateless dense+moe and final moe layers, MoE with 2 shared experts and global biases,
    RMS head norm, rope base 1e5, grouped self-interlayer memory attention with per-slot sigmoid
    elementwise gates."""
    return tiny_config(
        embed_dim=64,
        num_layers=4,
        att_heads=8,
        stm_size=16,
        rope_base=100000.0,
        decoder={
            "att_query_groups": 4,
            "att_groups": 2,
            "use_gated_attention": True,
            "use_gated_cross_attention": False,
            "use_attention_output_bias": False,
            "stateless_layers_config": ["dense", "moe"],
            "final_stateless_layers_config": ["moe"],
            "dense_layer_dim": 96,
            "use_moe": True,
            "num_experts": 8,
            "moe_top_k": 2,
            "ff_dim": 16,
            "num_shared_experts": 2,
            "shared_expert_dim": 24,
            "moe_bias_mode": "global",
            "moe_shared_experts_bias_mode": "global",
            "use_head_norm": True,
            "head_norm_type": "rms_norm",
        },
        encoder={
            "att_query_groups": 4,
            "att_groups": 4,
            "ff_dim": 96,
            "use_gated_attention": True,
            "use_attention_output_bias": False,
        },
        memory_attention={
            "att_query_groups": 4,
            "att_groups": 4,
            "num_groups": 2,
            "use_gated_residual": True,
            "residual_gate_type": "elementwise",
            "residual_per_slot_gate": True,
            "use_tanh_residual_gate": False,
        },
        memory_attention_variant="grouped-self-interlayer",
    )


def dense_gqa_config() -> RxTConfig:
    """Dense GQA decoder and encoder, simple memory attention without residual gates."""
    gqa = {"self_att_type": "gqa", "cross_att_type": "gqa", "att_groups": 2, "att_query_groups": None}
    return tiny_config(
        decoder=gqa,
        encoder=gqa,
        memory_attention={"att_type": "gqa", "use_gated_residual": False},
        memory_attention_variant="simple",
    )


def mha_self_config() -> RxTConfig:
    """MHA everywhere, plain (non-gated) relu FFN, silu-gated self and cross attention,
    LayerNorm encoder and head norm, self memory attention with per-slot linear gates
    (linear slot status) and a gated self step."""
    mha = {"self_att_type": "mha", "cross_att_type": "mha"}
    return tiny_config(
        decoder={
            **mha,
            "use_gated": False,
            "ff_activation": "relu",
            "use_gated_attention": True,
            "use_gated_cross_attention": True,
            "gated_attention_activation": "silu",
            "use_head_norm": True,
            "head_norm_type": "layer_norm",
        },
        encoder={**mha, "use_rms_norm": False},
        memory_attention={
            "att_type": "mha",
            "use_gated_residual": True,
            "residual_gate_type": "linear",
            "residual_per_slot_gate": True,
            "residual_gate_slot_status_type": "linear",
            "use_gate_for_self_attention": True,
        },
        memory_attention_variant="self",
    )


def rev_sqa_config() -> RxTConfig:
    """Fewer query than kv heads (revSQA), MQA cross-attention, gelu MoE with one shared expert
    (global bias) and weighted shared experts, self-interlayer memory attention with a static
    scalar gate."""
    return tiny_config(
        decoder={
            "att_query_groups": 2,
            "att_groups": 4,
            "cross_att_type": "mqa",
            "ff_activation": "gelu",
            "use_moe": True,
            "num_experts": 4,
            "moe_top_k": 2,
            "ff_dim": 16,
            "num_shared_experts": 1,
            "shared_expert_dim": 24,
            "moe_bias_mode": "global",
            "moe_shared_experts_bias_mode": "global",
            "moe_use_weighted_shared_experts": True,
        },
        encoder={"att_query_groups": 2, "att_groups": 4, "ff_activation": "gelu"},
        memory_attention={
            "att_query_groups": 2,
            "att_groups": 4,
            "interlayer_att_type": "mqa",
            "use_gated_residual": True,
            "residual_gate_type": "static",
            "residual_per_slot_gate": False,
            "use_tanh_residual_gate": False,
        },
        memory_attention_variant="self-interlayer",
    )


PARITY_CONFIGS: dict[str, Callable[[], RxTConfig]] = {
    "alpha": alpha_config,
    "beta": beta_config,
    "dense_gqa": dense_gqa_config,
    "mha_self": mha_self_config,
    "rev_sqa": rev_sqa_config,
}


def _random_value(name: str, shape: tuple[int, ...], key: mx.array) -> mx.array:
    noise = mx.random.normal(shape, key=key)
    if name.endswith(".weight") and len(shape) == 1:  # norm scales
        return 1.0 + 0.2 * noise
    if name.endswith("bias"):
        return 0.1 * noise
    if name.endswith(".gate") or "embedding" in name:  # residual gate parameters, token embedding
        return noise
    scale = ROUTER_SCALE if name.endswith("router.gate.weight") else 1.0
    return scale * noise / (shape[-1] ** 0.5)


def random_mlx_model(config: RxTConfig, seed: int = 0) -> RxT:
    """An fp32 :class:`RxT` with every parameter (norms, gates, biases included) random."""
    model = RxT(config)
    names = sorted(dict(tree_flatten(model.parameters())).items())
    keys = mx.random.split(mx.random.key(seed), len(names))
    values = [(name, _random_value(name, tuple(value.shape), keys[i])) for i, (name, value) in enumerate(names)]
    model.update(tree_unflatten(values))
    mx.eval(model.parameters())
    return model


def write_model_folder(
    folder: str | Path,
    config: RxTConfig,
    seed: int = 0,
    tokenizer_writer: Callable[[Path], object] | None = None,
) -> Path:
    """Save a random model as a loadable rxt-mlx folder; ``tokenizer_writer(folder)`` adds the tokenizer."""
    folder = save_model(random_mlx_model(config, seed), folder)
    if tokenizer_writer is not None:
        tokenizer_writer(folder)
    return folder
