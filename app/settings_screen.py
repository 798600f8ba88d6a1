"""Edits a conversation's settings: its system prompt and the sampling options it sets."""

from __future__ import annotations

from rxt_app.conversation_settings import SETTABLE, ConversationSettings, parsed_option
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

SHOWN_OPTIONS = ("temperature", "top_p", "max_tokens")


class SettingsScreen(ModalScreen[ConversationSettings | None]):
    """The settings of one conversation; an empty option field uses ``defaults`` (the command line's).

    Dismisses with the new :class:`ConversationSettings`, or None on Esc / Cancel. A value that
    cannot be used is named under the fields, and nothing is saved.
    """

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, settings: ConversationSettings, defaults: dict, turn_count: int):
        super().__init__(classes="dialog-screen")
        self.conversation_title = title
        self.settings = settings
        self.defaults = defaults
        self.turn_count = turn_count

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Settings of “{self.conversation_title}”", classes="heading", markup=False)
            hint = "written into a new memory"
            if self.turn_count:
                hint += "; a changed one starts a new conversation (this one keeps its memory)"
            yield Label(f"System prompt ({hint})", markup=False)
            yield Input(self.settings.system_prompt, placeholder="none", id="system_prompt")
            for name in SHOWN_OPTIONS:
                value = "" if self.settings.sampling.get(name) is None else str(self.settings.sampling[name])
                with Horizontal(classes="option"):
                    yield Label(f"{name} (empty: {self.defaults.get(name)})", markup=False)
                    yield Input(value, placeholder=str(self.defaults.get(name)), id=name, compact=True)
            yield Label("", id="error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#system_prompt", Input).focus()

    def chosen(self) -> ConversationSettings:
        """The settings the fields hold; ValueError names the first value that cannot be used."""
        sampling = {name: value for name, value in self.settings.sampling.items() if name not in SHOWN_OPTIONS}
        for name in SHOWN_OPTIONS:
            text = self.query_one(f"#{name}", Input).value.strip()
            if text:
                sampling.update(parsed_option(name, text))
        prompt = self.query_one("#system_prompt", Input).value.strip()
        return ConversationSettings(prompt, {name: sampling[name] for name in SETTABLE if name in sampling})

    def save(self) -> None:
        try:
            settings = self.chosen()
        except ValueError as error:
            self.query_one("#error", Label).update(str(error))
            return
        self.dismiss(settings)

    def on_input_submitted(self) -> None:
        self.save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.save()
        else:
            self.dismiss(None)
