"""The PyTorch reference RxT as a system of rxt-bench (``--reference``).

The reference is built from the model folder's config and gets the MLX folder's weights
through the inverse of :func:`rxt_mlx.weights.sanitize`. When that is not possible (quantized
folders, legacy expert layouts) it keeps random weights of identical shapes, which time the
same, and says so in the report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import mlx.core as mx
import numpy as np

_EXPERT = re.compile(r"^(.*\.ff)\.(experts|shared_experts)\.(up_proj|gate_proj|down_proj)\.(weight|bias)$")
_COMPONENTS = ("decoder", "encoder", "memory_attention")
_BUFFER = re.compile(r"(rope\.inv_freq|rope\.cache|stm\.memory)$")


def canonical_from_mlx(weights: Mapping[str, mx.array]) -> dict[str, np.ndarray]:
    """Inverse of :func:`rxt_mlx.weights.sanitize`: MLX parameter names to rxlm full-model names.

    Expert ``up/gate/down_proj`` of ``(E, out, in)`` go back to the vectorized ``w1 (E, D, 2F)``,
    ``w2 (E, F, D)`` (and ``b1``/``b2``, ``shared_*``); the shared embedding is written under
    both the decoder and the encoder key.
    """
    canonical: dict[str, np.ndarray] = {}
    experts: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name, value in weights.items():
        array = np.array(value.astype(mx.float32))
        component, _, rest = name.partition(".")
        if component not in _COMPONENTS:
            raise KeyError(f"{name}: expected a decoder./encoder./memory_attention. parameter name")
        match = _EXPERT.match(name)
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


def _legacy_experts(canonical: dict[str, np.ndarray], expected: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Split vectorized ``w1/w2/b1/b2`` into the legacy per-expert ``fc1.linear``/``fc2`` the reference holds."""
    state = dict(canonical)
    for name in [name for name in canonical if name.endswith(".ff.w1")]:
        prefix = name[: -len(".w1")]
        if f"{prefix}.experts.0.fc1.linear.weight" not in expected:
            continue
        parts = {kind: state.pop(f"{prefix}.{kind}", None) for kind in ("w1", "w2", "b1", "b2")}
        for expert in range(parts["w1"].shape[0]):
            base = f"{prefix}.experts.{expert}"
            state[f"{base}.fc1.linear.weight"] = parts["w1"][expert].T.copy()
            state[f"{base}.fc2.weight"] = parts["w2"][expert].T.copy()
            if parts["b1"] is not None:
                state[f"{base}.fc1.linear.bias"] = parts["b1"][expert]
            if parts["b2"] is not None:
                state[f"{base}.fc2.bias"] = parts["b2"][expert]
    return state


def load_mlx_weights_into(reference, weights: Mapping[str, mx.array]) -> None:
    """Copy MLX weights into a :class:`rxt_convert.reference.RxTReference`; raise ValueError on any mismatch."""
    import torch

    if any(name.endswith(".scales") for name in weights):
        raise ValueError("the MLX folder is quantized; the reference has no quantized layers")
    expected = reference.state_dict()
    canonical = _legacy_experts(canonical_from_mlx(weights), expected)
    state = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in canonical.items()}
    mismatched = [
        f"{name}: {tuple(value.shape)} vs {tuple(expected[name].shape)}"
        for name, value in state.items()
        if name in expected and tuple(value.shape) != tuple(expected[name].shape)
    ]
    result = reference.load_state_dict(state, strict=False) if not mismatched else None
    missing = [name for name in (result.missing_keys if result else []) if not _BUFFER.search(name)]
    unexpected = list(result.unexpected_keys) if result else []
    if mismatched or missing or unexpected:
        raise ValueError(
            f"MLX weights do not map onto the reference: shape mismatches {mismatched[:5]}, "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


class ReferenceChat:
    """One conversation on the reference: answers forced, memory updated after every turn."""

    def __init__(self, runner: ReferenceRunner, script, seed: int):
        import torch

        self.runner = runner
        self.script = script
        generator = torch.Generator().manual_seed(seed)
        self.stm = runner.model.initial_stm(batch=1, generator=generator)
        self.memory_update_seconds: float | None = None

    def context_tokens(self, index: int) -> tuple[int, int]:
        length = len(self.script.query_ids[index])
        return length, length

    def turn(self, index: int, commit: bool = True):
        """Run turn ``index``; returns the bench's ``Timing`` (prefill + first token, then the rest).

        ``commit=False`` leaves the STM as it was (no memory update).
        """
        from rxt_convert.reference.generate import generate_turn

        from rxt_mlx.bench import Timing

        answer = self.script.answer_ids[index]
        result = generate_turn(
            self.runner.model,
            list(self.script.query_ids[index]),
            self.stm,
            len(answer),
            force_tokens=list(answer),
            update_memory=commit,
        )
        if commit:
            self.stm = result.new_stm
            self.memory_update_seconds = result.memory_update_seconds
        return Timing(result.prompt_seconds, sum(result.token_seconds), len(result.tokens))


class ReferenceRunner:
    """The reference model for one bench run (same config and, when possible, the same weights)."""

    def __init__(self, folder: Path, model, dtype_name: str | None):
        import torch
        from mlx.utils import tree_flatten
        from rxt_convert.reference import RxTReference

        torch.manual_seed(0)
        self.model = RxTReference(model.config).eval()
        try:
            load_mlx_weights_into(self.model, dict(tree_flatten(model.parameters())))
            self.weights_note = f"weights of {folder} (mapped from MLX names)"
        except (ValueError, KeyError) as error:
            self.weights_note = f"random weights of identical shapes ({error})"
        if dtype_name:
            self.model.to(getattr(torch, dtype_name))
        self.threads = torch.get_num_threads()
        self.torch_version = torch.__version__

    def chat(self, script, seed: int) -> ReferenceChat:
        return ReferenceChat(self, script, seed)

    def describe(self) -> dict:
        return {"weights": self.weights_note, "torch": self.torch_version, "torch_threads": self.threads}
