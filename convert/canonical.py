"""Turn a checkpoint's tensors into the canonical rxlm state (docs/architecture.md §The canonical state).

Canonical state: a flat dict of full-model rxlm key -> MLX array, with the vectorized MoE
layout (``w1 (E, D, 2F)``, ``w2 (E, F, D)``, ``b1``, ``b2``), no RoPE or STM buffers, and the
shared embedding once as ``decoder.model.embedding.weight``.

Bad checkpoints fail before any weight data is read: :func:`plan` decides, from names and
shapes only, where every canonical tensor comes from, and :func:`check` compares the plan with
the layout the reference model expects (:func:`check_rope` reads the small RoPE tables); only
then does :func:`iter_materialized` load and convert the weights, one tensor at a time.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np
import torch
from tqdm import tqdm

from rxt_mlx.config import RxTConfig
from rxt_mlx.errors import RxTError
from rxt_mlx.weights import BUFFERS

from .sources import TensorStore

EMBEDDING = "decoder.model.embedding.weight"
ENCODER_EMBEDDING = "encoder.model.embedding.weight"
LEGACY_EXPERT = re.compile(
    r"^(?P<ff>.+\.ff)\.experts\.(?P<expert>\d+)\.(?P<part>fc1\.linear|fc2)\.(?P<kind>weight|bias)$"
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROGRESS_BYTES = 256 * 2**20


class CanonicalError(RxTError, ValueError):
    """The checkpoint's tensors do not fit the model its config describes."""


@dataclass
class PlannedTensor:
    """One canonical tensor: the stored tensors it is built from and how."""

    sources: tuple[str, ...]
    shape: tuple[int, ...]
    build: Callable[[list[torch.Tensor]], torch.Tensor]


def _identity(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0]


def _stack_transposed(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([tensor.t() for tensor in tensors])


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors)


def uses_legacy_moe(keys) -> dict[str, bool]:
    """Which components (``decoder``/``encoder``) store MoE experts in the legacy ModuleList layout."""
    found = {"decoder": False, "encoder": False}
    for key in keys:
        if LEGACY_EXPERT.match(key) and key.split(".", 1)[0] in found:
            found[key.split(".", 1)[0]] = True
    return found


def adapt_config_for_legacy_moe(config: dict[str, Any], keys) -> list[str]:
    """Rewrite component configs that use the legacy expert layout to the vectorized one.

    Legacy (pre-0.3.10, ``use_vectorized_moe=false``) experts carry their own biases, so after
    stacking them the model is a vectorized MoE with ``moe_bias_mode='local'``. The canonical
    layout is always vectorized. Returns a note per component whose stored experts were legacy.
    """
    notes = []
    legacy_keys = uses_legacy_moe(keys)
    for component, legacy in legacy_keys.items():
        section = config.get(f"{component}_config")
        if not isinstance(section, dict) or not (legacy or section.get("use_vectorized_moe", True) is False):
            continue
        section["use_vectorized_moe"] = True
        section["moe_bias_mode"] = "local"
        if legacy:
            notes.append(f"{component}: legacy expert list stacked to vectorized MoE (moe_bias_mode set to 'local')")
    return notes


def plan(store: TensorStore) -> dict[str, PlannedTensor]:
    """Map every canonical key to the stored tensor(s) it comes from, using names and shapes only."""
    planned: dict[str, PlannedTensor] = {}
    experts: dict[str, dict[tuple[str, str], dict[int, str]]] = {}
    for key in store:
        if BUFFERS.search(key) or key == ENCODER_EMBEDDING:
            continue
        match = LEGACY_EXPERT.match(key)
        if match:
            parts = experts.setdefault(match["ff"], {})
            parts.setdefault((match["part"], match["kind"]), {})[int(match["expert"])] = key
            continue
        planned[key] = PlannedTensor((key,), store.info(key).shape, _identity)
    _plan_embedding(store, planned)
    for ff, parts in experts.items():
        planned.update(_plan_legacy_experts(store, ff, parts))
    return planned


def _plan_embedding(store: TensorStore, planned: dict[str, PlannedTensor]) -> None:
    present = [key for key in (EMBEDDING, ENCODER_EMBEDDING) if key in store]
    if not present:
        return
    shapes = {key: store.info(key).shape for key in present}
    if len(set(shapes.values())) > 1:
        raise CanonicalError(f"shared embedding: shapes differ between {shapes}")
    # Both present: they must be the same table (checked on the data in iter_materialized).
    planned[EMBEDDING] = PlannedTensor(tuple(present), shapes[present[0]], _identity)


