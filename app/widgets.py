"""The chat's widgets: conversation list, transcript messages, status line, memory panel."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rxt_app.storage import Conversation, TurnStats
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, ListItem, Markdown, Static
from textual.widgets.markdown import MarkdownStream

BAR_WIDTH = 16
SPARK_LEVELS = "▁▂▃▄▅▆▇█"
NEWLINE_MARK = "⏎"
"""Stands for a line break of a pasted message in the one-line input."""


class PromptInput(Input):
    """The message input. Enter submits and empties it in the order of the keys (the keys typed
    after it make the next message, even before the app has taken this one); ctrl+j starts a new
    line, and a pasted text keeps all its lines, both shown as ⏎. Its lower edge shows the size of
    the message (:meth:`show_size`)."""

    def action_new_line(self) -> None:
        self.insert_text_at_cursor(NEWLINE_MARK)

    def show_size(self, tokens: int, limit: int) -> None:
        """Show the message's tokens against the limit on the input's lower edge; marked ``over``
        (a warning) when it is too long to send."""
        self.border_subtitle = token_count(tokens, limit)
        self.set_class(tokens > limit, "over")

    async def _on_key(self, event: events.Key) -> None:
        # handled here, not by bindings (whose actions run later), so they keep the order of the keys
        if event.key in ("enter", "ctrl+j"):
            event.stop()
            event.prevent_default()  # Input's own handler, and the enter binding, are not run
            if event.key == "enter":
                await self.action_submit()
            else:
                self.action_new_line()

    async def action_submit(self) -> None:
        await super().action_submit()
        self.value = ""

    def _on_paste(self, event: events.Paste) -> None:
        text = "\n".join(event.text.splitlines())
        if text:
            self.insert_text_at_cursor(self.input_text(text))
        event.stop()
        event.prevent_default()

    @staticmethod
    def input_text(message: str) -> str:
        """A message as the input shows it: its line breaks as ⏎."""
        return message.replace("\n", NEWLINE_MARK)

    @staticmethod
    def message_text(value: str) -> str:
        """The message a submitted value stands for: its ⏎ marks back to line breaks."""
        return value.replace(NEWLINE_MARK, "\n")


def token_count(tokens: int, limit: int) -> str:
    """The size of the message being typed against the model's limit: ``12/47 tokens``."""
    return f"{tokens}/{limit} tokens" + (" · too long" if tokens > limit else "")


class ConversationItem(ListItem):
    """One entry of the side list: title and turn count; marks conversations of another model."""

    def __init__(self, conversation: Conversation, foreign: bool):
        super().__init__(classes="foreign" if foreign else "")
        self.conversation = conversation
        self.foreign = foreign

    def compose(self) -> ComposeResult:
        mark = " [read-only]" if self.foreign else ""
        yield Label(f"{self.conversation.title}{mark}", classes="title", markup=False)
        turns = self.conversation.turn_count
        yield Label(f"{turns} turn{'s' if turns != 1 else ''}", classes="turns")


