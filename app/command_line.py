"""What the rxt-* front ends' command lines share: the sampling flags (``--max-tokens``,
``--temperature``, ...) and finding the ``--model`` folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rxt_mlx.sampling import SamplingOptions


def add_sampling_arguments(parser: argparse.ArgumentParser, title: str = "sampling") -> None:
    """Add the SamplingOptions flags, defaulting to SamplingOptions' defaults."""
    sampling = parser.add_argument_group(title)
    defaults = SamplingOptions()
    sampling.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="most tokens per answer")
    sampling.add_argument("--temperature", type=float, default=defaults.temperature, help="0 is greedy")
    sampling.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus mass in (0, 1]")
    sampling.add_argument("--top-k", type=int, default=defaults.top_k, help="0 disables it")
    sampling.add_argument("--min-p", type=float, default=defaults.min_p, help="in [0, 1); 0 disables it")
    sampling.add_argument("--repetition-penalty", type=float, default=None, help="> 0; unset disables it")
    sampling.add_argument("--seed", type=int, default=None, help="random seed of sampling")


def sampling_from_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SamplingOptions:
    """The parsed flags as SamplingOptions; an invalid value is a usage error (exit 2)."""
    try:
        return SamplingOptions(
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


def model_folder(prog: str, argument: str | None) -> Path | None:
    """The model folder of ``--model`` (a folder or a Hub repo id; the bundled demo when None), or
    None after printing why there is none usable (``prog: reason`` on stderr)."""
    from rxt_mlx.hub import HubError, model_argument

    try:
        folder = model_argument(argument) or demo_model_dir()
    except HubError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return None
    problem = model_folder_problem(folder, is_demo=argument is None)
    if problem:
        print(f"{prog}: {problem}", file=sys.stderr)
        return None
    return folder