def _plan_legacy_experts(store: TensorStore, ff: str, parts: dict[tuple[str, str], dict[int, str]]):
    counts = {part: sorted(indices) for part, indices in parts.items()}
    num_experts = max(len(indices) for indices in counts.values())
    for (part, kind), indices in counts.items():
        if indices != list(range(num_experts)):
            missing = sorted(set(range(num_experts)) - set(indices))
            raise CanonicalError(
                f"legacy MoE {ff}: {part}.{kind} missing for expert(s) {missing} "
                f"(e.g. {ff}.experts.{missing[0]}.{part}.{kind})"
            )
    for needed in (("fc1.linear", "weight"), ("fc1.linear", "bias"), ("fc2", "weight"), ("fc2", "bias")):
        if needed not in parts:
            raise CanonicalError(f"legacy MoE {ff}: missing {ff}.experts.0.{needed[0]}.{needed[1]}")
    layout = {
        "w1": (("fc1.linear", "weight"), _stack_transposed),
        "b1": (("fc1.linear", "bias"), _stack),
        "w2": (("fc2", "weight"), _stack_transposed),
        "b2": (("fc2", "bias"), _stack),
    }
    result = {}
    for name, (part, build) in layout.items():
        keys = tuple(parts[part][expert] for expert in range(num_experts))
        shapes = {store.info(key).shape for key in keys}
        if len(shapes) != 1:
            raise CanonicalError(f"legacy MoE {ff}: experts' {part[0]}.{part[1]} shapes differ: {sorted(shapes)}")
        shape = shapes.pop()
        stacked = (num_experts, *reversed(shape)) if build is _stack_transposed else (num_experts, *shape)
        result[f"{ff}.{name}"] = PlannedTensor(keys, stacked, build)
    return result


_INIT_FUNCTIONS = ("normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_", "constant_", "trunc_normal_")


@contextmanager
def _skipped_init():
    """Make ``torch.nn.init`` a no-op: on the meta device it only costs time (torch decomposes it in Python)."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def meta_reference(config: RxTConfig) -> torch.nn.Module:
    """The reference model of ``config`` on torch's meta device: shapes only, no memory, no init."""
    from rxt_convert.reference import RxTReference

    with torch.device("meta"), _skipped_init():
        return RxTReference(config)


def expected_shapes(config: RxTConfig) -> dict[str, tuple[int, ...]]:
    """Canonical key -> shape of the reference model built from ``config``."""
    reference = meta_reference(config)
    return {
        key: tuple(tensor.shape)
        for key, tensor in reference.state_dict().items()
        if not BUFFERS.search(key) and key != ENCODER_EMBEDDING
    }


# (pattern, missing?, setting hint): config settings that older checkpoints lack (docs/architecture.md
# §Published configs).
_HINTS = (
    (r"\.ff\.(shared_expert\.|shared_w)", True, "num_shared_experts: 0 (checkpoints before rxlm 0.3.5 have none)"),
    (r"\.ff\.(shared_expert\.|shared_w)", False, "num_shared_experts matching the checkpoint"),
    (r"^(decoder|encoder)\..*\.out_proj\.bias$", True, "use_attention_output_bias: false"),
    (
        r"^(decoder|encoder)\..*\.out_proj\.bias$",
        False,
        "use_attention_output_bias: true (the rxlm default before RxT-Beta)",
    ),
    (r"\.memory_cross_attention\.gate_proj\.", True, "use_gated_cross_attention: false"),
    (r"\.memory_cross_attention\.gate_proj\.", False, "use_gated_cross_attention: true"),
    (r"\.attention\.gate_proj\.", True, "use_gated_attention: false"),
    (r"\.attention\.gate_proj\.", False, "use_gated_attention: true"),
    (r"\.ff\.(global_bias|b1|b2)$", None, "moe_bias_mode matching the checkpoint (global, local or off)"),
    (r"^encoder\.model\.layers\.\d+\.memory_cross_attention\.", True, "skip_memory_cross_attention: true"),
    (r"^encoder\.model\.layers\.\d+\.memory_cross_attention\.", False, "skip_memory_cross_attention: false"),
)


def _hints(missing: list[str], unexpected: list[str]) -> list[str]:
    hints = []
    for pattern, when_missing, setting in _HINTS:
        keys = missing if when_missing else unexpected if when_missing is False else missing + unexpected
        component = next((key.split(".", 1)[0] for key in keys if re.search(pattern, key)), None)
        hint = f"hint: try {setting} in {component}_config"
        if component and hint not in hints:
            hints.append(hint)
    return hints


