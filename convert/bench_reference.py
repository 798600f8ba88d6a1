"""The PyTorch reference RxT as a system of rxt-bench (``--reference``).

Registered in the ``rxt_mlx.bench.systems`` entry-point group (pyproject.toml), so that the bench
finds it without importing this package. The reference is built from the model folder's config
and gets the MLX folder's weights through :func:`rxt_mlx.weights.to_rxlm`. When that is not possible (quantized
folders, legacy expert layouts) it keeps random weights of identical shapes, which time the
same, and says so in the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import mlx.core as mx
import numpy as np

from rxt_mlx.bench.systems import Timing
from rxt_mlx.weights import BUFFERS, to_rxlm


def load_mlx_weights_into(reference, weights: Mapping[str, mx.array]) -> None:
    """Copy MLX weights into a :class:`rxt_convert.reference.RxTReference`; raise ValueError on any mismatch."""
    import torch

    from .reference.checkpoint import legacy_moe_state_dict

    if any(name.endswith(".scales") for name in weights):
        raise ValueError("the MLX folder is quantized; the reference has no quantized layers")
    expected = reference.state_dict()
    state = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in to_rxlm(weights).items()}
    if any(".ff.experts.0.fc1.linear." in name for name in expected):
        state = legacy_moe_state_dict(state)
    mismatched = [
        f"{name}: {tuple(value.shape)} vs {tuple(expected[name].shape)}"
        for name, value in state.items()
        if name in expected and tuple(value.shape) != tuple(expected[name].shape)
    ]
    result = reference.load_state_dict(state, strict=False) if not mismatched else None
    missing = [name for name in (result.missing_keys if result else []) if not BUFFERS.search(name)]
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
        from .reference.generate import generate_turn

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

        from .reference import RxTReference

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
