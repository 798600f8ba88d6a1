"""Searches the messages of every conversation; choosing a result opens its conversation at its turn."""

from __future__ import annotations

from collections.abc import Callable

from rxt_app.storage import SearchHit
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option


def hit_line(hit: SearchHit) -> str:
    """``title · turn 3 · You: …the words around the match…``"""
    speaker = "You" if hit.role == "user" else "RxT"
    return f"{hit.title} · turn {hit.turn} · {speaker}: {' '.join(hit.snippet.split())}"


class SearchScreen(ModalScreen[SearchHit | None]):
    """Type words; the matching messages are listed as you type (``search`` gives them). Enter or a
    click opens the highlighted one; Down moves into the list. Dismisses with the hit, or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"), Binding("down", "focus_results", show=False)]

    def __init__(self, search: Callable[[str], list[SearchHit]]):
        super().__init__(classes="dialog-screen")
        self.search = search
        self.hits: list[SearchHit] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog search"):
            yield Label("Search all conversations", classes="heading")
            yield Input(placeholder="words to find (the start of a word is enough)", id="words")
            yield Label("", id="count", markup=False)
            yield OptionList(id="results", markup=False)

    def on_mount(self) -> None:
        self.query_one("#words", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.hits = self.search(event.value)
        results = self.query_one("#results", OptionList)
        results.clear_options()
        results.add_options(Option(hit_line(hit)) for hit in self.hits)
        if self.hits:
            results.highlighted = 0
        count = f"{len(self.hits)} message{'s' if len(self.hits) != 1 else ''}" if event.value.strip() else ""
        self.query_one("#count", Label).update(count)

    def on_input_submitted(self) -> None:
        index = self.query_one("#results", OptionList).highlighted
        if self.hits and index is not None:
            self.dismiss(self.hits[index])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.hits[event.option_index])

    def action_focus_results(self) -> None:
        self.query_one("#results", OptionList).focus()
