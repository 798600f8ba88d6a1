"""Feed-forward blocks: plain and gated FFN, and rxlm's mixture of experts.

Names follow rxlm (``fc1.linear``, ``fc2``, ``router.gate``, ``shared_expert``,
``shared_expert_gate``, ``global_bias``, ``shared_experts_bias``). The vectorized expert
weights ``w1``/``w2`` (and the many-shared-experts ``shared_w1``/``shared_w2``) live in
mlx-lm ``SwitchGLU`` modules named ``experts`` and ``shared_experts``; see
:func:`rxt_mlx.weights.sanitize` for the mapping.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.switch_layers import SwitchGLU

from rxt_mlx.config import TransformerConfig
from rxt_mlx.cpu_matmul import linear_rows
from rxt_mlx.layers import activation

ROUTER_EPS = 1e-9


class GatedLinearUnit(nn.Module):
    """``linear: D -> 2F``; the first half is the value, the second the gate: ``a * act(g)``."""

    def __init__(self, input_dims: int, hidden_dims: int, act: Callable[[mx.array], mx.array], bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(input_dims, 2 * hidden_dims, bias=bias)
        self.act = act

    def __call__(self, x: mx.array) -> mx.array:
        value, gate = mx.split(linear_rows(x, self.linear), 2, axis=-1)
        return value * self.act(gate)


class GatedFeedForward(nn.Module):
    """SwiGLU-style FFN: ``fc2(fc1(x))`` with ``fc1`` a :class:`GatedLinearUnit`."""

    def __init__(self, embed_dim: int, hidden_dims: int, act_name: str, bias: bool = True):
        super().__init__()
        self.fc1 = GatedLinearUnit(embed_dim, hidden_dims, activation(act_name), bias=bias)
        self.fc2 = nn.Linear(hidden_dims, embed_dim, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.fc1(x))


class FeedForward(nn.Module):
    """Plain FFN ``fc2(act(fc1(x)))`` (rxlm ``use_gated=False``)."""

    def __init__(self, embed_dim: int, hidden_dims: int, act_name: str):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dims)
        self.fc2 = nn.Linear(hidden_dims, embed_dim)
        self.act = activation(act_name)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.act(self.fc1(x)))


class _GLUActivation:
    """SwitchGLU's ``activation(up, gate)`` for rxlm's ``value * act(gate)``."""

    def __init__(self, act: Callable[[mx.array], mx.array]):
        self.act = act

    def __call__(self, up: mx.array, gate: mx.array) -> mx.array:
        return up * self.act(gate)


class Router(nn.Module):
    """Softmax router: top-k experts with weights renormalized to sum to one."""

    def __init__(self, embed_dim: int, num_experts: int, top_k: int):
        super().__init__()
        self.gate = nn.Linear(embed_dim, num_experts, bias=False)
        self.top_k = top_k

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        probs = mx.softmax(self.gate(x).astype(mx.float32), axis=-1)
        indices = mx.argpartition(-probs, kth=self.top_k - 1, axis=-1)[..., : self.top_k]
        weights = mx.take_along_axis(probs, indices, axis=-1)
        weights = weights / (weights.sum(axis=-1, keepdims=True) + ROUTER_EPS)
        return weights.astype(x.dtype), indices


class MoE(nn.Module):
    """rxlm vectorized gated MoE: routed experts, optional shared experts and biases."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        dim, act_name = config.embed_dim, config.ff_activation
        glu = _GLUActivation(activation(act_name))
        self.top_k = config.moe_top_k
        self.num_shared = config.num_shared_experts
        self.weighted_shared = config.moe_use_weighted_shared_experts and self.num_shared > 0
        # legacy (non-vectorized) experts each own their biases: the vectorized 'local' mode
        bias_mode = config.moe_bias_mode if config.use_vectorized_moe else "local"
        self.router = Router(dim, config.num_experts, config.moe_top_k)
        self.experts = SwitchGLU(dim, config.ff_dim, config.num_experts, activation=glu, bias=bias_mode == "local")
        if bias_mode == "global":
            self.global_bias = mx.zeros((dim,))
        shared_local = config.moe_shared_experts_bias_mode == "local"
        if self.num_shared == 1:
            self.shared_expert = GatedFeedForward(dim, config.shared_dim, act_name, bias=shared_local)
        elif self.num_shared > 1:
            self.shared_experts = SwitchGLU(dim, config.shared_dim, self.num_shared, activation=glu, bias=shared_local)
            self.shared_expert_gate = nn.Linear(dim, self.num_shared, bias=False)
        if self.num_shared and config.moe_shared_experts_bias_mode == "global":
            self.shared_experts_bias = mx.zeros((dim,))

    def _shared(self, x: mx.array) -> mx.array:
        if self.num_shared == 1:
            out = self.shared_expert(x)
        else:
            indices = mx.broadcast_to(mx.arange(self.num_shared), (*x.shape[:-1], self.num_shared))
            outputs = self.shared_experts(x, indices)  # (..., S, D)
            weights = mx.softmax(self.shared_expert_gate(x).astype(mx.float32), axis=-1).astype(x.dtype)
            out = (outputs * weights[..., None]).sum(axis=-2)
        if "shared_experts_bias" in self:
            out = out + self.shared_experts_bias
        return out

    def __call__(self, x: mx.array) -> mx.array:
        weights, indices = self.router(x)
        out = (self.experts(x, indices) * weights[..., None]).sum(axis=-2)
        if "global_bias" in self:
            out = out + self.global_bias
        if not self.num_shared:
            return out
        shared = self._shared(x)
        if self.weighted_shared:
            total = self.top_k + self.num_shared
            return out * (self.top_k / total) + shared * (self.num_shared / total)
        return out + shared


def feed_forward(config: TransformerConfig, kind: str) -> nn.Module:
    """The FF block of a layer: ``kind`` is 'moe', 'dense' (stateless, dense_layer_dim) or 'ff' (ff_dim)."""
    if kind == "moe":
        return MoE(config)
    hidden = config.dense_layer_dim if kind == "dense" else config.ff_dim
    if config.use_gated:
        return GatedFeedForward(config.embed_dim, hidden, config.ff_activation)
    return FeedForward(config.embed_dim, hidden, config.ff_activation)
