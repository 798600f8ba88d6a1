"""``rxt-chat --plain``: one query per stdin line, each answer streamed to stdout.

A line ends with ``\\n``, ``\\r\\n`` or ``\\r``; bytes that are not UTF-8 become U+FFFD; empty lines
are skipped. The memory is updated after every answer; with ``--stm FILE`` it is saved after every
turn and the next run resumes from it. Before the model loads, the memory file's folder is made if
missing and must take new files, and the temp files a killed earlier run left there are removed.
"""

from __future__ import annotations

import codecs
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from rxt_mlx.sampling import SamplingOptions
from rxt_mlx.session import Session, TokenEvent
from rxt_mlx.stm import TEMP_SUFFIX, STMFileError, remove_temp_files

LINE_END = re.compile(r"\r\n|\r|\n")
READ_SIZE = 1 << 16


def query_lines(stream: BinaryIO) -> Iterator[str]:
    """The lines of ``stream``, each as soon as its line end arrives (``\\n``, ``\\r\\n`` or ``\\r``).

    A ``\\r\\n`` split between two reads gives an extra empty line, which the chat skips anyway.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    partial: list[str] = []
    while chunk := stream.read1(READ_SIZE):
        *ended, rest = LINE_END.split(decoder.decode(chunk))
        if ended:
            yield "".join(partial) + ended[0]
            yield from ended[1:]
            partial.clear()
        partial.append(rest)
    last = "".join(partial) + decoder.decode(b"", final=True)
    if last:
        yield last


def prepare_memory_file(stm_path: Path) -> None:
    """Check that the memory can be saved at ``stm_path``, before any query is answered.

    Makes its folder if missing, removes the temp files of saves a killed earlier run left there
    (``rxt_mlx.stm.remove_temp_files``), and writes and removes a probe file. Raises STMFileError
    naming the file and the reason when the folder cannot take new files.
    """
    folder = stm_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_temp_files(folder, stm_path.name)
        handle, probe = tempfile.mkstemp(prefix=f".{stm_path.name}.", suffix=TEMP_SUFFIX, dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise STMFileError(f"{stm_path}: cannot save the memory there ({reason}: {error.filename or folder})") from None


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
    queries: BinaryIO,
    out: TextIO,
    log: TextIO,
) -> int:
    """Answer every non-empty line of ``queries`` (bytes, see :func:`query_lines`).

    Returns 0, or 1 if some query was refused (it is reported on ``log`` and the chat goes on).
    """
    status = 0
    for query in query_lines(queries):
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

    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    try:
        if stm_path is not None:
            prepare_memory_file(stm_path)
        model, tokenizer = rxt_mlx.load(model_dir)
        print(f"model: {rxt_mlx.describe_model(model, model_dir)}", file=sys.stderr, flush=True)
        session = open_session(model, tokenizer, stm_path, system_prompt, sys.stderr)
    except (ValueError, OSError) as error:  # bad model folder, refused STM file, too long system prompt
        print(f"rxt-chat: cannot start: {error}", file=sys.stderr, flush=True)
        return 2
    return chat(session, sampling, stm_path, sys.stdin.buffer, sys.stdout, sys.stderr)
