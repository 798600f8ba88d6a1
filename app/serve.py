"""``rxt-serve``: the HTTP backend for apps, OpenAI-compatible and stateful, over rxt-chat's storage.

Safe by default: it binds 127.0.0.1; another address needs ``--api-key`` (or ``RXT_SERVE_API_KEY``),
and every request then needs ``Authorization: Bearer KEY``; CORS is off unless ``--allow-origin``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from rxt_app.command_line import add_sampling_arguments, model_folder, sampling_from_arguments

from rxt_mlx.errors import command

API_KEY_VARIABLE = "RXT_SERVE_API_KEY"
DEMO_MODEL_ID = "rxt-demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxt-serve",
        description="Serve a Reactive Transformer (RxT) over HTTP: OpenAI-compatible endpoints (/v1) and "
        "stateful conversations (/api/conversations) in rxt-chat's data dir. API docs at /docs.",
    )
    parser.add_argument(
        "--model", help="MLX model folder or Hub repo id, e.g. ReactiveAI/RxT-Beta-Supervised (default: the demo)"
    )
    parser.add_argument("--model-id", help="the model's name in the API (default: the repo id or folder name)")
    parser.add_argument("--data-dir", type=Path, help="conversations, shared with rxt-chat (default: user data dir)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE}); needed to bind another address",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages of ORIGIN (e.g. http://localhost:5173) call the API; repeatable; CORS is off without it",
    )
    parser.add_argument(
        "--max-request-bytes", type=int, default=1 << 20, help="larger request bodies are refused (default 1 MiB)"
    )
    parser.add_argument(
        "--max-loaded",
        type=int,
        default=32,
        metavar="N",
        help="conversations whose memory stays loaded between turns (default 32; others reload from disk)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=8,
        metavar="N",
        help="most greedy answers of different conversations decoded together (default 8; 1: one at a time)",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_sampling_arguments(parser, "sampling defaults (a request's own fields win)")
    return parser


def served_model_id(argument: str | None, folder: Path) -> str:
    """The model's API name: the Hub repo id it was given as, the folder's name, or ``rxt-demo``."""
    if argument is None:
        return DEMO_MODEL_ID
    from rxt_mlx.hub import is_repo_id

    if is_repo_id(argument) and not Path(argument).expanduser().exists():
        return argument
    return folder.name


def bind_problem(host: str, api_key: str | None) -> str | None:
    """Why binding ``host`` is refused (another machine could reach it without a key), or None."""
    from rxt_app.http_guards import is_loopback

    if is_loopback(host) or api_key:
        return None
    return (
        f"--host {host} lets other machines reach the server; give an API key (--api-key KEY or "
        f"${API_KEY_VARIABLE}) so that only clients with it are answered"
    )


@command("rxt-serve")
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rxt-serve``; returns the exit code (2: bad arguments, model or bind address)."""
    from rxt_mlx.blas import preload_optimised_blas

    preload_optimised_blas()  # before anything imports mlx.core, which binds its BLAS on import
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = sampling_from_arguments(args, parser)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be from 1 to 65535, not {args.port}")
    if args.max_batch < 1:
        parser.error(f"--max-batch must be at least 1, not {args.max_batch}")
    if args.max_loaded < 1:
        parser.error(f"--max-loaded must be at least 1, not {args.max_loaded}")
    if args.max_request_bytes < 1024:
        parser.error(f"--max-request-bytes must be at least 1024, not {args.max_request_bytes}")
    problem = bind_problem(args.host, args.api_key)
    if problem:
        print(f"rxt-serve: {problem}", file=sys.stderr)
        return 2
    model_dir = model_folder("rxt-serve", args.model)
    if model_dir is None:
        return 2
    return _serve(args, model_dir, defaults)


def _serve(args: argparse.Namespace, model_dir: Path, defaults) -> int:
    import uvicorn
    from rxt_app.http_guards import is_loopback
    from rxt_app.server import ServerSettings, create_app, start_worker
    from rxt_app.storage import Storage, default_data_dir
    from rxt_app.worker import ModelLoadError

    data_dir = args.data_dir or default_data_dir()
    Storage(data_dir).close()  # a data dir that cannot be used stops here, with its reason
    try:
        worker, relay = start_worker(model_dir, defaults, args.max_batch)
    except ModelLoadError as error:
        print(f"rxt-serve: {error}", file=sys.stderr)
        return 2
    print(f"rxt-serve: model {worker.description}; data dir {data_dir}", file=sys.stderr, flush=True)
    settings = ServerSettings(
        data_dir=data_dir,
        model_id=args.model_id or served_model_id(args.model, model_dir),
        model_created=int((model_dir / "config.json").stat().st_mtime or time.time()),
        api_key=args.api_key,
        allow_origins=tuple(args.allow_origin),
        loopback_only=is_loopback(args.host),
        max_request_bytes=args.max_request_bytes,
        max_loaded=args.max_loaded,
        defaults=defaults,
    )
    app = create_app(worker, relay, settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