class MessageView(Vertical):
    """One transcript entry: a role line and the text, plain for the user's, Markdown for answers (streamed).

    Clicking it posts :class:`MessageView.Chosen` (the fork dialog then proposes its turn).
    """

    class Chosen(Message):
        """A message of ``turn`` was clicked."""

        def __init__(self, turn: int):
            super().__init__()
            self.turn = turn

    def __init__(self, role: str, turn: int, text: str = "", note: str = ""):
        super().__init__(classes=f"message {role} {note}")
        self.role = role
        self.turn = turn
        self.text = text
        self.note = note
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Label(self.role_line(), classes="role")
        if self.role == "user":
            yield Static(self.text, markup=False, classes="text")  # as typed: a leading # is no heading
        else:
            yield Markdown(self.text, classes="text")

    def on_click(self) -> None:
        self.post_message(self.Chosen(self.turn))

    def role_line(self) -> str:
        """``You · turn 3`` / ``RxT · turn 3 · stopped``."""
        speaker = "You" if self.role == "user" else "RxT"
        return f"{speaker} · turn {self.turn}" + (f" · {self.note}" if self.note else "")

    @property
    def markdown(self) -> Markdown:
        """The Markdown widget holding the text."""
        return self.query_one(Markdown)

    async def append(self, fragment: str) -> None:
        """Stream ``fragment`` onto the end of the text."""
        self.text += fragment
        if self._stream is None:
            self._stream = Markdown.get_stream(self.markdown)
        await self._stream.write(fragment)

    async def finish(self, final_text: str, note: str = "") -> None:
        """End streaming with the answer's final text; ``note`` (e.g. "stopped") goes on the role line."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if final_text != self.text:
            self.text = final_text
            await self.markdown.update(final_text)
        if note:
            self.note = note
            self.query_one(".role", Label).update(self.role_line())


@dataclass
class StatusFigures:
    """What the status line shows."""

    model: str = ""
    turn: int = 0
    memory: str = "ready"
    stats: TurnStats | None = None
    activity: str = ""


def format_status(figures: StatusFigures) -> str:
    """The one-line summary: model, turn, last turn's timings, memory state."""
    parts = [f"{figures.model}", f"turn {figures.turn}"]
    if figures.stats is not None:
        stats = figures.stats
        parts.append(f"TTFT {stats.ttft_seconds * 1000:.0f} ms")
        parts.append(f"{stats.tokens_per_second:.1f} tok/s")
        parts.append(f"mem update {stats.memory_update_seconds * 1000:.0f} ms")
    parts.append(f"memory: {figures.memory}")
    if figures.activity:
        parts.append(figures.activity)
    return " │ ".join(parts)


class StatusLine(Static):
    """Bottom line with the live figures."""

    def show(self, figures: StatusFigures) -> None:
        """Render ``figures``."""
        self.update(format_status(figures))


def bar(value: float, scale: float, width: int = BAR_WIDTH) -> str:
    """A text bar of ``width`` cells, filled in eighths, for ``value`` out of ``scale``."""
    fraction = 0.0 if scale <= 0 else max(0.0, min(1.0, value / scale))
    eighths = round(fraction * width * 8)
    full, partial = divmod(eighths, 8)
    text = "█" * full + (" ▏▎▍▌▋▊▉"[partial] if partial else "")
    return text.ljust(width, "·")


def sparkline(values: list[float]) -> str:
    """One block character per value, from the smallest value (lowest block) to the largest."""
    low, high = min(values, default=0.0), max(values, default=0.0)
    if high <= low:
        return SPARK_LEVELS[-1 if high > 0 else 0] * len(values)
    top = len(SPARK_LEVELS) - 1
    return "".join(SPARK_LEVELS[min(top, int((v - low) / (high - low) * top + 0.5))] for v in values)


def format_memory_panel(history: list[tuple[float, ...]], state: str) -> str:
    """Per-layer bars of the last update's relative change, plus a sparkline of the mean change per turn."""
    title = f"STM change at turn {len(history)}" if history else "STM change per layer"
    lines = [title, "‖STMₜ − STMₜ₋₁‖ / ‖STMₜ₋₁‖", ""]
    if not history:
        lines.append("no turn yet")
    else:
        last = history[-1]
        scale = max(max(last), 1e-12)
        for layer, value in enumerate(last):
            lines.append(f"L{layer:<2} {bar(value, scale)} {value:.3f}")
        means = [sum(turn) / len(turn) for turn in history if turn][-24:]
        # log scale: the first update (from the initial STM) is often 100 times the later ones
        chart = sparkline([math.log10(max(mean, 1e-6)) for mean in means])
        lines += ["", "mean per turn, log scale", chart, f"min {min(means):.2g} · max {max(means):.3g}"]
    lines += ["", f"memory: {state}"]
    return "\n".join(lines)


class MemoryPanel(Static):
    """Toggleable side panel: how much the last memory update changed each STM layer."""

    def show(self, history: list[tuple[float, ...]], state: str) -> None:
        """Render the change history of a conversation (one tuple per turn)."""
        self.update(format_memory_panel(history, state))
