"""PyTorch reference RxT with rxlm 0.3.80's math and ``state_dict`` names (spec §2-§3)."""

from .memory_attention import RxTMemoryAttention
from .model import RxTReference
from .transformer import RxTDecoder, RxTEncoder

__all__ = ["RxTDecoder", "RxTEncoder", "RxTMemoryAttention", "RxTReference"]
