"""PyTorch reference RxT with rxlm 0.3.80's math and ``state_dict`` names (docs/architecture.md).

Modules: ``layers`` (norms, RoPE, attention, KV cache), ``feedforward`` (FFN, MoE),
``transformer`` (decoder, encoder, STM buffer), ``memory_attention`` (five variants, residual
gate), ``model`` (:class:`RxTReference`), ``checkpoint`` (``save_rxlm``, ``load_reference``),
``generate`` (timed cached decoding), ``testing`` (``randomize_``, ``tiny_beta_config``).
Where rxlm's code path is open, the choice is written in the module docstring
of ``feedforward`` and ``memory_attention``.
"""

from .memory_attention import RxTMemoryAttention
from .model import RxTReference
from .transformer import RxTDecoder, RxTEncoder

__all__ = ["RxTDecoder", "RxTEncoder", "RxTMemoryAttention", "RxTReference"]
