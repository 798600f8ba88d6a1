"""What an empty conversation shows: what the loaded model can do, and messages to start with."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label, Static

DEMO_EXAMPLES = (
    "My name is Ann.",
    "I live in Oslo.",
    "I have a cat named Tom.",
    "My lucky number is 7.",
    "What is my name?",
    "Tell me my lucky number.",
)
"""Phrasings the bundled demo model was trained on (rxt_mlx/demo/README.md)."""

GENERIC_EXAMPLES = (
    "Hi, I'm Ann and I live in Oslo.",
    "What do you remember about me?",
    "Summarize what we talked about so far.",
)


@dataclass(frozen=True)
class Welcome:
    """The text of an empty conversation: ``lines`` about the model, then ``examples``."""

    lines: tuple[str, ...]
    examples: tuple[str, ...]


def welcome(description: str, query_limit: int, is_demo: bool) -> Welcome:
    """What to show for the model ``description`` (``rxt_mlx.describe_model``) taking queries of up
    to ``query_limit`` tokens; the demo model says what it was trained to do."""
    memory = (
        "It keeps what you tell it in a fixed-size short-term memory (STM) instead of re-reading the chat, "
        "so every turn costs the same however long the conversation grows."
    )
    if is_demo:
        lines = (
            "The bundled demo model: a tiny RxT that keeps facts about you and gives them back.",
            memory,
            "Tell it your name, city, pet, job, favourite color or food, or lucky number, then ask about them. "
            "It knows nothing else.",
        )
        examples = DEMO_EXAMPLES
    else:
        lines = (f"Model: {description}.", memory)
        examples = GENERIC_EXAMPLES
    limit = f"A message can be up to {query_limit} tokens (the counter by the input shows how many)."
    return Welcome((*lines, limit), examples)


class WelcomeView(Vertical):
    """The welcome of an empty conversation; clicking an example posts :class:`WelcomeView.ExampleChosen`."""

    class ExampleChosen(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    def __init__(self, content: Welcome):
        super().__init__(id="welcome")
        self.content = content

    def compose(self) -> ComposeResult:
        yield Static("\n\n".join(self.content.lines), markup=False, classes="about")
        yield Label("Try (click one to put it in the input):", classes="heading")
        for text in self.content.examples:
            yield ExampleLabel(text)


class ExampleLabel(Label):
    """One example message."""

    def __init__(self, text: str):
        super().__init__(f"› {text}", markup=False, classes="example")
        self.text = text

    def on_click(self) -> None:
        self.post_message(WelcomeView.ExampleChosen(self.text))
