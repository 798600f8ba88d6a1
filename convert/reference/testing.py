"""Helpers for parity tests: give every parameter a random value of a sensible scale."""

from __future__ import annotations

import math

import torch
from torch import nn

from rxt_mlx.config import RxTConfig

from .feedforward import MoeFeedForward
from .memory_attention import ResidualGate

ROUTER_SCALE = 4.0
"""Router weights are scaled up so top-k choices are far from ties (stable across frameworks)."""


def _normal(tensor: torch.Tensor, generator: torch.Generator, std: float, mean: float = 0.0) -> None:
    values = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * std + mean
    tensor.copy_(values.to(tensor.dtype))


@torch.no_grad()
def randomize_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Set every parameter of ``model`` to random values, in place; buffers are left alone.

    Norm weights become ``1 + N(0, 0.2)``, biases ``N(0, 0.1)``, linear/expert weights
    ``N(0, 1/fan_in)``, embeddings ``N(0, 1)`` and residual gates ``N(0, 1)``, so parity tests
    exercise every weight (a norm weight of exactly 1 or a zero bias hides mistakes).

    Returns:
        ``model``, for chaining.
    """
    generator = generator or torch.Generator().manual_seed(0)
    seen: set[int] = set()
    routers = {id(module.router.gate) for module in model.modules() if isinstance(module, MoeFeedForward)}

    def fill(parameter: nn.Parameter | None, std: float, mean: float = 0.0) -> None:
        if parameter is None or id(parameter) in seen:
            return
        seen.add(id(parameter))
        _normal(parameter, generator, std, mean)

    for module in model.modules():
        if isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
            fill(module.weight, 0.2, 1.0)
            fill(getattr(module, "bias", None), 0.1)
        elif isinstance(module, nn.Embedding):
            fill(module.weight, 1.0)
        elif isinstance(module, nn.Linear):
            fan_in = module.in_features
            scale = ROUTER_SCALE if id(module) in routers else 1.0
            fill(module.weight, scale / math.sqrt(fan_in))
            fill(module.bias, 0.1)
        elif isinstance(module, ResidualGate) and isinstance(getattr(module, "gate", None), nn.Parameter):
            fill(module.gate, 1.0)
        elif isinstance(module, MoeFeedForward):
            for parameter in module.parameters(recurse=False):
                # 3-D expert weights (E, in, out) scale with fan-in; 1-D/2-D are biases
                fill(parameter, 1.0 / math.sqrt(parameter.shape[-2]) if parameter.dim() == 3 else 0.1)
    leftover = [name for name, parameter in model.named_parameters() if id(parameter) not in seen]
    if leftover:
        raise RuntimeError(f"randomize_ does not know how to randomize parameters {leftover}")
    return model


def tiny_beta_config(
    variant: str = "grouped-self-interlayer",
    *,
    decoder: dict | None = None,
    encoder: dict | None = None,
    memory_attention: dict | None = None,
) -> RxTConfig:
    """A tiny config shaped like RxT-Beta (D=64, 4 layers, SQA, MoE, V=300, S=16).

    It has every kind of layer of the published RxT-Beta: stateless dense and MoE layers,
    shared experts, gated attention, grouped memory attention (docs/architecture.md
    §Published configs).

    ``decoder`` / ``encoder`` / ``memory_attention`` override config.json fields.
    """
    common = {"vocab_size": 300, "embed_dim": 64, "att_heads": 8, "seq_len": 64, "stm_size": 16, "num_layers": 4}
    decoder_config = {
        **common,
        "att_query_groups": 4,
        "att_groups": 2,
        "stateless_layers_config": ["dense", "moe"],
        "final_stateless_layers_config": ["moe"],
        "use_moe": True,
        "num_experts": 8,
        "moe_top_k": 2,
        "num_shared_experts": 2,
        "shared_expert_dim": 24,
        "moe_shared_experts_bias_mode": "global",
        "ff_dim": 16,
        "dense_layer_dim": 96,
        "use_gated_attention": True,
        "use_gated_cross_attention": False,
        "use_attention_output_bias": False,
        "use_head_norm": True,
        "head_norm_type": "rms_norm",
        **(decoder or {}),
    }
    encoder_config = {
        **common,
        "att_query_groups": 4,
        "att_groups": 4,
        "ff_dim": 96,
        "skip_memory_cross_attention": True,
        "use_gated_attention": True,
        "use_attention_output_bias": False,
        **(encoder or {}),
    }
    memory_attention_config = {
        **{key: common[key] for key in ("embed_dim", "att_heads", "seq_len", "stm_size", "num_layers")},
        "att_query_groups": 4,
        "att_groups": 4,
        "num_groups": 2 if variant == "grouped-self-interlayer" else None,
        "use_gated_residual": True,
        "residual_gate_type": "elementwise",
        "residual_per_slot_gate": True,
        "use_tanh_residual_gate": False,
        **(memory_attention or {}),
    }
    return RxTConfig.from_dict(
        {
            "decoder_config": decoder_config,
            "encoder_config": encoder_config,
            "memory_attention_config": memory_attention_config,
            "tokenizer_config": {"bos_token_id": 2, "eos_token_id": 3, "query_token_id": 4, "answer_token_id": 5},
            "memory_attention_variant": variant,
        }
    )
