"""``rxt-chat --plain``: one query per stdin line, each answer streamed to stdout.

The memory is updated after every answer; with ``--stm FILE`` it is saved after every turn and
the next run resumes from it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from rxt_mlx.sampling import SamplingOptions
from rxt_mlx.session import Session, TokenEvent


def open_session(model, tokenizer, stm_path: Path | None, system_prompt: str | None, log: TextIO) -> Session:
    """A new session, or the one saved in ``stm_path`` (an STMFileError if it is refused)."""
    if stm_path is not None and stm_path.exists():
        session = Session.restore(model, tokenizer, stm_path)
        print(f"resuming the memory saved in {stm_path} after turn {session.turn}", file=log, flush=True)
        if system_prompt:
            print("--system is ignored: the saved memory already holds its system prompt", file=log, flush=True)
        return session
    return Session(model, tokenizer, system_prompt=system_prompt)


def chat(
    session: Session,
    sampling: SamplingOptions,
    stm_path: Path | None,
    queries: TextIO,
    out: TextIO,
    log: TextIO,
) -> int:
    """Answer every non-empty line of ``queries``; returns 0, or 1 if some query was rejected."""
    status = 0
    for line in queries:
        query = line.rstrip("\r\n")
        if not query.strip():
            continue
        try:
            for event in session.generate(query, **sampling.as_kwargs()):
                if isinstance(event, TokenEvent) and event.text:
                    out.write(event.text)
                    out.flush()
        except ValueError as error:
            print(f"rxt-chat: {error}", file=log, flush=True)
            status = 1
            continue
        out.write("\n")
        out.flush()
        session.update_memory()
        if stm_path is not None:
            session.save_stm(stm_path)
    return status


def run_plain(
    model_dir: Path,
    stm_path: Path | None,
    system_prompt: str | None,
    sampling: SamplingOptions,
) -> int:
    """Load the model and chat over stdin/stdout; returns the exit code (2: cannot start)."""
    import rxt_mlx

    for stream in (sys.stdin, sys.stdout):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        model, tokenizer = rxt_mlx.load(model_dir)
        session = open_session(model, tokenizer, stm_path, system_prompt, sys.stderr)
    except (ValueError, OSError) as error:  # bad model folder, refused STM file, too long system prompt
        print(f"rxt-chat: cannot start: {error}", file=sys.stderr, flush=True)
        return 2
    return chat(session, sampling, stm_path, sys.stdin, sys.stdout, sys.stderr)
