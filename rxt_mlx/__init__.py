"""RxT (Reactive Transformer) inference on MLX.

``rxt_mlx.load(path)`` gives ``(model, tokenizer)``; ``rxt_mlx.Session`` runs a conversation.
Imports are lazy so that ``rxt_mlx.config`` stays importable without MLX (the PyTorch
reference and the converter use it). On Linux the command-line entry points load an optimised
system BLAS before MLX (:mod:`rxt_mlx.blas`); a program importing the library calls
``rxt_mlx.blas.preload_optimised_blas()`` itself, before importing MLX, if it wants that.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RxT", "Session", "load", "load_model"]


def load(path: str | Path):
    """Load an rxt-mlx model folder: returns ``(model, tokenizer)``."""
    from rxt_mlx.model import load_model
    from rxt_mlx.tokenizer import load_tokenizer

    model = load_model(path)
    return model, load_tokenizer(path, model.config.tokenizer, model.config.system_prompt_title)


def __getattr__(name: str):
    if name in ("RxT", "load_model"):
        from rxt_mlx import model

        return getattr(model, name)
    if name == "Session":
        from rxt_mlx.session import Session

        return Session
    raise AttributeError(f"module 'rxt_mlx' has no attribute {name!r}")
