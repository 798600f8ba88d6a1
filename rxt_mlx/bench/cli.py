"""Console entry points ``rxt-bench`` and ``rxt-eval``.

Each loads the system BLAS (:mod:`rxt_mlx.blas`) before the command's module imports MLX (the
inference library itself never does this on import), and reports the project's errors as one
line on stderr (:func:`rxt_mlx.errors.command`; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys

from rxt_mlx.blas import preload_optimised_blas
from rxt_mlx.errors import command


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Exit through ``parser.error`` (status 2, one line) when an option in ``names`` is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


@command("rxt-bench")
def bench(argv: list[str] | None = None) -> int:
    """``rxt-bench``: see :mod:`rxt_mlx.bench.latency`."""
    preload_optimised_blas()
    from rxt_mlx.bench.latency import main

    return main(argv)


@command("rxt-eval")
def evaluate(argv: list[str] | None = None) -> int:
    """``rxt-eval``: see :mod:`rxt_mlx.bench.evaluate`."""
    preload_optimised_blas()
    from rxt_mlx.bench.evaluate import main

    return main(argv)


if __name__ == "__main__":
    commands = {"bench": bench, "evaluate": evaluate}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m rxt_mlx.bench.cli {{{'|'.join(commands)}}} [ARGS...]")
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
