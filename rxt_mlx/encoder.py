"""The RxT encoder: bidirectional layers over the whole interaction, every layer's output kept."""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from rxt_mlx.attention import key_padding_mask
from rxt_mlx.config import TransformerConfig
from rxt_mlx.decoder import TransformerLayer, shared_positions


class Encoder(nn.Module):
    """Bidirectional encoder using the decoder's (shared) token embedding.

    Args:
        config: encoder config. Layers of configs with ``skip_memory_cross_attention`` off
            still own the (unused) cross-attention weights, so those checkpoints load.
        embed: the shared embedding lookup ``ids -> (B, T, D)``; it is not a parameter of
            the encoder, so the embedding is stored once (as the decoder's).
    """

    def __init__(self, config: TransformerConfig, embed: Callable[[mx.array], mx.array]):
        super().__init__()
        self.config = config
        self.embed = embed
        kind = "moe" if config.use_moe else "ff"
        self.layers = [
            TransformerLayer(config, kind, config.has_memory_cross_attention) for _ in range(config.num_layers)
        ]

    def __call__(self, ids: mx.array, mask: mx.array | None = None) -> mx.array:
        """Hidden states (L, B, T, D) of every layer for ``ids`` (B, T); ``mask`` (B, T) marks real tokens."""
        attention_mask = key_padding_mask(mask)
        x = self.embed(ids)
        positions = shared_positions(self.layers, 0, ids.shape[1], x.dtype)
        hidden = []
        for layer in self.layers:
            x = layer(x, mask=attention_mask, offset=positions)
            hidden.append(x)
        return mx.stack(hidden)
