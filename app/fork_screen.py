"""Asks at which turn to fork a conversation."""

from __future__ import annotations

from rxt_app.prompt_screen import TextPromptScreen
from rxt_app.storage import Conversation


class ForkScreen(TextPromptScreen):
    """A turn number of ``conversation`` from 0 (empty memory) to its turn count, proposing ``proposed``.

    Dismisses with the number as text, or None on Esc.
    """

    def __init__(self, conversation: Conversation, proposed: int):
        prompt = f"Fork “{conversation.title}” at which turn? (0 = empty memory, {conversation.turn_count} = now)"
        super().__init__(prompt, str(min(proposed, conversation.turn_count)))
        self.turn_count = conversation.turn_count

    def error_in(self, value: str) -> str | None:
        if not value.isdigit() or not 0 <= int(value) <= self.turn_count:
            return f"type a turn number from 0 to {self.turn_count}"
        return None
