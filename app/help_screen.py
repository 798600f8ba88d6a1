"""The keybindings."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Static


class HelpScreen(ModalScreen[None]):
    """The keybindings, one ``(key, description)`` per line."""

    BINDINGS = [Binding("escape,f1,q", "dismiss(None)", "Close")]

    def __init__(self, bindings: list[tuple[str, str]]):
        super().__init__(classes="dialog-screen")
        self.bindings = bindings

    def compose(self) -> ComposeResult:
        width = max(len(key) for key, _ in self.bindings)
        lines = [f"{key.ljust(width)}  {description}" for key, description in self.bindings]
        with Vertical(classes="dialog help"):
            yield Label("rxt-chat keys", classes="heading")
            yield Static("\n".join(lines), markup=False)
            yield Label("Every action is also in the command palette (ctrl+p). Esc closes.", markup=False)
