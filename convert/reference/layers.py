"""Building blocks shared by every component: norms, activations, RoPE, attention, KV cache.

Math and parameter names follow rxlm 0.3.80 (docs/architecture.md §Attention, §RoPE):
``q_proj``/``k_proj``/``v_proj`` without bias, ``out_proj`` (bias optional), ``gate_proj`` for
gated attention and one interleaved (GPT-J) RoPE module shared by all attentions of a component.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rxt_mlx.config import FLOAT32_EPS, AttentionShape

LINEAR_INIT_STD = 0.02


def rms_norm(dim: int) -> nn.RMSNorm:
    """rxlm's ``nn.RMSNorm(dim)`` (eps=None), with the fp32 eps made explicit."""
    return nn.RMSNorm(dim, eps=FLOAT32_EPS)


def transformer_norm(dim: int, use_rms_norm: bool) -> nn.Module:
    """Norm of a transformer layer: RMSNorm by default, LayerNorm (eps 1e-5) otherwise."""
    return rms_norm(dim) if use_rms_norm else nn.LayerNorm(dim)


def activation(name: str) -> nn.Module:
    """rxlm ``get_activation_layer``: silu/swish, relu, gelu, sigmoid, tanh, linear."""
    layers = {
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "linear": nn.Identity,
    }
    if name not in layers:
        raise ValueError(f"activation {name!r} is not one of {', '.join(layers)}")
    return layers[name]()


def linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """``nn.Linear`` initialised N(0, 0.02) with zero bias."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.normal_(layer.weight, std=LINEAR_INIT_STD)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class RotaryPositionalEmbedding(nn.Module):
    """Interleaved RoPE: pairs ``(x[2i], x[2i+1])`` rotated by ``pos * base^(-2i/hd)``.

    Buffers ``inv_freq (hd/2,)`` and ``cache (seq_len, hd/2)`` are persistent, as in rxlm.
    Angles are cast to the activation dtype *before* cos/sin (bf16 models rotate with
    bf16-rounded angles, like the reference).
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        positions = torch.arange(max_seq_len, dtype=torch.float32)
        self.register_buffer("inv_freq", inv_freq)
        self.register_buffer("cache", torch.outer(positions, inv_freq))

    def angles(self, offset: int, length: int) -> torch.Tensor:
        """Angles ``(T, hd/2)`` of positions ``offset..offset+T-1``; beyond the cache, from inv_freq."""
        if offset + length <= self.cache.shape[0]:
            return self.cache[offset : offset + length]
        positions = torch.arange(offset, offset + length, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        return torch.outer(positions, self.inv_freq)

    def rotate(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Rotate ``x (B, H, T, hd)`` whose tokens sit at positions ``offset..offset+T-1``."""
        angles = self.angles(offset, x.shape[2]).to(x.dtype)
        cos, sin = angles.cos(), angles.sin()
        even, odd = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rotated.flatten(-2)


class KVCache:
    """Self-attention keys/values of one layer, ``(B, H_kv, P, hd)``, after RoPE.

    Storage grows in steps of ``step`` positions and is written in place, so a decoding step
    copies only the new token's keys (for inference under ``torch.no_grad``).
    """

    step = 256

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.offset = 0

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``keys``/``values`` ``(B, H_kv, T, hd)``; return everything cached so far."""
        end = self.offset + keys.shape[2]
        if self.keys is None or end > self.keys.shape[2]:
            capacity = -(-end // self.step) * self.step
            grown_keys = keys.new_empty((*keys.shape[:2], capacity, keys.shape[3]))
            grown_values = values.new_empty((*values.shape[:2], capacity, values.shape[3]))
            if self.keys is not None:
                grown_keys[:, :, : self.offset] = self.keys[:, :, : self.offset]
                grown_values[:, :, : self.offset] = self.values[:, :, : self.offset]
            self.keys, self.values = grown_keys, grown_values
        self.keys[:, :, self.offset : end] = keys
        self.values[:, :, self.offset : end] = values
        self.offset = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class Attention(nn.Module):
    """MHA / GQA / MQA / SQA attention with rxlm's parameter names.

    Args:
        embed_dim: model width D.
        shape: head layout (``rxt_mlx.config.attention_shape``).
        rope: the component's shared RoPE module, or None (no RoPE at all).
        rope_on: which side is rotated: ``"qk"``, ``"q"`` or ``"k"``.
        out_bias: whether ``out_proj`` has a bias.
        gated: gated attention (``gate_proj``, output ``concat_heads * act(gate_proj(x_q))``).
        gate_activation: activation of the attention gate.
    """

    def __init__(
        self,
        embed_dim: int,
        shape: AttentionShape,
        *,
        rope: RotaryPositionalEmbedding | None,
        rope_on: str = "qk",
        out_bias: bool = True,
        gated: bool = False,
        gate_activation: str = "sigmoid",
    ):
        super().__init__()
        if rope_on not in ("qk", "q", "k"):
            raise ValueError(f"rope_on must be 'qk', 'q' or 'k', got {rope_on!r}")
        self.shape = shape
        self.rope_on = rope_on
        hd = shape.head_dim
        self.rope = rope
        self.q_proj = linear(embed_dim, shape.query_heads * hd, bias=False)
        self.k_proj = linear(embed_dim, shape.kv_heads * hd, bias=False)
        self.v_proj = linear(embed_dim, shape.kv_heads * hd, bias=False)
        self.out_proj = linear(shape.out_heads * hd, embed_dim, bias=out_bias)
        if gated:
            self.gate_proj = nn.Linear(embed_dim, shape.out_heads * hd, bias=False)
            nn.init.normal_(self.gate_proj.weight, mean=1.0, std=0.01)
            self.gate_activation = activation(gate_activation)
        else:
            self.gate_proj = None

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, heads, self.shape.head_dim).transpose(1, 2)

    def project_kv(self, x_kv: torch.Tensor, offset: int = 0):
        """Keys and values ``(B, H_kv, T, hd)``; keys rotated (from ``offset``) when RoPE applies to k."""
        keys = self._heads(self.k_proj(x_kv), self.shape.kv_heads)
        values = self._heads(self.v_proj(x_kv), self.shape.kv_heads)
        if self.rope is not None and "k" in self.rope_on:
            keys = self.rope.rotate(keys, offset)
        return keys, values

    def forward(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor | None = None,
        *,
        causal: bool = False,
        mask: torch.Tensor | None = None,
        offset: int | None = None,
        cache: KVCache | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend from ``x_q (B, Tq, D)`` to ``x_kv (B, Tk, D)`` (or precomputed ``kv``).

        Args:
            causal: causal mask (decoder self-attention); with a cache, query i sits at
                position ``offset + i``.
            mask: key padding mask ``(B, Tk)``, True = keep.
            offset: position of the first query (default: the cache length, or 0);
                self-attention keys share the queries' positions, other keys start at 0.
            cache: self-attention KV cache, extended in place.
            kv: precomputed ``(keys, values)`` (memory cross-attention, projected once per turn).
        """
        batch, length, _ = x_q.shape
        if offset is None:
            offset = cache.offset if cache is not None else 0
        queries = self._heads(self.q_proj(x_q), self.shape.query_heads)
        if self.rope is not None and "q" in self.rope_on:
            queries = self.rope.rotate(queries, offset)
        if kv is None:
            keys, values = self.project_kv(x_q, offset) if x_kv is None else self.project_kv(x_kv)
        else:
            keys, values = kv
        if cache is not None:
            keys, values = cache.update(keys, values)
        queries, keys, values = self._share_heads(queries, keys, values)
        attn_mask = None
        is_causal = False
        if causal and offset == 0:
            is_causal = length > 1
        elif causal and length > 1:
            total = keys.shape[2]
            query_pos = torch.arange(offset, offset + length, device=x_q.device)
            attn_mask = torch.arange(total, device=x_q.device)[None, :] <= query_pos[:, None]
        if mask is not None:
            key_mask = mask.to(torch.bool)[:, None, None, :]
            attn_mask = key_mask if attn_mask is None else attn_mask & key_mask
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=attn_mask, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(batch, length, self.shape.out_heads * self.shape.head_dim)
        if self.gate_proj is not None:
            out = out * self.gate_activation(self.gate_proj(x_q))
        return self.out_proj(out)

    def _share_heads(self, queries, keys, values):
        """Expand to ``out_heads`` heads: GQA-style kv sharing or revSQA query tiling."""
        query_heads, kv_heads = self.shape.query_heads, self.shape.kv_heads
        if query_heads > kv_heads:
            repeat = query_heads // kv_heads
            keys = keys.repeat_interleave(repeat, dim=1)
            values = values.repeat_interleave(repeat, dim=1)
        elif query_heads < kv_heads:
            queries = queries.repeat(1, kv_heads // query_heads, 1, 1)
        return queries, keys, values
