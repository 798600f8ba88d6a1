"""The slash commands of ``rxt-chat --plain`` (as in ``ollama run``): /help, /bye, /clear, /save,
/load and /set. A command that cannot be done says why in one line and changes nothing."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from rxt_app.conversation_settings import SETTABLE, parsed_option

from rxt_mlx.sampling import SamplingOptions
from rxt_mlx.session import Session
from rxt_mlx.stm import STMFileError

HELP = """Commands:
  /help              this list
  /bye               end the chat (so does the end of the input, ctrl+d)
  /clear             start a new memory (with the --system prompt, if one was given)
  /save FILE         save the memory to an STM file
  /load FILE         continue from the memory in an STM file (saved by /save or --stm)
  /set NAME VALUE    set temperature, top_p, max_tokens or seed, e.g. /set temperature 0.7
Any other line is a message; a line starting with // sends the message that follows the first /."""


class CommandError(ValueError):
    """A command cannot be done; the message says why, in one line."""


@dataclass
class PlainChat:
    """What the commands change: the conversation's Session and the sampling options.

    ``stm_path``: the --stm file saved after each turn (and after /clear and /load).
    """

    session: Session
    sampling: SamplingOptions
    stm_path: Path | None = None
    system_prompt: str | None = None
    ended: bool = False


def is_command(line: str) -> bool:
    """Whether ``line`` is a command (``/word...``) rather than a message (``//`` escapes a message)."""
    return line.startswith("/") and not line.startswith("//")


def run_command(chat: PlainChat, line: str) -> str:
    """Do the command on ``line``; returns what to tell the user. Raises CommandError when it cannot be done."""
    try:
        name, *arguments = shlex.split(line[1:]) or [""]
    except ValueError as error:
        raise CommandError(f"cannot read the command {line!r}: {error}") from None
    if name not in COMMANDS:
        raise CommandError(f"unknown command /{name}; /help lists the commands")
    return COMMANDS[name](chat, arguments)


def _arguments(arguments: list[str], count: int, usage: str) -> list[str]:
    if len(arguments) != count:
        raise CommandError(f"usage: {usage}")
    return arguments


def _help(chat: PlainChat, arguments: list[str]) -> str:
    return HELP


def _bye(chat: PlainChat, arguments: list[str]) -> str:
    chat.ended = True
    return "bye"


def _clear(chat: PlainChat, arguments: list[str]) -> str:
    _arguments(arguments, 0, "/clear")
    chat.session = Session(chat.session.model, chat.session.tokenizer, system_prompt=chat.system_prompt)
    _save_to_stm_path(chat)
    return "a new memory" + (" with the system prompt" if chat.system_prompt else "")


def _save(chat: PlainChat, arguments: list[str]) -> str:
    (file,) = _arguments(arguments, 1, "/save FILE")
    path = Path(file).expanduser()
    try:
        chat.session.save_stm(path)
    except (OSError, STMFileError) as error:
        raise CommandError(f"cannot save the memory to {path}: {getattr(error, 'strerror', None) or error}") from None
    return f"saved the memory after turn {chat.session.turn} to {path}"


def _load(chat: PlainChat, arguments: list[str]) -> str:
    (file,) = _arguments(arguments, 1, "/load FILE")
    path = Path(file).expanduser()
    try:
        chat.session.load_stm(path)
    except (OSError, STMFileError) as error:
        reason = str(error) if isinstance(error, STMFileError) else f"cannot read {path}: {error.strerror}"
        raise CommandError(reason) from None
    _save_to_stm_path(chat)
    return f"loaded the memory of {path} (after turn {chat.session.turn})"


def _set(chat: PlainChat, arguments: list[str]) -> str:
    name, value = _arguments(arguments, 2, f"/set NAME VALUE (NAME: {', '.join(SETTABLE)})")
    try:
        chat.sampling = replace(chat.sampling, **parsed_option(name, value))
    except ValueError as error:
        raise CommandError(str(error)) from None
    return f"{name} = {getattr(chat.sampling, name)}"


def _save_to_stm_path(chat: PlainChat) -> None:
    if chat.stm_path is not None:
        _save(chat, [str(chat.stm_path)])


COMMANDS = {"help": _help, "bye": _bye, "clear": _clear, "save": _save, "load": _load, "set": _set}
