"""Console entry points ``rxt-convert`` and ``rxt-train``.

Each loads the system BLAS (:mod:`rxt_mlx.blas`) before the command's module imports MLX or torch,
and reports the project's errors as one line on stderr (:func:`rxt_mlx.errors.command`;
``--debug`` shows the traceback).
"""

from __future__ import annotations

from rxt_mlx.blas import preload_optimised_blas
from rxt_mlx.errors import command


@command("rxt-convert")
def convert(argv: list[str] | None = None) -> int:
    """``rxt-convert``: see :mod:`rxt_convert.convert`."""
    preload_optimised_blas()
    from rxt_convert.convert import main

    return main(argv)


@command("rxt-train")
def train(argv: list[str] | None = None) -> int:
    """``rxt-train``: see :mod:`rxt_convert.train`."""
    preload_optimised_blas()
    from rxt_convert.train import main

    return main(argv)
