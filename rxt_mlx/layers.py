"""Small building blocks shared by the RxT components: norms and activations."""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from rxt_mlx.config import FLOAT32_EPS

LAYER_NORM_EPS = 1e-5

ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "silu": nn.silu,
    "swish": nn.silu,
    "relu": nn.relu,
    "gelu": nn.gelu,  # exact (erf) GELU, like torch's default
    "sigmoid": mx.sigmoid,
    "tanh": mx.tanh,
    "linear": lambda x: x,
}


def activation(name: str) -> Callable[[mx.array], mx.array]:
    """The elementwise activation called ``name`` in rxlm configs."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r} (expected one of {', '.join(ACTIVATIONS)})") from None


def rms_norm(dims: int) -> nn.RMSNorm:
    """rxlm's ``nn.RMSNorm(dims)``: eps is float32 machine epsilon, not MLX's 1e-5."""
    return nn.RMSNorm(dims, eps=FLOAT32_EPS)


def layer_norm(dims: int) -> nn.LayerNorm:
    """torch's ``nn.LayerNorm(dims)`` (weight and bias, eps 1e-5)."""
    return nn.LayerNorm(dims, eps=LAYER_NORM_EPS)


def transformer_norm(dims: int, use_rms_norm: bool) -> nn.Module:
    """The norm of decoder/encoder layers: RMSNorm by default, LayerNorm if ``use_rms_norm`` is off."""
    return rms_norm(dims) if use_rms_norm else layer_norm(dims)
