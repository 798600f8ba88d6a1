"""The full reference RxT: decoder, encoder and memory attention with shared components."""

from __future__ import annotations

import torch
from torch import nn

from rxt_mlx.config import RxTConfig

from .memory_attention import RxTMemoryAttention
from .transformer import RxTDecoder, RxTEncoder


class RxTReference(nn.Module):
    """rxlm ``RxTAlpha``/``RxTBeta`` after ``share_components()``.

    The decoder's embedding *is* the encoder's (``state_dict`` lists both keys) and the
    decoder's ``model.stm`` is the memory attention's.
    """

    def __init__(self, config: RxTConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.decoder = RxTDecoder(config.decoder)
        self.encoder = RxTEncoder(config.encoder)
        self.memory_attention = RxTMemoryAttention(config.memory_attention, config.memory_attention_variant)
        self.share_components()

    def share_components(self) -> None:
        """Share the encoder's embedding and the memory attention's STM with the decoder."""
        self.decoder.model.embedding = self.encoder.model.embedding
        self.decoder.model.stm = self.memory_attention.model.stm

    def initial_stm(self, batch: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """A fresh N(0, 1) STM ``(L, B, S, D)`` (rxlm ``standard`` init)."""
        layers, slots, dim = self.config.stm_shape
        parameter = self.decoder.model.head.weight
        stm = torch.randn(layers, batch, slots, dim, generator=generator)
        return stm.to(device=parameter.device, dtype=parameter.dtype)

    def set_stm_batch(self, batch: int, generator: torch.Generator | None = None) -> None:
        """Re-create the STM buffers with batch size ``batch`` (rxlm ``set_batch_mode``)."""
        self.memory_attention.model.stm.resize(batch, generator)
        if hasattr(self.encoder.model, "stm"):
            self.encoder.model.stm.resize(batch, generator)

    def update_memory(
        self, stm: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """STM_t from STM_{t-1} and one interaction ``[BOS][Q]query[A]answer[EOS]``."""
        return self.memory_attention(stm, self.encoder(input_ids, attention_mask), attention_mask)
