"""Canonical rxlm weights to MLX parameter names, and a strict loader.

The MLX names are the rxlm names with the component's ``.model`` dropped
(``decoder.model.layers.0.attention.q_proj.weight`` -> ``decoder.layers.0.attention.q_proj.weight``),
except for the vectorized MoE tensors, which go to mlx-lm ``SwitchGLU`` modules
(``(E, out, in)`` weights):

=========================  ==================================================
canonical (``F`` = hidden)  MLX
=========================  ==================================================
``ff.w1 (E, D, 2F)``        ``ff.experts.up_proj.weight = w1[:, :, :F]ᵀ``,
                            ``ff.experts.gate_proj.weight = w1[:, :, F:]ᵀ``
``ff.w2 (E, F, D)``         ``ff.experts.down_proj.weight = w2ᵀ``
``ff.b1 (E, 2F)``           ``ff.experts.{up,gate}_proj.bias`` (first/second half)
``ff.b2 (E, D)``            ``ff.experts.down_proj.bias``
``ff.shared_w1/w2/b1/b2``   the same into ``ff.shared_experts.*``
=========================  ==================================================

RoPE tables and STM buffers are not weights; they are dropped by name (:data:`BUFFERS`). The
shared embedding is ``decoder.embedding.weight`` (taken from the encoder's key when that is the
one present, which is also rxlm's rule when both are: ``share_components`` gives the decoder the
encoder's). :func:`to_rxlm` is the inverse map (docs/architecture.md §Weights).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from rxt_mlx.errors import RxTError

COMPONENTS = ("decoder", "encoder", "memory_attention")
BUFFERS = re.compile(r"(^|\.)(rope\.inv_freq|rope\.cache|stm\.memory)$")
"""Names of the buffers rxlm saves that inference rebuilds: RoPE tables and the STM (any batch)."""
_COMPONENT_PREFIX = re.compile(r"^(decoder|encoder|memory_attention)\.model\.")
_MLX_EXPERT = re.compile(r"^(.*\.ff)\.(experts|shared_experts)\.(up_proj|gate_proj|down_proj)\.(weight|bias)$")
_EXPERT_TENSORS = {
    "w1": ("experts", "weight"),
    "b1": ("experts", "bias"),
    "w2": ("experts", "down"),
    "b2": ("experts", "down_bias"),
    "shared_w1": ("shared_experts", "weight"),
    "shared_b1": ("shared_experts", "bias"),
    "shared_w2": ("shared_experts", "down"),
    "shared_b2": ("shared_experts", "down_bias"),
}
_EMBEDDING = "decoder.embedding.weight"
_ENCODER_EMBEDDING = "encoder.embedding.weight"


class WeightError(RxTError, ValueError):
    """Weights do not fit the model: lists every missing key, unexpected key and shape mismatch."""


def _expert_tensors(prefix: str, kind: str, value: mx.array) -> dict[str, mx.array]:
    module, part = _EXPERT_TENSORS[kind]
    base = f"{prefix}.{module}"
    if part == "weight":  # (E, D, 2F) input-major -> up/gate (E, F, D)
        up, gate = mx.split(value, 2, axis=-1)
        return {f"{base}.up_proj.weight": up.swapaxes(1, 2), f"{base}.gate_proj.weight": gate.swapaxes(1, 2)}
    if part == "bias":
        up, gate = mx.split(value, 2, axis=-1)
        return {f"{base}.up_proj.bias": up, f"{base}.gate_proj.bias": gate}
    if part == "down":
        return {f"{base}.down_proj.weight": value.swapaxes(1, 2)}
    return {f"{base}.down_proj.bias": value}


def sanitize(canonical: Mapping[str, object]) -> dict[str, mx.array]:
    """Map canonical rxlm full-model weights (numpy or MLX arrays) to MLX parameter names.

    Idempotent: weights already named for MLX pass through unchanged.
    """
    weights: dict[str, mx.array] = {}
    for key, value in canonical.items():
        if BUFFERS.search(key):
            continue
        name = _COMPONENT_PREFIX.sub(r"\1.", key)
        value = value if isinstance(value, mx.array) else mx.array(value)
        prefix, _, last = name.rpartition(".")
        if prefix.endswith(".ff") and last in _EXPERT_TENSORS:
            weights.update(_expert_tensors(prefix, last, value))
        else:
            weights[name] = value
    if _ENCODER_EMBEDDING in weights:
        weights[_EMBEDDING] = weights.pop(_ENCODER_EMBEDDING)
    return weights


def to_rxlm(weights: Mapping[str, mx.array]) -> dict[str, np.ndarray]:
    """Inverse of :func:`sanitize`: MLX parameter names to rxlm full-model names (float32 numpy).

    Expert ``up/gate/down_proj`` of ``(E, out, in)`` go back to the vectorized ``w1 (E, D, 2F)``,
    ``w2 (E, F, D)`` (and ``b1``/``b2``, ``shared_*``); the shared embedding is written under
    both the decoder and the encoder key. Raises ``KeyError`` for a name outside the three components.
    """
    canonical: dict[str, np.ndarray] = {}
    experts: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name, value in weights.items():
        array = np.array(value.astype(mx.float32))
        component, _, rest = name.partition(".")
        if component not in COMPONENTS:
            raise KeyError(f"{name}: expected a decoder./encoder./memory_attention. parameter name")
        match = _MLX_EXPERT.match(name)
        if match:
            experts.setdefault((match[1], match[2]), {})[f"{match[3]}.{match[4]}"] = array
            continue
        canonical[f"{component}.model.{rest}"] = array
    for (prefix, module), parts in experts.items():
        component, _, rest = prefix.partition(".")
        base = f"{component}.model.{rest}.{'shared_' if module == 'shared_experts' else ''}"
        canonical[base + "w1"] = np.concatenate(
            [parts["up_proj.weight"].swapaxes(1, 2), parts["gate_proj.weight"].swapaxes(1, 2)], axis=-1
        )
        canonical[base + "w2"] = parts["down_proj.weight"].swapaxes(1, 2)
        if "up_proj.bias" in parts:
            canonical[base + "b1"] = np.concatenate([parts["up_proj.bias"], parts["gate_proj.bias"]], axis=-1)
        if "down_proj.bias" in parts:
            canonical[base + "b2"] = parts["down_proj.bias"]
    embedding = canonical.get("decoder.model.embedding.weight")
    if embedding is not None:
        canonical["encoder.model.embedding.weight"] = embedding
    return canonical


_FLOAT_DTYPES = (mx.float32, mx.float16, mx.bfloat16)


def _dtype_fits(expected: mx.Dtype, got: mx.Dtype) -> bool:
    """A float parameter takes any float precision (a bf16 folder loads into an fp32-built model);
    anything else (quantized ``uint32`` weights) must match exactly."""
    return got in _FLOAT_DTYPES if expected in _FLOAT_DTYPES else got == expected


def check_weights(model: nn.Module, weights: Mapping[str, mx.array]) -> None:
    """Raise :class:`WeightError` unless ``weights`` has exactly the model's parameters, shapes and dtypes."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    common = sorted(set(expected) & set(weights))
    mismatched = [
        f"{key}: expected {tuple(expected[key].shape)}, got {tuple(weights[key].shape)}"
        for key in common
        if tuple(expected[key].shape) != tuple(weights[key].shape)
    ]
    wrong_dtype = [
        f"{key}: expected {'a float dtype' if expected[key].dtype in _FLOAT_DTYPES else expected[key].dtype}, "
        f"got {weights[key].dtype}"
        for key in common
        if not _dtype_fits(expected[key].dtype, weights[key].dtype)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: " + ", ".join(missing))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: " + ", ".join(unexpected))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched))
    if wrong_dtype:
        problems.append(f"{len(wrong_dtype)} dtype mismatches: " + "; ".join(wrong_dtype))
    if problems:
        raise WeightError("weights do not match the model: " + " | ".join(problems))


def load_weights(model: nn.Module, weights: Mapping[str, mx.array]) -> None:
    """Set every parameter of ``model`` from ``weights`` (MLX names); strict, see :func:`check_weights`."""
    check_weights(model, weights)
    model.update(tree_unflatten(list(weights.items())))
    mx.eval(model.parameters())
