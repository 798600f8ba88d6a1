"""The RxT decoder: stateless layers, stateful layers reading the STM, head.

Also defines :class:`TransformerLayer`, the pre-norm layer shared with the encoder.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache

from rxt_mlx.attention import Attention, Rope
from rxt_mlx.config import AttentionShape, TransformerConfig
from rxt_mlx.feedforward import feed_forward
from rxt_mlx.layers import layer_norm, rms_norm, transformer_norm

MemoryKV = list[tuple[mx.array, mx.array]]


def component_rope(config: TransformerConfig) -> Rope | None:
    """The rotary embedding shared by all attentions of a decoder/encoder (None with use_nope)."""
    if config.use_nope:
        return None
    return Rope(config.embed_dim // config.att_heads, float(config.rope_base))


def _attention(
    config: TransformerConfig, shape: AttentionShape, gated: bool, rope: Rope | None, rope_keys: bool = True
) -> Attention:
    return Attention(
        config.embed_dim,
        shape,
        output_bias=config.use_attention_output_bias,
        gated=gated,
        gate_activation=config.gated_attention_activation,
        rope=rope,
        rope_keys=rope_keys,
    )


class TransformerLayer(nn.Module):
    """rxlm layer: ``x += SelfAttn(norm1 x)``; ``x += CrossAttn(norm2 x, stm_norm STM)``; ``x += FF(norm3 x)``.

    Args:
        config: decoder or encoder config.
        ff_kind: 'moe', 'dense' (stateless dense layer) or 'ff' (dense with ff_dim).
        memory_cross_attention: whether the layer owns the STM cross-attention.
    """

    def __init__(self, config: TransformerConfig, ff_kind: str, memory_cross_attention: bool):
        super().__init__()
        dim, rope = config.embed_dim, component_rope(config)
        self.attention = _attention(config, config.self_attention_shape(), config.use_gated_attention, rope)
        self.norm1 = transformer_norm(dim, config.use_rms_norm)
        if memory_cross_attention:
            self.memory_cross_attention = _attention(
                config, config.cross_attention_shape(), config.gated_cross_attention, rope, rope_keys=False
            )
            self.norm2 = transformer_norm(dim, config.use_rms_norm)
            self.stm_norm = transformer_norm(dim, config.use_rms_norm)
        self.ff = feed_forward(config, ff_kind)
        self.norm3 = transformer_norm(dim, config.use_rms_norm)

    def project_memory(self, stm_layer: mx.array) -> tuple[mx.array, mx.array]:
        """Cross-attention keys/values of one STM layer (B, S, D); no RoPE on memory keys."""
        return self.memory_cross_attention.project_kv(self.stm_norm(stm_layer))

    def __call__(
        self,
        x: mx.array,
        *,
        mask: mx.array | str | None,
        memory: tuple[mx.array, mx.array] | None = None,
        cache=None,
        offset: int = 0,
    ) -> mx.array:
        x = x + self.attention(self.norm1(x), mask=mask, cache=cache, offset=offset)
        if memory is not None:
            x = x + self.memory_cross_attention(self.norm2(x), kv=memory, offset=offset)
        return x + self.ff(self.norm3(x))


class Decoder(nn.Module):
    """Causal decoder: embedding, stateless layers, stateful layers, final stateless layers, head."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        stateful_kind = "moe" if config.use_moe else "ff"
        if config.stateless_layers_config:
            self.stateless_layers = [TransformerLayer(config, kind, False) for kind in config.stateless_layers_config]
        self.layers = [TransformerLayer(config, stateful_kind, True) for _ in range(config.num_layers)]
        if config.final_stateless_layers_config:
            self.final_stateless_layers = [
                TransformerLayer(config, kind, False) for kind in config.final_stateless_layers_config
            ]
        if config.use_head_norm:
            norm = rms_norm if config.head_norm_type == "rms_norm" else layer_norm
            self.head_norm = norm(config.embed_dim)
        self.head = nn.Linear(config.embed_dim, config.vocab_size, bias=True)

    def all_layers(self) -> list[TransformerLayer]:
        """Every layer in execution order (the order of :meth:`make_cache`)."""
        return self.get("stateless_layers", []) + self.layers + self.get("final_stateless_layers", [])

    def make_cache(self) -> list[KVCache]:
        """One self-attention KV cache per layer, stateless layers included."""
        return [KVCache() for _ in self.all_layers()]

    def project_memory(self, stm: mx.array) -> MemoryKV:
        """Cross-attention keys/values of every stateful layer from the STM (L, B, S, D).

        Compute it once per turn and pass it as ``memory=`` to every decoder call of that turn.
        """
        stm = stm.astype(self.head.bias.dtype)
        return [layer.project_memory(stm[index]) for index, layer in enumerate(self.layers)]

    def __call__(
        self,
        ids: mx.array,
        stm: mx.array | None = None,
        *,
        cache: list[KVCache] | None = None,
        memory: MemoryKV | None = None,
    ) -> mx.array:
        """Logits (B, T, V) of ``ids`` (B, T) given the STM (or its projection ``memory``).

        With ``cache`` (from :meth:`make_cache`), ``ids`` continue the cached sequence: their
        positions start at the cache offset.
        """
        if memory is None:
            if stm is None:
                raise ValueError("decoder needs the STM (stm=...) or its projection (memory=...)")
            memory = self.project_memory(stm)
        if len(memory) != len(self.layers):
            raise ValueError(f"memory has {len(memory)} layers, the decoder has {len(self.layers)} stateful layers")
        layers = self.all_layers()
        caches = cache if cache is not None else [None] * len(layers)
        offset = caches[0].offset if cache is not None else 0
        mask = "causal" if ids.shape[1] > 1 else None
        stateful = iter(memory)
        x = self.embedding(ids)
        for layer, layer_cache in zip(layers, caches, strict=True):
            layer_memory = next(stateful) if "memory_cross_attention" in layer else None
            x = layer(x, mask=mask, memory=layer_memory, cache=layer_cache, offset=offset)
        if "head_norm" in self:
            x = self.head_norm(x)
        return self.head(x)
