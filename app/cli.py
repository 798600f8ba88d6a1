"""``rxt-chat``: the Textual chat, or ``--plain`` line-by-line chat over stdin/stdout.

The project's errors end the command with one line on stderr (``rxt_mlx.errors.command``;
``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rxt_mlx.errors import command
from rxt_mlx.sampling import SamplingOptions


def demo_model_dir() -> Path:
    """The bundled demo model folder (package data of rxt_mlx)."""
    import rxt_mlx

    return Path(rxt_mlx.__file__).parent / "demo"


def model_folder_problem(folder: Path, is_demo: bool) -> str | None:
    """Why ``folder`` cannot be an MLX model folder, or None if it looks like one.

    A quick check before anything heavy is imported; loading reports the finer problems.
    """
    where = f"the bundled demo model ({folder})" if is_demo else f"model folder {folder}"
    if not folder.is_dir():
        return f"{where} does not exist"
    if not (folder / "config.json").is_file():
        hint = "; pass --model DIR" if is_demo else " (expected an MLX model folder made by rxt-convert)"
        return f"{where} has no config.json{hint}"
    return None


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
    sampling = parser.add_argument_group("sampling")
    defaults = SamplingOptions()
    sampling.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="most tokens per answer")
    sampling.add_argument("--temperature", type=float, default=defaults.temperature, help="0 is greedy")
    sampling.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus mass in (0, 1]")
    sampling.add_argument("--top-k", type=int, default=defaults.top_k, help="0 disables it")
    sampling.add_argument("--min-p", type=float, default=defaults.min_p, help="in [0, 1); 0 disables it")
    sampling.add_argument("--repetition-penalty", type=float, default=None, help="> 0; unset disables it")
    sampling.add_argument("--seed", type=int, default=None, help="random seed of sampling")
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
    try:
        sampling = SamplingOptions(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
        )
    except ValueError as error:
        parser.error(str(error))
    from rxt_mlx.hub import HubError, model_argument

    try:
        model_dir = model_argument(args.model) or demo_model_dir()
    except HubError as error:
        print(f"rxt-chat: {error}", file=sys.stderr)
        return 2
    problem = model_folder_problem(model_dir, is_demo=args.model is None)
    if problem:
        print(f"rxt-chat: {problem}", file=sys.stderr)
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
