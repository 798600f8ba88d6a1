"""One line saying which model is loaded: where from, size, precision, context."""

from __future__ import annotations

from pathlib import Path

from mlx.utils import tree_flatten

from rxt_mlx.hub import source_label
from rxt_mlx.model import RxT


def parameter_count(model: RxT) -> int:
    """Parameters as trained: a quantized weight counts its unpacked values, not its scales and biases."""
    modules = dict(model.named_modules())
    total = 0
    for name, value in tree_flatten(model.parameters()):
        owner, _, leaf = name.rpartition(".")
        bits = getattr(modules.get(owner), "bits", None)
        if bits and leaf in ("scales", "biases"):
            continue
        total += value.size * 32 // bits if bits and leaf == "weight" else value.size
    return total


def describe_model(model: RxT, source: str | Path) -> str:
    """E.g. ``ReactiveAI/RxT-Beta-Supervised@1a2b3c4 (converted, auto): 2.96B parameters, bfloat16,
    context 8192 tokens, STM 21x4096x512``; ``source`` is the model folder (or a label)."""
    config = model.config
    precision = str(model.dtype).removeprefix("mlx.core.")
    quantization = config.extra.get("quantization")
    if quantization:
        precision += f" with {quantization['bits']}-bit weights (group {quantization['group_size']})"
    layers, slots, dim = config.stm_shape
    return (
        f"{source_label(source)}: {_count(parameter_count(model))} parameters, {precision}, "
        f"context {config.decoder.seq_len} tokens, STM {layers}x{slots}x{dim}"
    )


def _count(value: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)
