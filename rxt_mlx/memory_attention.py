"""Memory attention: writes the encoded interaction into the STM (docs/architecture.md §Memory attention).

Every variant computes all new STM layers from STM_{t-1}:

* ``simple``:                  ``S'_l = main_l(S_l)``
* ``self``:                    ``U = SelfGate_l(S_l, SelfAttn_l(SelfNorm_l S_l))``; ``S'_l = main_l(U)``
* ``interlayer``:              ``M = MeanNorm(mean_l S_l)``;
  ``U = MeanGate_l(S_l, MeanAttn_l(MeanMemNorm_l S_l, M))``; ``S'_l = main_l(U)``
* ``self-interlayer``:         ``P = MeanMemNorm_l S_l``; ``K = InterGate_l(P, M)``;
  ``U = MeanGate_l(S_l, MeanAttn_l(P, K))``; ``S'_l = main_l(U)``
* ``grouped-self-interlayer``: like self-interlayer with M the mean over the layer's group.

with ``main_l(U) = ResGate_l(U, Attn_l(MemNorm_l U, InNorm_l ED_l))`` (RoPE on the keys only).
``Gate(old, new)`` is a :class:`ResidualGate`. Note ``'interlayer'`` is the true interlayer
variant (rxlm 0.3.80 builds self-interlayer for that name by mistake).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from rxt_mlx.attention import Attention, Rope, key_padding_mask
from rxt_mlx.config import MemoryAttentionConfig
from rxt_mlx.layers import rms_norm

INTERLAYER_VARIANTS = ("interlayer", "self-interlayer", "grouped-self-interlayer")


class ResidualGate(nn.Module):
    """rxlm ``ResidualGate(old, new)``.

    No gate: ``new + old`` (or ``new`` with ``disable_residual``). With a gate value ``g``:
    sigmoid: ``g*new + (1-g)*old``; tanh: ``(1+g)*new + (1-g)*old``. ``g`` is ``act(param)``
    (static), ``act(param * mean(new + old))`` (elementwise: per slot, or over slots and
    dims), or ``act(gate(status(new + old)))`` (linear) where status is the mean over D or
    ``slot_status: Linear(D, 1)``.
    """

    def __init__(self, config: MemoryAttentionConfig, use_gate: bool, disable_residual: bool = False):
        super().__init__()
        self.use_gate = use_gate
        self.disable_residual = disable_residual
        self.gate_type = config.residual_gate_type
        self.per_slot = config.residual_per_slot_gate
        self.act = mx.tanh if config.use_tanh_residual_gate else mx.sigmoid
        self.tanh = config.use_tanh_residual_gate
        if not use_gate:
            return
        slots = config.stm_size
        if self.gate_type == "linear":
            self.gate = nn.Linear(slots, slots if self.per_slot else 1)
            if config.residual_gate_slot_status_type == "linear":
                self.slot_status = nn.Linear(config.embed_dim, 1)
        else:
            self.gate = mx.full((slots, 1) if self.per_slot else (1,), config.residual_gate_init)

    def gate_value(self, old: mx.array, new: mx.array) -> mx.array:
        """The gate ``g``, broadcastable to (B, S, D)."""
        if self.gate_type == "static":
            return self.act(self.gate)
        mixed = new + old
        if self.gate_type == "elementwise":
            if self.per_slot:
                return self.act(self.gate * mixed.mean(axis=-1, keepdims=True))
            return self.act(self.gate * mixed.mean(axis=(-2, -1), keepdims=True))
        status = self.slot_status(mixed)[..., 0] if "slot_status" in self else mixed.mean(axis=-1)
        return self.act(self.gate(status))[..., None]

    def __call__(self, old: mx.array, new: mx.array) -> mx.array:
        if self.disable_residual:
            return new
        if not self.use_gate:
            return new + old
        gate = self.gate_value(old, new)
        if self.tanh:
            return (1 + gate) * new + (1 - gate) * old
        return gate * new + (1 - gate) * old


class MemoryAttention(nn.Module):
    """All five rxlm memory-attention variants; ``variant`` is a config memory_attention_variant."""

    def __init__(self, config: MemoryAttentionConfig, variant: str):
        super().__init__()
        self.config = config
        self.variant = variant
        layers, dim = range(config.num_layers), config.embed_dim
        rope = None if config.use_nope else Rope(dim // config.att_heads, float(config.rope_base))
        main_shape = config.main_attention_shape()
        self.attention_layers = [
            Attention(dim, main_shape, output_bias=True, rope=rope, rope_queries=False) for _ in layers
        ]
        self.memory_norm_layers = [rms_norm(dim) for _ in layers]
        self.memory_input_norm_layers = [rms_norm(dim) for _ in layers]
        disable = variant == "simple" and config.disable_residual
        self.residual_gate_layers = [ResidualGate(config, config.use_gated_residual, disable) for _ in layers]
        if variant == "self":
            self_shape = config.self_attention_shape()
            self.self_attention_layers = [Attention(dim, self_shape, output_bias=True) for _ in layers]
            self.self_memory_norm_layers = [rms_norm(dim) for _ in layers]
            self.self_residual_gate_layers = [ResidualGate(config, config.use_gate_for_self_attention) for _ in layers]
        if variant in INTERLAYER_VARIANTS:
            mean_shape = config.interlayer_attention_shape()
            self.mean_attention_layers = [Attention(dim, mean_shape, output_bias=True) for _ in layers]
            self.mean_memory_norm_layers = [rms_norm(dim) for _ in layers]
            self.mean_residual_gate_layers = [ResidualGate(config, config.use_gated_residual) for _ in layers]
            self.mean_stm_norm = rms_norm(dim)
        if variant in INTERLAYER_VARIANTS[1:]:
            self.interlayer_gate_layers = [ResidualGate(config, config.use_gated_residual) for _ in layers]
        self.num_groups = config.num_groups if variant == "grouped-self-interlayer" else 1

    def _layer_means(self, stm: mx.array) -> mx.array:
        """Normed mean STM of each group of layers, (G, B, S, D)."""
        layers = stm.shape[0]
        grouped = stm.reshape(self.num_groups, layers // self.num_groups, *stm.shape[1:])
        return self.mean_stm_norm(grouped.mean(axis=1))

    def _pre_main(self, stm: mx.array) -> list[mx.array]:
        """The input U_l of each layer's main step."""
        if self.variant == "simple":
            return list(stm)
        if self.variant == "self":
            inputs = []
            for index, old in enumerate(stm):
                normed = self.self_memory_norm_layers[index](old)
                inputs.append(self.self_residual_gate_layers[index](old, self.self_attention_layers[index](normed)))
            return inputs
        means = self._layer_means(stm)
        group_size = stm.shape[0] // self.num_groups
        inputs = []
        for index, old in enumerate(stm):
            mean = means[index // group_size]
            normed = self.mean_memory_norm_layers[index](old)
            if self.variant == "interlayer":
                keys = mean
            else:
                keys = self.interlayer_gate_layers[index](normed, mean)
            attended = self.mean_attention_layers[index](normed, keys)
            inputs.append(self.mean_residual_gate_layers[index](old, attended))
        return inputs

    def __call__(self, stm: mx.array, hidden: mx.array, mask: mx.array | None = None) -> mx.array:
        """New STM (L, B, S, D) from the STM and the encoder hidden states ``hidden`` (L, B, T, D).

        ``mask`` (B, T) marks the real tokens of the interaction (keys of the main attention).
        A batch-1 STM is broadcast over the batch of ``hidden``.
        """
        stm = stm.astype(hidden.dtype)
        if stm.shape[1] != hidden.shape[1]:
            stm = mx.broadcast_to(stm, (stm.shape[0], hidden.shape[1], *stm.shape[2:]))
        attention_mask = key_padding_mask(mask)
        updated = []
        for index, layer_input in enumerate(self._pre_main(stm)):
            queries = self.memory_norm_layers[index](layer_input)
            encoded = self.memory_input_norm_layers[index](hidden[index])
            attended = self.attention_layers[index](queries, encoded, mask=attention_mask)
            updated.append(self.residual_gate_layers[index](layer_input, attended))
        return mx.stack(updated)
