"""RxT (Reactive Transformer) inference on MLX.

``rxt_mlx.load(path_or_repo)`` gives ``(model, tokenizer)``; ``rxt_mlx.Session`` runs a conversation.
Imports are lazy so that ``rxt_mlx.config`` stays importable without MLX (the PyTorch
reference and the converter use it). On Linux the command-line entry points load an optimised
system BLAS before MLX (:mod:`rxt_mlx.blas`); a program importing the library calls
``rxt_mlx.blas.preload_optimised_blas()`` itself, before importing MLX, if it wants that.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RxT", "Session", "describe_model", "load", "load_model"]


def load(
    path: str | Path,
    *,
    revision: str | None = None,
    dtype: str | None = None,
    q_bits: int | None = None,
    q_group_size: int = 64,
    progress: bool | None = None,
):
    """Load a model: returns ``(model, tokenizer)``.

    Args:
        path: an rxt-mlx model folder (made by rxt-convert), or a Hugging Face Hub repo id
            (``"ReactiveAI/RxT-Beta-Supervised"``). A repo holding an rxlm (PyTorch) checkpoint
            is downloaded and converted once into the cache of converted models
            (``rxt_mlx.model_cache``; needs ``pip install 'rxt-mlx[convert]'``), then reused.
        revision: branch, tag or commit of a Hub repo (default ``main``).
        dtype: the converted weights' dtype, ``float32``, ``float16`` or ``bfloat16`` (default: the
            checkpoint's own).
        q_bits: quantize the converted weights to 4 or 8 bits, in groups of ``q_group_size``.
        progress: download and conversion progress bars on stderr (default: automatic).

    Raises:
        rxt_mlx.hub.HubError: a repo that does not exist, cannot be reached or converted.
    """
    from rxt_mlx.hub import resolve_model
    from rxt_mlx.model import load_model
    from rxt_mlx.tokenizer import load_tokenizer

    folder = resolve_model(
        path, revision=revision, dtype=dtype, q_bits=q_bits, q_group_size=q_group_size, progress=progress
    )
    model = load_model(folder)
    return model, load_tokenizer(folder, model.config.tokenizer, model.config.system_prompt_title)


def __getattr__(name: str):
    if name in ("RxT", "load_model"):
        from rxt_mlx import model

        return getattr(model, name)
    if name == "describe_model":
        from rxt_mlx.describe import describe_model

        return describe_model
    if name == "Session":
        from rxt_mlx.session import Session

        return Session
    raise AttributeError(f"module 'rxt_mlx' has no attribute {name!r}")
