"""Asks for one line of text (a new title, an export path)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class TextPromptScreen(ModalScreen[str | None]):
    """One line of text, prefilled with ``value``; dismisses with the stripped text, or None on Esc.

    Subclasses say what is acceptable by overriding :meth:`error_in`.
    """

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, prompt: str, value: str = ""):
        super().__init__(classes="dialog-screen")
        self.prompt = prompt
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.prompt, markup=False)
            yield Input(self.value, id="answer")
            yield Label("", id="error", markup=False)

    def on_mount(self) -> None:
        self.query_one("#answer", Input).focus()

    def error_in(self, value: str) -> str | None:
        """What is wrong with ``value`` (shown under the input), or None to accept it."""
        return None if value else "please type something"

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        error = self.error_in(value)
        if error:
            self.query_one("#error", Label).update(error)
            return
        self.dismiss(value)
