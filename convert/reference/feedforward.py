"""Feed-forward blocks: gated FFN (SwiGLU), plain FFN and the MoE.

The math and names are in docs/architecture.md §Feed-forward and MoE.

MoE layouts:
* vectorized (rxlm >= 0.3.10): ``w1 (E, D, 2F)``, ``w2 (E, F, D)`` input-major, biases per
  ``moe_bias_mode`` (``global_bias (D)`` / ``b1 (E, 2F)`` + ``b2 (E, D)`` / none);
* legacy ModuleList (``use_vectorized_moe=False``): ``experts.{e}.fc1.linear`` and
  ``experts.{e}.fc2`` with biases, i.e. the vectorized math with local biases.

Choices where rxlm's code path is open (documented for the MLX port):
* one shared expert with ``moe_shared_experts_bias_mode='global'`` also gets a
  ``shared_experts_bias (D)`` added to its output (like the several-shared-experts case);
* with ``moe_use_weighted_shared_experts`` the routed output *including* ``global_bias`` is
  scaled by ``k/(k+S)`` and the shared output *including* ``shared_experts_bias`` by ``S/(k+S)``.
"""

from __future__ import annotations

import torch
from torch import nn

from rxt_mlx.config import TransformerConfig

from .layers import LINEAR_INIT_STD, activation, linear

ROUTER_EPS = 1e-9


class GatedLinearUnit(nn.Module):
    """``linear: D -> 2F`` whose first half is the value and second half the gate."""

    def __init__(self, in_dim: int, hidden_dim: int, act: str, bias: bool = True):
        super().__init__()
        self.linear = linear(in_dim, 2 * hidden_dim, bias=bias)
        self.activation = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.linear(x).chunk(2, dim=-1)
        return value * self.activation(gate)


