"""Memory attention: the five rxlm variants and the residual gate.

The math and names are in docs/architecture.md §Memory attention.

Every layer's new state is computed from STM_{t-1} and all layers are returned together.
``interlayer`` is the true interlayer variant of the paper (not what rxlm 0.3.80
builds for that name).

Choices where rxlm's code path is open (documented for the MLX port):
* ``residual_gate_slot_status_type='linear'`` (``slot_status: Linear(D, 1)``) only changes
  the ``linear`` gate type; ``elementwise`` always uses the mean over D;
* ``disable_residual`` (simple variant only) keeps the gate parameters, unused.
"""

from __future__ import annotations

import torch
from torch import nn

from rxt_mlx.config import MEMORY_ATTENTION_VARIANTS, MemoryAttentionConfig

from .layers import Attention, RotaryPositionalEmbedding, linear, rms_norm
from .transformer import ShortTermMemory


class ResidualGate(nn.Module):
    """``ResGate(old, new)``: gated mix of a layer's old and new memory state.

    ``g`` is ``act(gate)`` (static), ``act(gate * mean_D(new + old))`` (elementwise, per slot
    when ``per_slot``) or ``act(gate(mean_D(new + old)))`` (linear). With a tanh gate the output
    is ``(1 + g) new + (1 - g) old``, with sigmoid ``g new + (1 - g) old``. Without a gate it is
    ``new + old``, and ``disable_residual`` gives ``new``.
    """

    def __init__(self, config: MemoryAttentionConfig, use_gate: bool, disable_residual: bool = False):
        super().__init__()
        self.use_gate = use_gate
        self.disable_residual = disable_residual
        self.gate_type = config.residual_gate_type
        self.per_slot = config.residual_per_slot_gate
        self.use_tanh = config.use_tanh_residual_gate
        self.linear_slot_status = config.residual_gate_slot_status_type == "linear"
        if not use_gate:
            return
        slots = config.stm_size
        if self.gate_type == "linear":
            self.gate = linear(slots, slots if self.per_slot else 1, bias=True)
            nn.init.constant_(self.gate.bias, config.residual_gate_init)
            if self.linear_slot_status:
                self.slot_status = linear(config.embed_dim, 1, bias=True)
        else:
            shape = (slots, 1) if self.per_slot else (1,)
            self.gate = nn.Parameter(torch.full(shape, float(config.residual_gate_init)))

    def gate_value(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """The gate ``g`` before the mix, broadcastable to ``(B, S, D)``."""
        if self.gate_type == "static":
            logits = self.gate
        elif self.gate_type == "elementwise":
            if self.per_slot:
                logits = self.gate * (new + old).mean(dim=-1, keepdim=True)
            else:
                logits = self.gate * (new + old).mean(dim=(-2, -1), keepdim=True)
        else:
            status = self.slot_status(new + old).squeeze(-1) if self.linear_slot_status else (new + old).mean(-1)
            logits = self.gate(status).unsqueeze(-1)
        return torch.tanh(logits) if self.use_tanh else torch.sigmoid(logits)

    def forward(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        if self.disable_residual:
            return new
        if not self.use_gate:
            return new + old
        gate = self.gate_value(old, new)
        if self.use_tanh:
            return (1 + gate) * new + (1 - gate) * old
        return gate * new + (1 - gate) * old


def _norms(config: MemoryAttentionConfig) -> nn.ModuleList:
    return nn.ModuleList(rms_norm(config.embed_dim) for _ in range(config.num_layers))


def _gates(config: MemoryAttentionConfig, use_gate: bool, disable_residual: bool = False) -> nn.ModuleList:
    return nn.ModuleList(ResidualGate(config, use_gate, disable_residual) for _ in range(config.num_layers))


def _attentions(config: MemoryAttentionConfig, shape, rope=None, rope_on="k") -> nn.ModuleList:
    return nn.ModuleList(
        Attention(config.embed_dim, shape, rope=rope, rope_on=rope_on, out_bias=True) for _ in range(config.num_layers)
    )


class MemoryAttentionModel(nn.Module):
    """rxlm's memory-attention module tree (``attention_layers``, norms, gates, ``stm``)."""

    def __init__(self, config: MemoryAttentionConfig, variant: str):
        super().__init__()
        if variant not in MEMORY_ATTENTION_VARIANTS:
            raise ValueError(f"memory attention variant {variant!r} is not one of {MEMORY_ATTENTION_VARIANTS}")
        if variant == "grouped-self-interlayer" and not config.num_groups:
            raise ValueError("grouped-self-interlayer memory attention needs num_groups")
        self.variant = variant
        self.num_groups = config.num_groups or 1
        self.stm = ShortTermMemory(config.num_layers, config.stm_size, config.embed_dim)
        rope = None
        if not config.use_nope:
            rope = RotaryPositionalEmbedding(config.embed_dim // config.att_heads, config.seq_len, config.rope_base)
        self.attention_layers = _attentions(config, config.main_attention_shape(), rope, "k")
        self.memory_norm_layers = _norms(config)
        self.memory_input_norm_layers = _norms(config)
        self.residual_gate_layers = _gates(
            config, config.use_gated_residual, disable_residual=variant == "simple" and config.disable_residual
        )
        if variant == "self":
            self.self_attention_layers = _attentions(config, config.self_attention_shape())
            self.self_memory_norm_layers = _norms(config)
            self.self_residual_gate_layers = _gates(config, config.use_gate_for_self_attention)
        if variant in ("interlayer", "self-interlayer", "grouped-self-interlayer"):
            self.mean_attention_layers = _attentions(config, config.interlayer_attention_shape())
            self.mean_memory_norm_layers = _norms(config)
            self.mean_residual_gate_layers = _gates(config, config.use_gated_residual)
            self.mean_stm_norm = rms_norm(config.embed_dim)
        if variant in ("self-interlayer", "grouped-self-interlayer"):
            self.interlayer_gate_layers = _gates(config, config.use_gated_residual)

    def main(self, index: int, state: torch.Tensor, encoded: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``ResGate(old=U, new=Attn(q=MemNorm(U), k=v=InNorm(ED), RoPE on k))``."""
        new = self.attention_layers[index](
            self.memory_norm_layers[index](state), self.memory_input_norm_layers[index](encoded), mask=mask
        )
        return self.residual_gate_layers[index](state, new)

    def layer_means(self, stm: torch.Tensor) -> list[torch.Tensor]:
        """``MeanNorm(mean over the layers of each group)``, one ``(B, S, D)`` per layer."""
        num_layers = stm.shape[0]
        groups = self.num_groups if self.variant == "grouped-self-interlayer" else 1
        size = num_layers // groups
        means = [self.mean_stm_norm(stm[g * size : (g + 1) * size].mean(dim=0)) for g in range(groups)]
        return [means[index // size] for index in range(num_layers)]

    def pre_step(self, index: int, state: torch.Tensor, means: list[torch.Tensor] | None) -> torch.Tensor:
        """The main attention's input ``U`` for layer ``index`` (variant specific)."""
        if self.variant == "simple":
            return state
        if self.variant == "self":
            normed = self.self_memory_norm_layers[index](state)
            new = self.self_attention_layers[index](normed, normed)
            return self.self_residual_gate_layers[index](state, new)
        normed = self.mean_memory_norm_layers[index](state)
        keys = means[index]
        if self.variant != "interlayer":
            keys = self.interlayer_gate_layers[index](normed, keys)
        new = self.mean_attention_layers[index](normed, keys)
        return self.mean_residual_gate_layers[index](state, new)


class RxTMemoryAttention(nn.Module):
    """The memory-attention component for any of the five variants."""

    def __init__(self, config: MemoryAttentionConfig, variant: str):
        super().__init__()
        self.config = config
        self.variant = variant
        self.model = MemoryAttentionModel(config, variant)

    def forward(
        self, stm: torch.Tensor, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """New STM ``(L, B, S, D)`` from ``stm (L, B, S, D)`` and encoder ``hidden (L, B, T, D)``."""
        if stm.shape[0] != hidden.shape[0] or stm.shape[1] != hidden.shape[1]:
            raise ValueError(
                f"stm {tuple(stm.shape)} and encoder hidden states {tuple(hidden.shape)} must agree on "
                "layers and batch (memory attention does not broadcast the STM)"
            )
        model = self.model
        means = model.layer_means(stm) if model.variant not in ("simple", "self") else None
        return torch.stack(
            [
                model.main(index, model.pre_step(index, stm[index], means), hidden[index], attention_mask)
                for index in range(stm.shape[0])
            ]
        )
