"""``rxt-chat``: the Textual chat, or ``--plain`` line-by-line chat over stdin/stdout.

The project's errors end the command with one line on stderr (``rxt_mlx.errors.command``;
``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rxt_app.command_line import add_sampling_arguments, model_folder, sampling_from_arguments

from rxt_mlx.errors import command
from rxt_mlx.sampling import SamplingOptions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxt-chat",
        description="Chat with a Reactive Transformer (RxT): each turn costs the same, however long the chat.",
    )
    parser.add_argument(
        "--model", help="MLX model folder or Hub repo id, e.g. ReactiveAI/RxT-Beta-Supervised (default: the demo)"
    )
    parser.add_argument("--data-dir", type=Path, help="where the chat app keeps conversations (default: user data dir)")
    parser.add_argument("--plain", action="store_true", help="read one query per stdin line, print answers to stdout")
    parser.add_argument("--stm", type=Path, help="--plain: memory file, resumed at start and saved after each turn")
    parser.add_argument("--system", metavar="PROMPT", help="--plain: system prompt written into a new memory")
    add_sampling_arguments(parser)
    return parser


@command("rxt-chat")
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rxt-chat``; returns the exit code (2 for bad arguments or model folder, 1 for
    another error of the project, 141 when stdout was closed early)."""
    from rxt_mlx.blas import preload_optimised_blas

    preload_optimised_blas()  # before anything imports mlx.core, which binds its BLAS on import
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.plain and (args.stm or args.system):
        parser.error("--stm and --system work with --plain (the chat app keeps its own memory files)")
    sampling = sampling_from_arguments(args, parser)
    model_dir = model_folder("rxt-chat", args.model)
    if model_dir is None:
        return 2
    if args.plain:
        from rxt_app.plain import run_plain

        return run_plain(model_dir, args.stm, args.system, sampling)
    return _run_app(model_dir, args.data_dir, sampling)


def _run_app(model_dir: Path, data_dir: Path | None, sampling: SamplingOptions) -> int:
    from rxt_app.tui import ModelLoadError, run_app

    try:
        run_app(model_dir=model_dir, data_dir=data_dir, sampling=sampling.as_kwargs())
    except ModelLoadError as error:
        print(f"rxt-chat: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
