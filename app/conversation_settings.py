"""A conversation's own settings: its system prompt and the sampling options it overrides.

The sampling overrides are saved with the conversation (``Storage.save_settings``); the system
prompt goes where rxt-serve keeps it (:class:`~rxt_app.system_prompts.SystemPrompts`), so that
both front ends write it into the memory of turn 0 alike (the worker's ``system_prompt_of``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rxt_app.storage import Storage, StorageError
from rxt_app.system_prompts import SystemPrompts

from rxt_mlx.sampling import SamplingOptions

SETTABLE = {"temperature": float, "top_p": float, "max_tokens": int, "seed": int}
"""The sampling options a conversation (or ``/set`` in plain mode) may set, with their type."""


def parsed_option(name: str, text: str) -> dict:
    """``{name: value}`` for the text of a sampling option; ValueError says what is wrong, in one line."""
    if name not in SETTABLE:
        raise ValueError(f"unknown setting {name!r}; the settings are {', '.join(SETTABLE)}")
    kind = SETTABLE[name]
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, not {text!r}") from None
    SamplingOptions.of(**{name: value})  # raises ValueError naming the value and its range
    return {name: value}


@dataclass(frozen=True)
class ConversationSettings:
    """``system_prompt``: written into a new memory ("" for none); ``sampling``: the options this
    conversation sets over the command line's (names of :data:`SETTABLE`)."""

    system_prompt: str = ""
    sampling: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, value in self.sampling.items():
            parsed_option(name, str(value))


class SettingsStore:
    """Reads and saves the :class:`ConversationSettings` of the conversations in one data dir."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.system_prompts = SystemPrompts(storage.data_dir)

    def close(self) -> None:
        self.system_prompts.close()

    def get(self, conversation_id: str) -> ConversationSettings:
        """The settings of a conversation; a stored option that is no longer valid is left out
        (the command line's applies)."""
        stored = self.storage.settings(conversation_id)
        options = stored.get("sampling") if isinstance(stored, dict) else None
        sampling = {}
        for name, value in (options if isinstance(options, dict) else {}).items():
            try:
                sampling.update(parsed_option(name, str(value)))
            except ValueError:
                continue
        return ConversationSettings(self.system_prompt_of(conversation_id) or "", sampling)

    def save(self, conversation_id: str, settings: ConversationSettings) -> None:
        self.storage.save_settings(conversation_id, {"sampling": settings.sampling})
        if settings.system_prompt:
            self.system_prompts.set(conversation_id, settings.system_prompt)
        else:
            self.system_prompts.forget(conversation_id)

    def copy(self, source_id: str, target_id: str) -> None:
        """Give ``target_id`` (a fork) the settings of ``source_id``."""
        self.save(target_id, self.get(source_id))

    def forget(self, conversation_id: str) -> None:
        """Drop what is kept beside the conversation (after it was deleted for good)."""
        self.system_prompts.forget(conversation_id)

    def system_prompt_of(self, conversation_id: str) -> str | None:
        """The system prompt of a conversation, None if it has none (the worker's ``system_prompt_of``)."""
        return self.system_prompts.get(conversation_id)

    def sampling_of(self, conversation_id: str) -> dict:
        """The sampling options a conversation sets ({} for one deleted meanwhile; the worker's ``sampling_of``)."""
        try:
            return self.get(conversation_id).sampling
        except StorageError:  # a turn of a deleted conversation fails later, with its reason
            return {}
