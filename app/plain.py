"""``rxt-chat --plain``: one query per stdin line, each answer streamed to stdout.

A line ends with ``\\n``, ``\\r\\n`` or ``\\r``; bytes that are not UTF-8 become U+FFFD; empty lines
are skipped. A line starting with ``/`` is a command (``/help`` lists them: /bye, /clear, /save,
/load, /set; see :mod:`rxt_app.plain_commands`); what a command says goes to stderr, so stdout
holds only answers (and the ``>>>`` prompt on a terminal). The memory is updated after every
answer; with ``--stm FILE`` it is saved after every turn and the next run resumes from it. Before
the model loads, the memory file's folder is made if missing and must take new files, and the
temp files a killed earlier run left there are removed.
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

from rxt_app.plain_commands import CommandError, PlainChat, is_command, run_command

from rxt_mlx.sampling import SamplingOptions
from rxt_mlx.session import Session, TokenEvent
from rxt_mlx.stm import TEMP_SUFFIX, STMFileError, remove_temp_files

LINE_END = re.compile(r"\r\n|\r|\n")
PROMPT = ">>> "
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
    system_prompt: str | None = None,
    prompt: str = "",
) -> int:
    """Answer every non-empty line of ``queries`` (bytes, see :func:`query_lines`); do the commands.

    ``prompt`` is written to ``out`` before each line is read (``>>> `` on a terminal). Returns 0,
    or 1 if some query or command was refused (it is reported on ``log`` and the chat goes on).
    """
    state = PlainChat(session, sampling, stm_path, system_prompt)
    status = 0
    _write(out, prompt)
    for line in query_lines(queries):
        if line.strip():
            status |= (
                _command(state, line, log) if is_command(line) else _answer(state, line.removeprefix("/"), out, log)
            )
        if state.ended:
            break
        _write(out, prompt)
    return status


def _command(state: PlainChat, line: str, log: TextIO) -> int:
    """Do a command; returns 1 if it was refused."""
    try:
        print(run_command(state, line.strip()), file=log, flush=True)
    except CommandError as error:
        print(f"rxt-chat: {error}", file=log, flush=True)
        return 1
    return 0


def _answer(state: PlainChat, query: str, out: TextIO, log: TextIO) -> int:
    """Stream the answer to ``query`` and memorize the turn; returns 1 if the query was refused."""
    session = state.session
    try:
        for event in session.generate(query, **state.sampling.as_kwargs()):
            if isinstance(event, TokenEvent) and event.text:
                _write(out, event.text)
    except ValueError as error:
        print(f"rxt-chat: {error}", file=log, flush=True)
        return 1
    _write(out, "\n")
    session.update_memory()
    if state.stm_path is not None:
        session.save_stm(state.stm_path)
    return 0


def _write(out: TextIO, text: str) -> None:
    if text:
        out.write(text)
        out.flush()


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
    interactive = sys.stdin.buffer.isatty()
    if interactive:
        print("Type a message; /help lists the commands, /bye ends the chat.", file=sys.stderr, flush=True)
    prompt = PROMPT if interactive else ""
    return chat(session, sampling, stm_path, sys.stdin.buffer, sys.stdout, sys.stderr, system_prompt, prompt)
