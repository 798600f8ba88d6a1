"""Decoder and encoder (docs/architecture.md §Decoder, §Encoder) with rxlm's module tree under ``.model``."""

from __future__ import annotations

import torch
from torch import nn

from rxt_mlx.config import TransformerConfig

from .feedforward import MoeFeedForward, dense_feed_forward
from .layers import Attention, KVCache, RotaryPositionalEmbedding, linear, rms_norm, transformer_norm

MemoryKV = list[tuple[torch.Tensor, torch.Tensor]]


class ShortTermMemory(nn.Module):
    """The STM buffer ``memory (L, B, S, D)``, N(0, 1) like rxlm's ``standard`` init."""

    def __init__(self, num_layers: int, stm_size: int, embed_dim: int, batch: int = 1):
        super().__init__()
        self.register_buffer("memory", torch.randn(num_layers, batch, stm_size, embed_dim))

    def resize(self, batch: int, generator: torch.Generator | None = None) -> None:
        """Re-create the buffer with another batch size (rxlm ``set_batch_mode``), N(0, 1)."""
        layers, _, slots, dim = self.memory.shape
        self.memory = torch.randn(
            layers, batch, slots, dim, generator=generator, dtype=self.memory.dtype, device=self.memory.device
        )


def _rope(config: TransformerConfig) -> RotaryPositionalEmbedding | None:
    if config.use_nope:
        return None
    return RotaryPositionalEmbedding(config.embed_dim // config.att_heads, config.seq_len, config.rope_base)


def _attention(config: TransformerConfig, shape, rope, rope_on: str, gated: bool) -> Attention:
    return Attention(
        config.embed_dim,
        shape,
        rope=rope,
        rope_on=rope_on,
        out_bias=config.use_attention_output_bias,
        gated=gated,
        gate_activation=config.gated_attention_activation,
    )


class TransformerLayer(nn.Module):
    """Pre-norm layer: self-attention, optional memory cross-attention, FFN or MoE.

    Names: ``attention``/``norm1``, ``memory_cross_attention``/``norm2``/``stm_norm``,
    ``ff``/``norm3``.
    """

    def __init__(
        self,
        config: TransformerConfig,
        rope: RotaryPositionalEmbedding | None,
        ff: nn.Module,
        *,
        causal: bool,
        cross_attention: bool,
    ):
        super().__init__()
        dim = config.embed_dim
        self.causal = causal
        self.attention = _attention(config, config.self_attention_shape(), rope, "qk", config.use_gated_attention)
        self.norm1 = transformer_norm(dim, config.use_rms_norm)
        if cross_attention:
            self.memory_cross_attention = _attention(
                config, config.cross_attention_shape(), rope, "q", config.gated_cross_attention
            )
            self.norm2 = transformer_norm(dim, config.use_rms_norm)
            self.stm_norm = transformer_norm(dim, config.use_rms_norm)
        else:
            self.memory_cross_attention = None
        self.ff = ff
        self.norm3 = transformer_norm(dim, config.use_rms_norm)

    def project_memory(self, stm_layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of one STM layer ``(B, S, D)`` (no RoPE on memory keys)."""
        return self.memory_cross_attention.project_kv(self.stm_norm(stm_layer))

    def forward(
        self,
        x: torch.Tensor,
        *,
        memory: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        offset: int = 0,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        normed = self.norm1(x)
        x = x + self.attention(
            normed, causal=self.causal, mask=None if self.causal else mask, offset=offset, cache=cache
        )
        if memory is not None:
            x = x + self.memory_cross_attention(self.norm2(x), kv=memory, offset=offset)
        return x + self.ff(self.norm3(x))


def _stateless_layers(config, rope, kinds, causal) -> nn.ModuleList | None:
    if not kinds:
        return None
    layers = []
    for kind in kinds:
        ff = MoeFeedForward(config) if kind == "moe" else dense_feed_forward(config, config.dense_layer_dim)
        layers.append(TransformerLayer(config, rope, ff, causal=causal, cross_attention=False))
    return nn.ModuleList(layers)


def _stateful_layers(config, rope, causal) -> nn.ModuleList:
    return nn.ModuleList(
        TransformerLayer(
            config,
            rope,
            MoeFeedForward(config) if config.use_moe else dense_feed_forward(config, config.ff_dim),
            causal=causal,
            cross_attention=config.has_memory_cross_attention,
        )
        for _ in range(config.num_layers)
    )


def _embedding(config: TransformerConfig) -> nn.Embedding:
    embedding = nn.Embedding(config.vocab_size, config.embed_dim)
    nn.init.normal_(embedding.weight, std=0.02)
    return embedding


def _broadcast_stm(stm: torch.Tensor, batch: int) -> torch.Tensor:
    if stm.dim() != 4:
        raise ValueError(f"stm must be (layers, batch, slots, dim), got shape {tuple(stm.shape)}")
    if stm.shape[1] == batch:
        return stm
    if stm.shape[1] == 1:
        return stm.expand(-1, batch, -1, -1)
    raise ValueError(f"stm batch {stm.shape[1]} does not match input batch {batch}")


class DecoderModel(nn.Module):
    """rxlm ``ReactiveTransformerDecoder``: embedding, layers, head_norm, head."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.embedding = _embedding(config)
        if config.has_memory_cross_attention:
            self.stm = ShortTermMemory(config.num_layers, config.stm_size, config.embed_dim)
        rope = _rope(config)
        self.stateless_layers = _stateless_layers(config, rope, config.stateless_layers_config, causal=True)
        self.layers = _stateful_layers(config, rope, causal=True)
        self.final_stateless_layers = _stateless_layers(config, rope, config.final_stateless_layers_config, causal=True)
        if config.use_head_norm:
            self.head_norm = (
                rms_norm(config.embed_dim) if config.head_norm_type == "rms_norm" else nn.LayerNorm(config.embed_dim)
            )
        else:
            self.head_norm = None
        self.head = linear(config.embed_dim, config.vocab_size, bias=True)

    def all_layers(self) -> list[TransformerLayer]:
        """Every layer in forward order (stateless, stateful, final stateless)."""
        layers = list(self.stateless_layers or [])
        layers += list(self.layers)
        return layers + list(self.final_stateless_layers or [])


class RxTDecoder(nn.Module):
    """The RxT decoder component; ``state_dict`` keys are rxlm's ``model.*``."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.model = DecoderModel(config)

    def make_cache(self) -> list[KVCache]:
        """One empty self-attention cache per decoder layer (stateless ones included)."""
        return [KVCache() for _ in self.model.all_layers()]

    def project_memory(self, stm: torch.Tensor) -> MemoryKV:
        """Cross-attention keys/values of every stateful layer, computed once per turn."""
        return [layer.project_memory(stm[index]) for index, layer in enumerate(self.model.layers)]

    def forward(
        self,
        input_ids: torch.Tensor,
        stm: torch.Tensor | None = None,
        *,
        cache: list[KVCache] | None = None,
        memory: MemoryKV | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, T, V)`` for ``input_ids (B, T)``.

        Args:
            stm: ``(L, B or 1, S, D)``; defaults to the ``model.stm`` buffer.
            cache: from :meth:`make_cache`; positions continue from the cache length.
            memory: from :meth:`project_memory` (then ``stm`` is not used).
        """
        model = self.model
        x = model.embedding(input_ids)
        batch = input_ids.shape[0]
        if memory is None and self.config.has_memory_cross_attention:
            stm = _broadcast_stm(model.stm.memory if stm is None else stm, batch)
            memory = self.project_memory(stm)
        offset = cache[0].offset if cache else 0
        layers = model.all_layers()
        first_stateful = len(model.stateless_layers or [])
        for index, layer in enumerate(layers):
            stateful_index = index - first_stateful
            layer_memory = None
            if memory is not None and 0 <= stateful_index < len(model.layers):
                layer_memory = memory[stateful_index]
            x = layer(x, memory=layer_memory, offset=offset, cache=cache[index] if cache else None)
        if model.head_norm is not None:
            x = model.head_norm(x)
        return model.head(x)


class EncoderModel(nn.Module):
    """rxlm ``ReactiveTransformerEncoder``: embedding and bidirectional layers, no final norm."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.embedding = _embedding(config)
        if config.has_memory_cross_attention:
            # Kept only so checkpoints of encoders built without skip_memory_cross_attention
            # have their keys; the encoder never reads the STM.
            self.stm = ShortTermMemory(config.num_layers, config.stm_size, config.embed_dim)
        self.layers = _stateful_layers(config, _rope(config), causal=False)


class RxTEncoder(nn.Module):
    """The RxT encoder component; returns every layer's output."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.model = EncoderModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``(L, B, T, D)`` for ``input_ids (B, T)``; mask ``(B, T)`` True = keep."""
        x = self.model.embedding(input_ids)
        hidden = []
        for layer in self.model.layers:
            x = layer(x, mask=attention_mask)
            hidden.append(x)
        return torch.stack(hidden)