def check(planned: dict[str, PlannedTensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Raise :class:`CanonicalError` listing missing, unexpected and mis-shaped weights (with config hints)."""
    problems = []
    missing = sorted(set(expected) - set(planned))
    if missing:
        hint = f" (neither it nor {ENCODER_EMBEDDING} is stored)" if EMBEDDING in missing else ""
        problems.append(f"missing weight(s): {_listing(missing)}{hint}")
    unexpected = sorted(set(planned) - set(expected))
    if unexpected:
        sources = [", ".join(planned[key].sources[:1]) for key in unexpected]
        problems.append(f"unexpected weight(s) the config does not use: {_listing(sources)}")
    for key in sorted(set(planned) & set(expected)):
        if tuple(planned[key].shape) != tuple(expected[key]):
            problems.append(
                f"shape mismatch for {planned[key].sources[0]}: expected {list(expected[key])}, "
                f"got {list(planned[key].shape)}"
            )
    if problems:
        problems += _hints(missing, unexpected)
        raise CanonicalError("checkpoint does not match its config:\n  " + "\n  ".join(problems))


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


ROPE_INV_FREQ = re.compile(r"^(decoder|encoder|memory_attention)\.model\..*rope\.inv_freq$")


def check_rope(store: TensorStore, config: RxTConfig) -> None:
    """Check stored RoPE frequencies against the config's ``rope_base`` and head size.

    rxlm loads ``rope.inv_freq`` from the checkpoint, so a model runs with the stored table even
    when its config says another base (``rope_base`` only exists since rxlm 0.3.61). We rebuild
    the table from the config; refuse when the two disagree, naming the base the file was built with.
    """
    sections = {"decoder": config.decoder, "encoder": config.encoder, "memory_attention": config.memory_attention}
    for key in store:
        match = ROPE_INV_FREQ.match(key)
        if not match:
            continue
        section = sections[match[1]]
        head_dim = section.embed_dim // section.att_heads
        stored = store.load(key).detach().double().flatten()
        if stored.numel() != head_dim // 2:
            raise CanonicalError(
                f"{key}: {stored.numel()} frequencies, but {match[1]}_config gives head_dim {head_dim} "
                f"(embed_dim {section.embed_dim} / att_heads {section.att_heads}), i.e. {head_dim // 2}"
            )
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
        expected = section.rope_base ** (-exponents)
        if not torch.allclose(stored, expected, rtol=1e-2, atol=0):
            found = float(stored[1] ** (-1 / exponents[1])) if head_dim > 2 else float("nan")
            raise CanonicalError(
                f"{key} was built with rope_base ~{found:.6g}, but {match[1]}_config says rope_base "
                f"{section.rope_base:g}; set rope_base: {round(found)} (rxlm runs with the stored table)"
            )


def source_dtype(store: TensorStore, planned: dict[str, PlannedTensor]) -> str:
    """The floating dtype holding most parameters, as an output dtype name (float64 -> float32)."""
    counts: dict[torch.dtype, int] = {}
    for entry in planned.values():
        for key in entry.sources[:1]:
            info = store.info(key)
            counts[info.dtype] = counts.get(info.dtype, 0) + int(np.prod(info.shape)) * len(entry.sources)
    floating = {dtype: count for dtype, count in counts.items() if dtype.is_floating_point}
    if not floating:
        return "float32"
    dominant = max(floating, key=floating.get)
    return {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dominant, "float32")


def iter_materialized(
    store: TensorStore, planned: dict[str, PlannedTensor], dtype: str, progress: bool | None = None
) -> Iterator[tuple[str, mx.array]]:
    """Load and convert the planned tensors one at a time, so a caller can keep only the converted copy.

    Each tensor is read, built (legacy experts stacked), cast to ``dtype`` in torch and handed
    over as an MLX array of that dtype (bf16 through its bits, which numpy cannot hold).
    """
    if dtype not in DTYPES:
        raise CanonicalError(f"unsupported output dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    target = DTYPES[dtype]
    if progress is None:
        progress = store.nbytes >= PROGRESS_BYTES and sys.stderr.isatty()
    for key, entry in tqdm(planned.items(), desc="converting", unit="tensor", disable=not progress):
        tensors = [store.load(source) for source in entry.sources]
        if key == EMBEDDING and len(tensors) == 2 and not torch.equal(tensors[0], tensors[1]):
            raise CanonicalError(
                f"{EMBEDDING} and {ENCODER_EMBEDDING} are both stored and differ "
                f"(max abs diff {float((tensors[0].float() - tensors[1].float()).abs().max()):.3g}); "
                "the shared embedding is ambiguous"
            )
        tensor = entry.build(tensors[:1] if key == EMBEDDING else tensors).detach()
        del tensors
        if not tensor.dtype.is_floating_point:
            raise CanonicalError(f"{entry.sources[0]}: expected a floating-point weight, got {tensor.dtype}")
        converted = tensor.to(target)
        if target is torch.float16 and not torch.isfinite(converted).all() and torch.isfinite(tensor).all():
            raise CanonicalError(f"{entry.sources[0]}: values overflow float16; use --dtype bfloat16 or float32")
        del tensor
        yield key, to_mlx(converted)


def to_mlx(tensor: torch.Tensor) -> mx.array:
    """A CPU tensor as an MLX array of the same dtype (one copy; bf16 goes through its 16-bit pattern)."""
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:
        return mx.array(tensor.view(torch.int16).numpy()).view(mx.bfloat16)
    return mx.array(tensor.numpy())


def materialize(
    store: TensorStore, planned: dict[str, PlannedTensor], dtype: str, progress: bool | None = None
) -> dict[str, mx.array]:
    """The canonical rxlm state: every planned tensor loaded and converted (see :func:`iter_materialized`)."""
    return dict(iter_materialized(store, planned, dtype, progress))
