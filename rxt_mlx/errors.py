"""The project's error type, and the one way its commands report errors.

Every error this project raises for bad input (a damaged file, a wrong config, a model that does
not fit) derives from :class:`RxTError`, and its message is a sentence a user can act on. The
console entry points wrap their ``main`` in :func:`command`, which prints that sentence on one
line of stderr and exits non-zero; ``--debug`` (or ``RXT_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

DEBUG_FLAG = "--debug"


class RxTError(Exception):
    """Base of the project's errors; the message names the file, key or value and what was expected."""


def command(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    """Decorate a console entry point ``main(argv) -> int`` named ``prog``.

    :class:`RxTError` and ``OSError`` (a missing file, a full disk, a folder that cannot be
    written) become ``prog: error: ...`` on stderr and exit status 1; Ctrl-C exits 130 and a
    closed stdout (``prog | head``) ends quietly, both without a traceback. ``--debug`` anywhere
    in the arguments is removed and lets the exception through.
    """

    def decorate(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            debug = DEBUG_FLAG in argv or os.environ.get("RXT_DEBUG") == "1"
            argv = [arg for arg in argv if arg != DEBUG_FLAG]
            if debug:
                return main(argv)
            try:
                return main(argv)
            except BrokenPipeError:
                _silence_stdout()
                return 141
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except (RxTError, OSError) as error:
                print(f"{prog}: error: {_sentence(error)}", file=sys.stderr)
                return 1

        return run

    return decorate


def _sentence(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, RxTError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}"
    return " ".join(str(error).split()) or type(error).__name__


def _silence_stdout() -> None:
    """After a reader closed stdout, point it at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
