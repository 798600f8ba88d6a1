"""Modal screens: confirm, ask for a line of text (rename, fork turn, export path), help."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question; dismisses with True on confirm."""

    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel"), Binding("y", "dismiss(True)", "Yes")]

    def __init__(self, question: str, confirm_label: str = "Yes"):
        super().__init__(classes="dialog-screen")
        self.question = question
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, markup=False)
            with Horizontal(classes="buttons"):
                yield Button(self.confirm_label, variant="error", id="confirm")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")


class TextPromptScreen(ModalScreen[str | None]):
    """Asks for one line of text; ``validate`` returns an error message or None. Dismisses with None on cancel."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, prompt: str, value: str = "", validate: Callable[[str], str | None] | None = None):
        super().__init__(classes="dialog-screen")
        self.prompt = prompt
        self.value = value
        self.check = validate

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.prompt, markup=False)
            yield Input(self.value, id="answer")
            yield Label("", id="error", markup=False)

    def on_mount(self) -> None:
        self.query_one("#answer", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        error = self.check(value) if self.check else (None if value else "please type something")
        if error:
            self.query_one("#error", Label).update(error)
            return
        self.dismiss(value)


class HelpScreen(ModalScreen[None]):
    """The keybindings, one per line."""

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