class GatedFeedForward(nn.Module):
    """``fc2(a * act(g))`` with ``[a | g] = fc1.linear(x)`` (SwiGLU for silu)."""

    def __init__(self, embed_dim: int, hidden_dim: int, act: str = "silu", bias: bool = True):
        super().__init__()
        self.fc1 = GatedLinearUnit(embed_dim, hidden_dim, act, bias=bias)
        self.fc2 = linear(hidden_dim, embed_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class FeedForward(nn.Module):
    """``fc2(act(fc1(x)))``, both linears with bias (``use_gated=False``)."""

    def __init__(self, embed_dim: int, hidden_dim: int, act: str = "silu"):
        super().__init__()
        self.fc1 = linear(embed_dim, hidden_dim, bias=True)
        self.activation = activation(act)
        self.fc2 = linear(hidden_dim, embed_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


def dense_feed_forward(config: TransformerConfig, hidden_dim: int) -> nn.Module:
    """The dense FFN of a layer: gated unless ``use_gated`` is false."""
    if config.use_gated:
        return GatedFeedForward(config.embed_dim, hidden_dim, config.ff_activation)
    return FeedForward(config.embed_dim, hidden_dim, config.ff_activation)


class Router(nn.Module):
    """``gate: Linear(D, E)``; softmax, top-k, renormalised by ``sum + 1e-9``."""

    def __init__(self, embed_dim: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.gate = linear(embed_dim, num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Routing weights and expert indices, both ``(N, k)``, for tokens ``x (N, D)``."""
        probs = torch.softmax(self.gate(x), dim=-1)
        weights, indices = probs.topk(self.top_k, dim=-1)
        return weights / (weights.sum(dim=-1, keepdim=True) + ROUTER_EPS), indices


def _param(*shape: int, std: float | None = LINEAR_INIT_STD) -> nn.Parameter:
    tensor = torch.zeros(*shape)
    if std is not None:
        nn.init.normal_(tensor, std=std)
    return nn.Parameter(tensor)


class MoeFeedForward(nn.Module):
    """Routed gated experts plus optional shared experts (rxlm ``MoeFeedForward``)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        dim, hidden, experts = config.embed_dim, config.ff_dim, config.num_experts
        self.num_experts = experts
        self.top_k = config.moe_top_k
        self.hidden_dim = hidden
        self.vectorized = config.use_vectorized_moe
        self.bias_mode = config.moe_bias_mode if self.vectorized else "local"
        self.act = activation(config.ff_activation)
        self.router = Router(dim, experts, config.moe_top_k)
        if self.vectorized:
            self.w1 = _param(experts, dim, 2 * hidden)
            self.w2 = _param(experts, hidden, dim)
            if self.bias_mode == "global":
                self.global_bias = _param(dim, std=None)
            elif self.bias_mode == "local":
                self.b1 = _param(experts, 2 * hidden, std=None)
                self.b2 = _param(experts, dim, std=None)
        else:
            self.experts = nn.ModuleList(GatedFeedForward(dim, hidden, config.ff_activation) for _ in range(experts))
        self.num_shared = config.num_shared_experts
        self.shared_bias_mode = config.moe_shared_experts_bias_mode
        self.weighted_shared = config.moe_use_weighted_shared_experts
        shared_hidden = config.shared_dim
        shared_local = self.shared_bias_mode == "local"
        if self.num_shared == 1:
            self.shared_expert = GatedFeedForward(dim, shared_hidden, config.ff_activation, bias=shared_local)
        elif self.num_shared > 1:
            self.shared_w1 = _param(self.num_shared, dim, 2 * shared_hidden)
            self.shared_w2 = _param(self.num_shared, shared_hidden, dim)
            if shared_local:
                self.shared_b1 = _param(self.num_shared, 2 * shared_hidden, std=None)
                self.shared_b2 = _param(self.num_shared, dim, std=None)
            self.shared_expert_gate = linear(dim, self.num_shared, bias=False)
        if self.num_shared and self.shared_bias_mode == "global":
            self.shared_experts_bias = _param(dim, std=None)

    def _gated(self, x, w1, w2, b1=None, b2=None):
        hidden = x @ w1
        if b1 is not None:
            hidden = hidden + b1
        value, gate = hidden.chunk(2, dim=-1)
        out = (value * self.act(gate)) @ w2
        return out if b2 is None else out + b2

    def expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Output of routed expert ``index`` on tokens ``x (N, D)``."""
        if not self.vectorized:
            return self.experts[index](x)
        local = self.bias_mode == "local"
        return self._gated(
            x, self.w1[index], self.w2[index], self.b1[index] if local else None, self.b2[index] if local else None
        )

    def routed(self, x: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the top-k experts of every token ``x (N, D)`` (+ global bias)."""
        weights, indices = self.router(x)
        out = torch.zeros_like(x)
        for index in indices.unique().tolist():
            token, slot = torch.nonzero(indices == index, as_tuple=True)
            out = out.index_add(0, token, self.expert(index, x[token]) * weights[token, slot, None])
        if self.bias_mode == "global":
            out = out + self.global_bias
        return out

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the always-active shared experts on ``x (N, D)``."""
        if self.num_shared == 1:
            out = self.shared_expert(x)
        else:
            local = self.shared_bias_mode == "local"
            gate = torch.softmax(self.shared_expert_gate(x), dim=-1)
            out = torch.zeros_like(x)
            for index in range(self.num_shared):
                y = self._gated(
                    x,
                    self.shared_w1[index],
                    self.shared_w2[index],
                    self.shared_b1[index] if local else None,
                    self.shared_b2[index] if local else None,
                )
                out = out + gate[:, index, None] * y
        if self.shared_bias_mode == "global":
            out = out + self.shared_experts_bias
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        out = self.routed(tokens)
        if self.num_shared:
            shared = self.shared(tokens)
            if self.weighted_shared:
                total = self.top_k + self.num_shared
                out = out * (self.top_k / total) + shared * (self.num_shared / total)
            else:
                out = out + shared
        return out.reshape(shape)
