"""The Textual chat (``rxt-chat``): conversations with a persistent, rewindable, forkable STM.

This module renders and binds keys; the :class:`~rxt_app.controller.ChatController` decides.
Worker events arrive on the worker thread, travel to the UI thread as messages, go through the
controller, and the controller's events are rendered in order before the next message is taken,
so the screen always shows the controller's state.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from rxt_app.command_line import demo_model_dir
from rxt_app.confirm_screen import ConfirmScreen
from rxt_app.controller import (
    GENERATING,
    QUEUED,
    ActionRefused,
    ChatController,
    ChatEvent,
    ConversationsChanged,
    ReadyToQuit,
    TurnCancelled,
    TurnCommitted,
    TurnFailed,
    TurnQueued,
    WorkerFailed,
)
from rxt_app.conversation_settings import ConversationSettings, SettingsStore
from rxt_app.export import conversation_markdown, default_export_path
from rxt_app.fork_screen import ForkScreen
from rxt_app.help_screen import HelpScreen
from rxt_app.prompt_screen import TextPromptScreen
from rxt_app.search_screen import SearchScreen
from rxt_app.settings import Settings
from rxt_app.settings_screen import SettingsScreen
from rxt_app.storage import Conversation, SearchHit, Storage, default_data_dir
from rxt_app.styles import CHAT_CSS
from rxt_app.welcome import WelcomeView, welcome
from rxt_app.widgets import (
    ConversationItem,
    MemoryPanel,
    MessageView,
    PromptInput,
    StatusFigures,
    StatusLine,
)
from rxt_app.worker import AnswerFinished, InferenceWorker, ModelLoadError, TokenText, WorkerEvent
from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message as TextualMessage
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Input, ListView, Static

from rxt_mlx.hub import source_label

Result = TypeVar("Result")

SHOWN_TURNS = 50
"""The transcript shows the last SHOWN_TURNS turns; the memory holds them all anyway."""
UNDO_DELETE_SECONDS = 10.0
"""A deleted conversation can be brought back (ctrl+z) this long; then, or at exit, it is gone."""


class WorkerMessage(TextualMessage):
    """Carries a worker event onto the UI thread."""

    def __init__(self, event: WorkerEvent):
        super().__init__()
        self.event = event


class ChatApp(App[None]):
    """rxt-chat. ``worker`` must be started (model loaded); ``storage`` is the opened data dir."""

    CSS = CHAT_CSS
    TITLE = "rxt-chat"
    BINDINGS = [
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("f2", "rename", "Rename", show=False),  # the footer fits 80 columns; F1 and ctrl+p list all
        Binding("f8", "delete", "Delete", show=False),
        Binding("ctrl+z", "rewind", "Rewind"),
        Binding("ctrl+r", "redo", "Redo", show=False),
        Binding("ctrl+g", "regenerate", "Regenerate", show=False),
        Binding("ctrl+l", "edit", "Edit message", show=False),
        Binding("ctrl+f", "fork", "Fork"),
        Binding("f3", "search", "Search", show=False),
        Binding("f4", "conversation_settings", "Settings", show=False),
        Binding("ctrl+y", "copy_answer", "Copy answer", show=False),
        Binding("ctrl+s", "export", "Export", show=False),
        Binding("ctrl+t", "toggle_memory", "Memory panel"),
        Binding("ctrl+b", "toggle_sidebar", "Conversations", show=False),
        Binding("escape", "stop", "Stop", show=False),
        Binding("f1", "help", "Help"),
    ]
    ACTION_HELP = {
        "new_conversation": ("New conversation", "Start a conversation with a fresh memory"),
        "rename": ("Rename conversation", "Give the conversation a new title"),
        "delete": ("Delete conversation", "Delete the conversation and its memory (asks first)"),
        "rewind": (
            "Rewind",
            "Undo the last turn: transcript and memory go back one turn (just after a delete: bring it back)",
        ),
        "redo": ("Redo", "Bring back the rewound turns, if no message was sent since"),
        "regenerate": ("Regenerate answer", "Answer the last message again (its turn is rewound, then resent)"),
        "edit": ("Edit message", "Rewind to the chosen (clicked) or last message and put it in the input"),
        "search": ("Search conversations", "Find messages in every conversation; open one at its turn"),
        "conversation_settings": ("Conversation settings", "System prompt, temperature, top-p, max tokens"),
        "fork": ("Fork conversation", "A new conversation from an earlier turn, with that turn's memory"),
        "copy_answer": ("Copy last answer", "Copy the last answer to the clipboard"),
        "export": ("Export to Markdown", "Write the conversation to a Markdown file"),
        "toggle_memory": ("Toggle memory panel", "Show/hide how much each STM layer changed"),
        "toggle_sidebar": ("Toggle conversation list", "Show/hide the conversation list"),
        "stop": ("Stop generating", "Stop the answer (the partial answer is kept and memorized); before it, cancel"),
        "help": ("Help", "Show the keybindings"),
    }

    def __init__(self, worker: InferenceWorker, storage: Storage):
        super().__init__()
        self.controller = ChatController(worker, storage, SettingsStore(storage))
        self.settings = Settings(storage.data_dir)
        self.theme_restored = False  # until then, theme changes are the start's, not the user's
        self.pending: deque[ChatEvent] = deque()
        self.controller.subscribe(self.pending.append)
        self.current: Conversation | None = None
        self.closing = False  # exit() called: the screen may be torn down under late worker events
        self.chosen_turn: int | None = None
        self.waiting: dict[str, list[str]] = {}  # messages typed while the previous answer is coming
        self.model_label = source_label(worker.model_dir)
        self.sub_title = worker.description
        self.sampling_defaults = dict(worker.sampling)
        is_demo = Path(worker.model_dir).resolve() == demo_model_dir().resolve()
        self.welcome = welcome(worker.description, worker.query_limit, is_demo)
        self.deleted: dict[str, Timer] = {}  # deleted conversations that ctrl+z can still bring back
        self.edited = ""  # the message ctrl+l put in the input (a redo takes it back out)

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            with Vertical(id="sidebar"):
                yield Static("Conversations", classes="heading")
                yield ListView(id="conversations")
            with Vertical(id="main"):
                yield Static("", id="notice", markup=False)
                yield VerticalScroll(id="transcript")
                yield PromptInput(placeholder="Message RxT… (Enter sends, Esc stops, F1 help)", id="prompt")
            yield MemoryPanel("", id="memory", markup=False)
        yield StatusLine("", id="status", markup=False)
        yield Footer()

    async def on_mount(self) -> None:
        theme = self.settings.load().get("theme")
        if theme in self.available_themes:
            self.theme = theme
        self.theme_restored = True
        self.query_one("#memory").display = False
        await self.refresh_list()
        await self.switch_to(self.controller.latest_or_new().id)
        self.count_tokens("")
        self.focus_prompt()

    def watch_theme(self, theme: str) -> None:
        """Remember the chosen theme for the next start."""
        if self.theme_restored:
            self.settings.save("theme", theme)

    # ----- controller bridge

    def post_worker_event(self, event: WorkerEvent) -> None:
        """Thread-safe: hand a worker event to the UI thread."""
        self.post_message(WorkerMessage(event))

    async def on_worker_message(self, message: WorkerMessage) -> None:
        self.controller.handle(message.event)
        if self.closing:
            self.pending.clear()
            return
        await self.render_events()
        await self.send_waiting()

    async def render_events(self) -> None:
        """Show the controller's events in order; then the list and the chrome, if anything but text changed."""
        list_changed = chrome_changed = False
        while self.pending:
            event = self.pending.popleft()
            if isinstance(event, (ConversationsChanged, TurnCommitted)):
                list_changed = True
            else:
                await self.render_event(event)
            chrome_changed = chrome_changed or not isinstance(event, TokenText)
        if list_changed and not self.closing:
            await self.refresh_list()
        if chrome_changed:
            self.update_chrome()

    async def render_event(self, event: ChatEvent) -> None:
        """Show one controller event on screen."""
        if isinstance(event, TurnQueued) and self.is_current(event.conversation_id):
            transcript = self.query_one("#transcript", VerticalScroll)
            views = [MessageView("user", event.turn, event.query), MessageView("assistant", event.turn, "")]
            await transcript.query("#welcome").remove()
            waiting = transcript.query(".waiting")
            await transcript.mount_all(views, before=waiting.first() if waiting else None)
            transcript.anchor()  # follows the answer as it grows, until the user scrolls up
        elif isinstance(event, TokenText):
            view = self.answer_view(event.conversation_id, event.turn)
            if view is not None:
                await view.append(event.text)
        elif isinstance(event, AnswerFinished):
            view = self.answer_view(event.conversation_id, event.turn)
            if view is not None:
                await view.finish(event.text, "stopped" if event.stopped else "")
        elif isinstance(event, TurnFailed):
            if self.is_current(event.conversation_id):
                await self.render_transcript()
                self.give_back(event.query)
            self.report_failure(event.message, event.details)
        elif isinstance(event, TurnCancelled):
            if self.is_current(event.conversation_id):
                await self.render_transcript()
                self.give_back(event.query)
            self.notify("Cancelled before the answer began; your message is back in the input.")
        elif isinstance(event, WorkerFailed):
            self.report_failure(event.message, event.details)
        elif isinstance(event, ReadyToQuit):
            self.shut_down()

    def report_failure(self, message: str, details: str) -> None:
        """Log the message and its traceback; show the error's sentence (without the exception's class name)."""
        self.log.error(message, details)
        sentence = re.sub(r"^\w+(Error|Exception): ", "", message)
        self.notify(sentence, title="Inference error", severity="error", timeout=10)

    def notify(self, message: str, *, title: str = "", severity="information", timeout=None, markup=False) -> None:
        """Show a notification as plain text: the brackets of an error or a title are no markup
        (``rich.markup.escape`` would leave ``[Q]`` and ``[A]`` to be eaten)."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def is_current(self, conversation_id: str) -> bool:
        """Whether ``conversation_id`` is the conversation on screen."""
        return self.current is not None and self.current.id == conversation_id

    # ----- rendering

    async def refresh_list(self) -> None:
        """Rebuild the side list (and the current conversation's row), keeping it highlighted."""
        conversations = self.controller.storage.conversations()
        for conversation in conversations:
            if self.is_current(conversation.id):
                self.current = conversation
        view = self.query_one("#conversations", ListView)
        await view.clear()
        read_only = self.controller.read_only_reason
        await view.extend(ConversationItem(c, read_only(c) is not None) for c in conversations)
        self.highlight_current()

    def highlight_current(self) -> None:
        """Move the side list's cursor to the current conversation."""
        view = self.query_one("#conversations", ListView)
        for index, item in enumerate(view.children):
            if isinstance(item, ConversationItem) and self.is_current(item.conversation.id):
                view.index = index

    async def switch_to(self, conversation_id: str) -> None:
        """Show a conversation; the controller loads its memory unless it is read-only or loaded."""
        self.current = self.controller.open(conversation_id)
        await self.render_transcript()
        await self.render_events()
        self.highlight_current()
        self.update_chrome()

    async def render_transcript(self) -> None:
        """Rebuild the transcript of the current conversation: committed turns, then live ones."""
        self.chosen_turn = None
        transcript = self.query_one("#transcript", VerticalScroll)
        await transcript.remove_children()
        if self.current is None:
            return
        messages = self.controller.storage.messages(self.current.id)
        views: list[Static | MessageView] = []
        if len(messages) > 2 * SHOWN_TURNS:
            hidden = messages[-2 * SHOWN_TURNS].turn - 1
            views.append(Static(f"… {hidden} earlier turns not shown (ctrl+s exports them all)", classes="elided"))
            messages = messages[-2 * SHOWN_TURNS :]
        for message in messages:
            stopped = message.stats is not None and message.stats.stopped
            views.append(MessageView(message.role, message.turn, message.text, "stopped" if stopped else ""))
        for live in self.controller.live_turns(self.current.id):
            views.append(MessageView("user", live.turn, live.query))
            views.append(MessageView("assistant", live.turn, live.answer, "stopped" if live.stopped else ""))
        views += self.waiting_views(self.current.id)
        if not views:
            views.append(WelcomeView(self.welcome))
        await transcript.mount_all(views)
        transcript.anchor()  # stays at the end while the Markdown of the turns is laid out

    def waiting_views(self, conversation_id: str, start: int = 0) -> list[MessageView]:
        """The messages waiting for the answer coming in a conversation, from the ``start``-th on."""
        live = self.controller.live_turns(conversation_id)
        last_turn = live[-1].turn if live else self.controller.storage.conversation(conversation_id).turn_count
        queries = self.waiting.get(conversation_id, [])
        return [
            MessageView("user", last_turn + index + 1, query, "waiting")
            for index, query in enumerate(queries)
            if index >= start
        ]

    def answer_view(self, conversation_id: str, turn: int) -> MessageView | None:
        """The on-screen answer of a turn, if the conversation is shown."""
        if not self.is_current(conversation_id):
            return None
        for view in self.query(MessageView):
            if view.role == "assistant" and view.turn == turn:
                return view
        return None

    def update_chrome(self) -> None:
        """Refresh the notice banner, input state, status line and memory panel."""
        if self.closing:
            return
        notice = self.query_one("#notice", Static)
        prompt = self.query_one("#prompt", Input)
        state = self.controller.state(self.current.id) if self.current else None
        message = state.read_only_reason if state else None
        if state and state.problem:
            message = (
                f"The memory snapshot of this conversation cannot be used: {state.problem}\n"
                f"Press ctrl+z to rewind to turn {state.last_good_turn}, the last turn with a good snapshot."
            )
        notice.update(message or "")
        notice.display = bool(message)
        was_disabled = prompt.disabled
        prompt.disabled = bool(message)
        if was_disabled and not prompt.disabled and self.screen is self.screen_stack[0]:
            prompt.focus()
        stats = self.controller.turn_stats(self.current.id) if self.current else []
        activity = self.controller.activity()
        figures = StatusFigures(
            model=self.model_label,
            turn=self.current.turn_count if self.current else 0,
            memory=self.controller.memory_state(self.current.id) if self.current else "-",
            stats=stats[-1] if stats else None,
            activity="generating (Esc stops)" if activity == "generating" else activity,
        )
        self.query_one(StatusLine).show(figures)
        panel = self.query_one(MemoryPanel)
        if panel.display:
            panel.show([turn.memory_change for turn in stats], figures.memory)

    # ----- input

    @on(Input.Changed, "#prompt")
    def prompt_changed(self, event: Input.Changed) -> None:
        self.count_tokens(PromptInput.message_text(event.value).strip())

    def count_tokens(self, query: str) -> None:
        """Show the size of the message being typed against the model's limit."""
        tokens, limit = self.controller.query_size(query) if query else (0, self.controller.worker.query_limit)
        self.query_one("#prompt", PromptInput).show_size(tokens, limit)

    @on(WelcomeView.ExampleChosen)
    def example_chosen(self, event: WelcomeView.ExampleChosen) -> None:
        prompt = self.query_one("#prompt", PromptInput)
        prompt.value = event.text
        prompt.focus()

    @on(Input.Submitted, "#prompt")
    async def send(self, event: Input.Submitted) -> None:
        """Send the typed query as the next turn of the current conversation."""
        query = PromptInput.message_text(event.value).strip()
        if not query or self.current is None:
            return
        if self.refused(self.controller.refuse_if_too_long, query):
            self.give_back(query)
            return
        conversation_id = self.current.id
        if self.answering(conversation_id) or self.waiting.get(conversation_id):
            self.waiting.setdefault(conversation_id, []).append(query)
            start = len(self.waiting[conversation_id]) - 1
            await self.query_one("#transcript", VerticalScroll).mount_all(self.waiting_views(conversation_id, start))
            return
        await self.send_now(conversation_id, query)

    async def send_now(self, conversation_id: str, query: str) -> None:
        """Send ``query``; if it is refused, say why and give it back to the input to edit."""
        try:
            self.controller.send(conversation_id, query)
        except ActionRefused as refusal:
            self.notify(refusal.message, severity=refusal.severity)
            if self.is_current(conversation_id):
                self.give_back(query)
        await self.render_events()

    def give_back(self, query: str) -> None:
        """Put a message that was not sent back into the (empty) input, to edit and send again."""
        prompt = self.query_one("#prompt", PromptInput)
        if not prompt.value:
            prompt.value = PromptInput.input_text(query)

    def answering(self, conversation_id: str) -> bool:
        """Whether an answer of the conversation is queued or coming (a message typed now must wait)."""
        return any(live.phase in (QUEUED, GENERATING) for live in self.controller.live_turns(conversation_id))

    async def send_waiting(self) -> None:
        """Send the first waiting message of each conversation whose answer has come."""
        for conversation_id, queries in list(self.waiting.items()):
            if self.closing or self.controller.quitting or self.answering(conversation_id):
                continue
            query = queries.pop(0)
            if not queries:
                del self.waiting[conversation_id]
            if self.is_current(conversation_id):
                waiting = self.query_one("#transcript", VerticalScroll).query(".waiting")
                if waiting:
                    await waiting.first().remove()
            await self.send_now(conversation_id, query)

    @on(ListView.Selected, "#conversations")
    async def conversation_selected(self, event: ListView.Selected) -> None:
        item = event.item
        if isinstance(item, ConversationItem) and not self.is_current(item.conversation.id):
            await self.switch_to(item.conversation.id)
        self.focus_prompt()

    @on(MessageView.Chosen)
    def message_chosen(self, event: MessageView.Chosen) -> None:
        """Remember the clicked turn for the fork dialog and mark its messages."""
        self.chosen_turn = event.turn
        for view in self.query(MessageView):
            view.set_class(view.turn == event.turn, "chosen")

    # ----- actions

    def focus_prompt(self) -> None:
        """Put the focus in the input, so that what is typed next goes into a message."""
        self.query_one("#prompt", Input).focus()

    async def action_new_conversation(self) -> None:
        await self.switch_to(self.controller.empty_or_new().id)
        self.focus_prompt()

    def action_rename(self) -> None:
        if self.current is None:
            return
        conversation_id = self.current.id

        async def renamed(title: str | None) -> None:
            if title and not self.refused(self.controller.rename, conversation_id, title):
                await self.render_events()

        self.push_screen(TextPromptScreen("Rename the conversation", self.current.title), renamed)

    def action_delete(self) -> None:
        if self.current is None or self.refused(self.controller.refuse_if_busy, self.current.id):
            return
        conversation = self.current

        async def confirmed(yes: bool | None) -> None:
            if yes and not self.refused(self.controller.delete_for_now, conversation.id):
                self.current = None
                await self.switch_to(self.controller.latest_or_new().id)
                self.deleted[conversation.id] = self.set_timer(
                    UNDO_DELETE_SECONDS, lambda: self.purge_deleted(conversation.id)
                )
                self.notify(
                    f"Deleted “{conversation.title}”. ctrl+z brings it back ({UNDO_DELETE_SECONDS:.0f} s).",
                    timeout=UNDO_DELETE_SECONDS,
                )

        self.push_screen(ConfirmScreen(f"Delete “{conversation.title}” and its memory?", "Delete"), confirmed)

    def refused(self, action: Callable[..., object], *args: object) -> bool:
        """Run a controller action; if it is refused, show why and return True."""
        try:
            action(*args)
        except ActionRefused as refusal:
            self.notify(refusal.message, severity=refusal.severity)
            return True
        return False

    def tried(self, action: Callable[..., Result], *args: object) -> Result | None:
        """Run a controller action that returns something; None (and why, shown) if it is refused."""
        results: list[Result] = []
        self.refused(lambda: results.append(action(*args)))
        return results[0] if results else None

    def purge_deleted(self, conversation_id: str | None = None) -> None:
        """Make the deletion of a conversation (default: of all of them) final: no undo after it."""
        for deleted_id in [conversation_id] if conversation_id else list(self.deleted):
            timer = self.deleted.pop(deleted_id, None)
            if timer is not None:
                timer.stop()
                self.refused(self.controller.purge, deleted_id)

    async def undo_delete(self) -> None:
        """Bring back the conversation deleted last (while its deletion is not final)."""
        conversation_id = list(self.deleted)[-1]
        self.deleted.pop(conversation_id).stop()
        conversation = self.tried(self.controller.undo_delete, conversation_id)
        if conversation is None:
            return
        await self.switch_to(conversation.id)
        await self.render_events()
        self.notify(f"Brought back “{conversation.title}”.")

    async def action_rewind(self) -> None:
        if self.deleted:
            await self.undo_delete()
            return
        if self.current is None or self.refused(self.controller.rewind, self.current.id, True):
            return
        await self.render_events()
        await self.render_transcript()
        redo = self.controller.redo_turns(self.current.id)
        self.notify(f"Rewound to turn {self.current.turn_count}." + (" ctrl+r redoes it." if redo else ""))

    async def action_redo(self) -> None:
        if self.current is None or self.refused(self.controller.redo, self.current.id):
            return
        await self.render_events()
        await self.render_transcript()
        prompt = self.query_one("#prompt", PromptInput)
        if self.edited and prompt.value == self.edited:
            prompt.value = ""  # the message being edited is back in the transcript
        self.notify(f"Redone: back at turn {self.current.turn_count}.")

    async def action_regenerate(self) -> None:
        if self.current is None or self.refused(self.controller.regenerate, self.current.id):
            return
        await self.render_events()
        await self.render_transcript()  # without the rewound answer

    async def action_edit(self) -> None:
        """Rewind to the chosen (or last) message and put its text in the input, to edit and send."""
        if self.current is None:
            return
        turn = self.chosen_turn or self.current.turn_count
        query = self.tried(self.controller.edit, self.current.id, turn)
        if query is None:
            return
        await self.render_events()
        await self.render_transcript()
        prompt = self.query_one("#prompt", PromptInput)
        prompt.value = self.edited = PromptInput.input_text(query)
        self.focus_prompt()
        self.notify(f"Editing turn {turn}: send it to answer it anew (ctrl+r puts the turns back).")

    def action_search(self) -> None:
        async def chosen(hit: SearchHit | None) -> None:
            self.focus_prompt()
            if hit is not None:
                await self.open_at(hit.conversation_id, hit.turn)

        self.push_screen(SearchScreen(self.search_messages), chosen)

    def search_messages(self, text: str) -> list[SearchHit]:
        """The search screen's results (a refused search shows none, and says why)."""
        try:
            return self.controller.search(text)
        except ActionRefused as refusal:
            self.notify(refusal.message, severity=refusal.severity)
            return []

    async def open_at(self, conversation_id: str, turn: int) -> None:
        """Show a conversation scrolled to ``turn``, its messages marked as chosen."""
        if not self.is_current(conversation_id):
            await self.switch_to(conversation_id)
        views = [view for view in self.query(MessageView) if view.turn == turn]
        if not views:
            self.notify(f"Turn {turn} is not shown (only the last {SHOWN_TURNS} turns are); ctrl+s exports all.")
            return
        self.message_chosen(MessageView.Chosen(turn))
        transcript = self.query_one("#transcript", VerticalScroll)
        transcript.anchor(False)
        self.call_after_refresh(transcript.scroll_to_widget, views[0], animate=False, top=True)

    def action_conversation_settings(self) -> None:
        if self.current is None:
            return
        conversation = self.current

        async def chosen(settings: ConversationSettings | None) -> None:
            self.focus_prompt()
            changed = (
                None if settings is None else self.tried(self.controller.change_settings, conversation.id, settings)
            )
            if changed is None:
                return
            if changed.id != conversation.id:
                await self.switch_to(changed.id)
                self.notify("The new system prompt is in the memory of this new conversation.")
            else:
                self.notify("Settings saved.")
            await self.render_events()

        settings = self.controller.settings_of(conversation.id)
        defaults = self.sampling_defaults
        self.push_screen(SettingsScreen(conversation.title, settings, defaults, conversation.turn_count), chosen)

    def action_fork(self) -> None:
        if self.current is None:
            return
        source = self.current

        async def chosen(value: str | None) -> None:
            self.focus_prompt()
            fork = None if value is None else self.tried(self.controller.fork, source.id, int(value))
            if fork is None:
                return
            await self.switch_to(fork.id)
            self.notify(f"Forked at turn {value}: “{fork.title}”.")

        proposed = source.turn_count if self.chosen_turn is None else self.chosen_turn
        self.push_screen(ForkScreen(source, proposed), chosen)

    def action_copy_answer(self) -> None:
        answer = self.controller.last_answer(self.current.id) if self.current else None
        if answer is None:
            self.notify("No answer to copy yet.")
            return
        self.copy_to_clipboard(answer)
        self.notify(f"Copied the last answer ({len(answer)} characters).")

    def action_export(self) -> None:
        if self.current is None:
            return
        conversation = self.current
        default = default_export_path(self.controller.storage.data_dir / "exports", conversation)

        def written(value: str | None) -> None:
            if value:
                self.export_to(conversation.id, Path(value).expanduser())

        self.push_screen(TextPromptScreen("Export to Markdown file", str(default)), written)

    def export_to(self, conversation_id: str, path: Path) -> Path:
        """Write a conversation's Markdown to ``path`` and notify where it went."""
        storage = self.controller.storage
        markdown = conversation_markdown(storage.conversation(conversation_id), storage.messages(conversation_id))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(markdown)
        except OSError as error:
            self.notify(f"Export failed: {error}", severity="error")
            return path
        self.notify(f"Exported to {path}")
        return path

    def action_toggle_memory(self) -> None:
        panel = self.query_one(MemoryPanel)
        panel.display = not panel.display
        self.update_chrome()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        sidebar.display = not sidebar.display

    def action_stop(self) -> None:
        self.controller.stop()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_help()))

    def key_help(self) -> list[tuple[str, str]]:
        """(key, description) for every binding, plus the built-in ones."""
        rows = [(binding.key, self.ACTION_HELP[binding.action][1]) for binding in self.BINDINGS]
        rows += [
            ("enter", "Send the message"),
            ("ctrl+j", "A new line in the message (a pasted text keeps its lines)"),
            ("tab / shift+tab", "Move focus (conversation list, input)"),
            ("up / down, enter", "In the list: choose a conversation"),
            ("click a message", "Propose its turn in the fork dialog"),
            ("ctrl+p", "Command palette (every action)"),
            ("ctrl+q", "Quit (waits for a running memory update; twice to force)"),
        ]
        return rows

    async def action_quit(self) -> None:
        if self.controller.quitting or self.controller.wind_down():
            self.shut_down()
            return
        self.update_chrome()

    def shut_down(self) -> None:
        """exit(), remembering that late worker events must not touch the torn-down screen; deletions
        are made final."""
        self.purge_deleted()
        self.closing = True
        self.exit()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for binding in self.BINDINGS:
            title, description = self.ACTION_HELP[binding.action]
            yield SystemCommand(title, f"{description} ({binding.key})", getattr(self, f"action_{binding.action}"))
        for conversation in self.controller.storage.conversations():
            if not self.is_current(conversation.id):
                yield SystemCommand(
                    f"Switch to: {conversation.title}",
                    f"{conversation.turn_count} turns",
                    lambda conversation_id=conversation.id: self.switch_to(conversation_id),
                    discover=False,
                )


def run_app(model_dir: str | Path, data_dir: str | Path | None = None, sampling: dict | None = None) -> None:
    """Load the model (raising ModelLoadError with the reason if it cannot be), then run the chat.

    Args:
        model_dir: an MLX model folder.
        data_dir: where conversations and memory snapshots are kept (default: the user data dir).
        sampling: keyword arguments for ``Session.interact``.
    """
    storage = Storage(data_dir if data_dir is not None else default_data_dir())
    app: ChatApp | None = None
    worker = InferenceWorker(model_dir, lambda event: app.post_worker_event(event) if app else None, sampling)
    try:
        worker.start()
        app = ChatApp(worker, storage)
        app.run()
    finally:
        if app is not None:
            app.purge_deleted()
            app.controller.settings.close()
        worker.shutdown()
        storage.close()


__all__ = ["ChatApp", "ModelLoadError", "run_app"]
