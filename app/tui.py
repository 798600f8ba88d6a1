"""The Textual chat (``rxt-chat``): conversations with a persistent, rewindable, forkable STM.

Every conversation's memory is a file per turn, so switching, resuming after a restart, rewinding
and forking cost one file read, never a replay of the history. All MLX work happens on the
:class:`~rxt_app.worker.InferenceWorker` thread; this module only reacts to its events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs
from rxt_app.export import conversation_markdown, default_export_path
from rxt_app.screens import ConfirmScreen, HelpScreen, TextPromptScreen
from rxt_app.storage import Conversation, Storage, StorageError, TurnStats
from rxt_app.styles import CHAT_CSS
from rxt_app.widgets import ConversationItem, MemoryPanel, MessageView, StatusFigures, StatusLine
from rxt_app.worker import (
    AnswerFinished,
    InferenceWorker,
    JobFailed,
    ModelLoadError,
    SessionReady,
    SnapshotProblem,
    TokenText,
    TurnSaved,
    TurnStarted,
    WorkerEvent,
)
from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message as TextualMessage
from textual.screen import Screen
from textual.widgets import Footer, Input, ListView, Static

import rxt_mlx

NEW_TITLE = "New conversation"
TITLE_LENGTH = 40
SHOWN_TURNS = 50
"""The transcript shows the last SHOWN_TURNS turns; the memory holds them all anyway."""


def default_data_dir() -> Path:
    """Where conversations live unless ``--data-dir`` says otherwise."""
    return Path(platformdirs.user_data_dir("rxt-mlx"))


class WorkerMessage(TextualMessage):
    """Carries a worker event onto the UI thread."""

    def __init__(self, event: WorkerEvent):
        super().__init__()
        self.event = event


@dataclass
class LiveTurn:
    """A turn sent but not yet committed: ``phase`` is queued, generating, updating."""

    conversation_id: str
    turn: int
    query: str
    answer: str = ""
    phase: str = "queued"
    stopped: bool = False


@dataclass
class ConversationState:
    """What the UI knows about a conversation beyond its stored row."""

    ready: bool = False
    problem: str | None = None
    last_good_turn: int | None = None
    read_only_reason: str | None = None
    live: dict[int, LiveTurn] = field(default_factory=dict)


class ChatApp(App[None]):
    """rxt-chat. ``worker`` must be started (model loaded); ``storage`` is the opened data dir."""

    CSS = CHAT_CSS
    TITLE = "rxt-chat"
    BINDINGS = [
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("f2", "rename", "Rename"),
        Binding("f8", "delete", "Delete"),
        Binding("ctrl+z", "rewind", "Rewind"),
        Binding("ctrl+f", "fork", "Fork"),
        Binding("ctrl+y", "copy_answer", "Copy answer"),
        Binding("ctrl+s", "export", "Export"),
        Binding("ctrl+t", "toggle_memory", "Memory panel"),
        Binding("ctrl+b", "toggle_sidebar", "Conversations", show=False),
        Binding("escape", "stop", "Stop", show=False),
        Binding("f1", "help", "Help"),
    ]
    ACTION_HELP = {
        "new_conversation": ("New conversation", "Start a conversation with a fresh memory"),
        "rename": ("Rename conversation", "Give the conversation a new title"),
        "delete": ("Delete conversation", "Delete the conversation and its memory (asks first)"),
        "rewind": ("Rewind", "Undo the last turn: transcript and memory go back one turn"),
        "fork": ("Fork conversation", "A new conversation from an earlier turn, with that turn's memory"),
        "copy_answer": ("Copy last answer", "Copy the last answer to the clipboard"),
        "export": ("Export to Markdown", "Write the conversation to a Markdown file"),
        "toggle_memory": ("Toggle memory panel", "Show/hide how much each STM layer changed"),
        "toggle_sidebar": ("Toggle conversation list", "Show/hide the conversation list"),
        "stop": ("Stop generating", "Stop the answer; the partial answer is kept and memorized"),
        "help": ("Help", "Show the keybindings"),
    }

    def __init__(self, worker: InferenceWorker, storage: Storage):
        super().__init__()
        self.worker = worker
        self.storage = storage
        self.states: dict[str, ConversationState] = {}
        self.current: Conversation | None = None
        self.quitting = False
        self.closing = False  # exit() called: the screen may be torn down under late worker events
        self.chosen_turn: int | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            with Vertical(id="sidebar"):
                yield Static("Conversations", classes="heading")
                yield ListView(id="conversations")
            with Vertical(id="main"):
                yield Static("", id="notice", markup=False)
                yield VerticalScroll(id="transcript")
                yield Input(placeholder="Message RxT… (Enter sends, Esc stops, F1 help)", id="prompt")
            yield MemoryPanel("", id="memory", markup=False)
        yield StatusLine("", id="status", markup=False)
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#memory").display = False
        conversations = self.storage.conversations()
        if not conversations:
            conversations = [self.storage.create_conversation(NEW_TITLE, self.worker.fingerprint)]
        await self.refresh_list()
        await self.switch_to(conversations[0].id)
        self.query_one("#prompt", Input).focus()

    # ----- worker bridge

    def post_worker_event(self, event: WorkerEvent) -> None:
        """Thread-safe: hand a worker event to the UI thread."""
        self.post_message(WorkerMessage(event))

    def state(self, conversation_id: str) -> ConversationState:
        """The UI state of a conversation (created on first use)."""
        return self.states.setdefault(conversation_id, ConversationState())

    def foreign_reason(self, conversation: Conversation) -> str | None:
        """Why a conversation cannot be continued with this model, or None if it can."""
        if conversation.model_fingerprint == self.worker.fingerprint:
            return None
        return (
            f"Read-only: this conversation was made with another model (fingerprint "
            f"{conversation.model_fingerprint[:12]}…, the loaded model is {self.worker.fingerprint[:12]}…). "
            "Its memory is not loaded into this model."
        )

    def open_in_worker(self, conversation: Conversation) -> None:
        """Ask the worker to load a conversation's memory at its committed turn."""
        state = self.state(conversation.id)
        state.ready = False
        state.problem = None
        snapshots = [self.storage.snapshot_path(conversation.id, t) for t in range(1, conversation.turn_count + 1)]
        self.worker.open(conversation.id, conversation.turn_count, snapshots)

    # ----- rendering

    async def refresh_list(self) -> None:
        """Rebuild the side list, keeping the current conversation highlighted."""
        conversations = self.storage.conversations()
        view = self.query_one("#conversations", ListView)
        await view.clear()
        items = [ConversationItem(c, self.foreign_reason(c) is not None) for c in conversations]
        await view.extend(items)
        self.highlight_current()

    def highlight_current(self) -> None:
        """Move the side list's cursor to the current conversation."""
        view = self.query_one("#conversations", ListView)
        for index, item in enumerate(view.children):
            if isinstance(item, ConversationItem) and self.current and item.conversation.id == self.current.id:
                view.index = index

    async def switch_to(self, conversation_id: str) -> None:
        """Show a conversation; load its memory in the worker unless it is read-only or loaded."""
        conversation = self.storage.conversation(conversation_id)
        self.current = conversation
        state = self.state(conversation_id)
        state.read_only_reason = self.foreign_reason(conversation)
        if state.read_only_reason is None and not state.ready and not state.live and state.problem is None:
            self.open_in_worker(conversation)
        await self.render_transcript()
        self.highlight_current()
        self.update_chrome()

    async def render_transcript(self) -> None:
        """Rebuild the transcript of the current conversation: committed turns, then live ones."""
        self.chosen_turn = None
        transcript = self.query_one("#transcript", VerticalScroll)
        await transcript.remove_children()
        if self.current is None:
            return
        messages = self.storage.messages(self.current.id)
        views: list[Static | MessageView] = []
        if len(messages) > 2 * SHOWN_TURNS:
            hidden = messages[-2 * SHOWN_TURNS].turn - 1
            views.append(Static(f"… {hidden} earlier turns not shown (ctrl+s exports them all)", classes="elided"))
            messages = messages[-2 * SHOWN_TURNS :]
        for message in messages:
            stopped = message.stats is not None and message.stats.stopped
            views.append(MessageView(message.role, message.turn, message.text, "stopped" if stopped else ""))
        for live in sorted(self.state(self.current.id).live.values(), key=lambda t: t.turn):
            views.append(MessageView("user", live.turn, live.query))
            views.append(MessageView("assistant", live.turn, live.answer, "stopped" if live.stopped else ""))
        await transcript.mount_all(views)
        transcript.scroll_end(animate=False)

    def answer_view(self, conversation_id: str, turn: int) -> MessageView | None:
        """The on-screen answer of a turn, if the conversation is shown."""
        if self.current is None or self.current.id != conversation_id:
            return None
        for view in self.query(MessageView):
            if view.role == "assistant" and view.turn == turn:
                return view
        return None

    def memory_state(self) -> str:
        """The current conversation's memory: updating, waiting, ready, or why it is unusable."""
        if self.current is None:
            return "-"
        state = self.state(self.current.id)
        if state.read_only_reason:
            return "read-only (other model)"
        if state.problem:
            return "snapshot unusable"
        phases = {live.phase for live in state.live.values()}
        if "updating" in phases and "queued" in phases:
            return "updating (your message waits for it)"
        if "updating" in phases:
            return "updating"
        if not state.ready:
            return "loading"
        return "ready"

    def activity(self) -> str:
        """Generation / queue activity across conversations, for the status line."""
        lives = [live for state in self.states.values() for live in state.live.values()]
        if any(live.phase == "generating" for live in lives):
            return "generating (Esc stops)"
        if any(live.phase == "queued" for live in lives):
            return "waiting for memory update"
        if self.quitting:
            return "saving memory before quitting"
        return ""

    def turn_stats(self) -> list[TurnStats]:
        """The figures of every committed turn of the current conversation."""
        if self.current is None:
            return []
        return [m.stats for m in self.storage.messages(self.current.id) if m.stats is not None]

    def update_chrome(self) -> None:
        """Refresh the notice banner, input state, status line and memory panel."""
        if self.closing:
            return
        notice = self.query_one("#notice", Static)
        prompt = self.query_one("#prompt", Input)
        state = self.state(self.current.id) if self.current else ConversationState()
        message = state.read_only_reason
        if state.problem:
            message = (
                f"The memory snapshot of this conversation cannot be used: {state.problem}\n"
                f"Press ctrl+z to rewind to turn {state.last_good_turn}, the last turn with a good snapshot."
            )
        notice.update(message or "")
        notice.display = bool(message)
        was_disabled = prompt.disabled
        prompt.disabled = bool(state.read_only_reason or state.problem)
        if was_disabled and not prompt.disabled and self.screen is self.screen_stack[0]:
            prompt.focus()
        stats = self.turn_stats()
        figures = StatusFigures(
            model=self.worker.model_dir.name,
            turn=self.current.turn_count if self.current else 0,
            memory=self.memory_state(),
            stats=stats[-1] if stats else None,
            activity=self.activity(),
        )
        self.query_one(StatusLine).show(figures)
        panel = self.query_one(MemoryPanel)
        if panel.display:
            panel.show([turn.memory_change for turn in stats], figures.memory)

    # ----- input

    @on(Input.Submitted, "#prompt")
    async def send(self, event: Input.Submitted) -> None:
        """Send the typed query as the next turn of the current conversation."""
        query = event.value.strip()
        if not query or self.current is None:
            return
        state = self.state(self.current.id)
        if state.read_only_reason or state.problem:
            self.notify(state.read_only_reason or state.problem or "", severity="warning")
            return
        if any(live.phase in ("queued", "generating") for live in state.live.values()):
            self.notify("The previous answer is still coming; press Esc to stop it.", severity="warning")
            return
        event.input.value = ""
        turn = self.current.turn_count + len(state.live) + 1
        state.live[turn] = LiveTurn(self.current.id, turn, query)
        if self.current.title == NEW_TITLE and turn == 1:
            self.current = self.storage.rename(self.current.id, query[:TITLE_LENGTH])
            await self.refresh_list()
        self.worker.send(self.current.id, turn, query, self.storage.snapshot_path(self.current.id, turn))
        transcript = self.query_one("#transcript", VerticalScroll)
        await transcript.mount_all([MessageView("user", turn, query), MessageView("assistant", turn, "")])
        transcript.scroll_end(animate=False)
        self.update_chrome()

    @on(ListView.Selected, "#conversations")
    async def conversation_selected(self, event: ListView.Selected) -> None:
        item = event.item
        if isinstance(item, ConversationItem) and (self.current is None or item.conversation.id != self.current.id):
            await self.switch_to(item.conversation.id)

    # ----- worker events

    async def on_worker_message(self, message: WorkerMessage) -> None:
        event = message.event
        handler = {
            SessionReady: self.session_ready,
            SnapshotProblem: self.snapshot_problem,
            TurnStarted: self.turn_started,
            TokenText: self.token_text,
            AnswerFinished: self.answer_finished,
            TurnSaved: self.turn_saved,
            JobFailed: self.job_failed,
        }[type(event)]
        await handler(event)
        if not isinstance(event, TokenText):
            self.update_chrome()
        if self.quitting and not self.has_live_turns():
            self.shut_down()

    def shut_down(self) -> None:
        """exit(), remembering that late worker events must not touch the torn-down screen."""
        self.closing = True
        self.exit()

    def has_live_turns(self) -> bool:
        """Whether any turn is queued, generating or updating memory."""
        return any(state.live for state in self.states.values())

    async def session_ready(self, event: SessionReady) -> None:
        state = self.state(event.conversation_id)
        state.ready = True
        state.problem = None

    async def snapshot_problem(self, event: SnapshotProblem) -> None:
        state = self.state(event.conversation_id)
        state.ready = False
        state.problem = event.reason
        state.last_good_turn = event.last_good_turn

    async def turn_started(self, event: TurnStarted) -> None:
        live = self.state(event.conversation_id).live.get(event.turn)
        if live is not None:
            live.phase = "generating"

    async def token_text(self, event: TokenText) -> None:
        live = self.state(event.conversation_id).live.get(event.turn)
        if live is None:
            return
        live.answer += event.text
        view = self.answer_view(event.conversation_id, event.turn)
        if view is not None:
            await view.append(event.text)
            self.query_one("#transcript", VerticalScroll).scroll_end(animate=False)

    async def answer_finished(self, event: AnswerFinished) -> None:
        live = self.state(event.conversation_id).live.get(event.turn)
        if live is None:
            return
        live.phase = "updating"
        live.stopped = event.stopped
        view = self.answer_view(event.conversation_id, event.turn)
        if view is not None:
            await view.finish(event.text, "stopped" if event.stopped else "")
        live.answer = event.text

    async def turn_saved(self, event: TurnSaved) -> None:
        state = self.state(event.conversation_id)
        state.live.pop(event.turn, None)
        try:
            conversation = self.storage.commit_turn(
                event.conversation_id, event.turn, event.query, event.answer, event.stats
            )
        except StorageError as error:
            event.snapshot.unlink(missing_ok=True)
            self.notify(f"turn {event.turn} was not saved: {error}", severity="error")
            self.resync(event.conversation_id)
            return
        if self.current is not None and self.current.id == event.conversation_id:
            self.current = conversation
        await self.refresh_list()

    async def job_failed(self, event: JobFailed) -> None:
        if event.conversation_id is not None and event.turn is not None:
            live = self.state(event.conversation_id).live.pop(event.turn, None)
            if live is not None:
                self.resync(event.conversation_id)
            if live is not None and self.current is not None and self.current.id == event.conversation_id:
                await self.render_transcript()
                prompt = self.query_one("#prompt", Input)
                if not prompt.value:
                    prompt.value = live.query
        self.log.error(event.details)
        self.notify(event.message, title="Inference error", severity="error", timeout=10)

    def resync(self, conversation_id: str) -> None:
        """After a failed turn, reload the worker's memory from the last committed snapshot.

        The worker's Session may hold an STM that was never committed; reloading keeps every
        next turn on the stored memory. Waits while other turns of the conversation are in flight.
        """
        if self.state(conversation_id).live:
            return
        try:
            conversation = self.storage.conversation(conversation_id)
        except StorageError:
            return
        if self.foreign_reason(conversation) is None:
            self.open_in_worker(conversation)

    # ----- actions

    def busy(self) -> bool:
        """Whether the current conversation has turns in flight (then it cannot be changed); notifies."""
        if self.current is not None and self.state(self.current.id).live:
            self.notify("Wait until the answer and its memory update are finished.", severity="warning")
            return True
        return False

    async def action_new_conversation(self) -> None:
        conversation = self.storage.create_conversation(NEW_TITLE, self.worker.fingerprint)
        self.current = conversation
        await self.refresh_list()
        await self.switch_to(conversation.id)
        self.query_one("#prompt", Input).focus()

    def action_rename(self) -> None:
        if self.current is None:
            return
        conversation_id = self.current.id

        async def renamed(title: str | None) -> None:
            if title:
                self.current = self.storage.rename(conversation_id, title)
                await self.refresh_list()

        self.push_screen(TextPromptScreen("Rename the conversation", self.current.title), renamed)

    def action_delete(self) -> None:
        if self.current is None or self.busy():
            return
        conversation = self.current

        async def confirmed(yes: bool | None) -> None:
            if yes:
                await self.delete_conversation(conversation.id)

        self.push_screen(ConfirmScreen(f"Delete “{conversation.title}” and its memory?", "Delete"), confirmed)

    async def delete_conversation(self, conversation_id: str) -> None:
        """Delete a conversation and show the next one (a new one if none is left)."""
        self.storage.delete(conversation_id)
        self.worker.forget(conversation_id)
        self.states.pop(conversation_id, None)
        self.current = None
        remaining = self.storage.conversations()
        if not remaining:
            remaining = [self.storage.create_conversation(NEW_TITLE, self.worker.fingerprint)]
        await self.switch_to(remaining[0].id)
        await self.refresh_list()
        self.notify("Conversation deleted.")

    async def action_rewind(self) -> None:
        if self.current is None or self.busy():
            return
        state = self.state(self.current.id)
        if state.read_only_reason:
            self.notify(state.read_only_reason, severity="warning")
            return
        if state.problem is not None and state.last_good_turn is not None:
            target = state.last_good_turn
        elif self.current.turn_count == 0:
            self.notify("Nothing to rewind: the conversation has no turns.")
            return
        else:
            target = self.current.turn_count - 1
        await self.rewind_to(target)

    async def rewind_to(self, turn: int) -> None:
        """Drop the current conversation's turns after ``turn`` and reload its memory at ``turn``."""
        assert self.current is not None
        self.current = self.storage.rewind_to(self.current.id, turn)
        state = self.state(self.current.id)
        state.last_good_turn = None
        self.open_in_worker(self.current)
        await self.render_transcript()
        await self.refresh_list()
        self.notify(f"Rewound to turn {turn}.")

    def action_fork(self) -> None:
        if self.current is None:
            return
        source = self.current

        def check(value: str) -> str | None:
            if not value.isdigit() or not 0 <= int(value) <= source.turn_count:
                return f"type a turn number from 0 to {source.turn_count}"
            return None

        async def chosen(value: str | None) -> None:
            if value is not None:
                await self.fork_at(source.id, int(value))

        prompt = f"Fork “{source.title}” at which turn? (0 = empty memory, {source.turn_count} = now)"
        proposed = source.turn_count if self.chosen_turn is None else min(self.chosen_turn, source.turn_count)
        self.push_screen(TextPromptScreen(prompt, str(proposed), check), chosen)

    @on(MessageView.Chosen)
    def message_chosen(self, event: MessageView.Chosen) -> None:
        """Remember the clicked turn for the fork dialog and mark its messages."""
        self.chosen_turn = event.turn
        for view in self.query(MessageView):
            view.set_class(view.turn == event.turn, "chosen")

    async def fork_at(self, conversation_id: str, turn: int) -> None:
        """Create and show a conversation continuing ``conversation_id`` from ``turn``."""
        try:
            fork = self.storage.fork(conversation_id, turn)
        except StorageError as error:
            self.notify(str(error), severity="error")
            return
        self.current = fork
        await self.refresh_list()
        await self.switch_to(fork.id)
        self.notify(f"Forked at turn {turn}: “{fork.title}”.")

    def last_answer(self) -> str | None:
        """The latest answer of the current conversation (a live one included)."""
        if self.current is None:
            return None
        live = sorted(self.state(self.current.id).live.values(), key=lambda t: t.turn)
        if live and live[-1].answer:
            return live[-1].answer
        answers = [m.text for m in self.storage.messages(self.current.id) if m.role == "assistant"]
        return answers[-1] if answers else None

    def action_copy_answer(self) -> None:
        answer = self.last_answer()
        if answer is None:
            self.notify("No answer to copy yet.")
            return
        self.copy_to_clipboard(answer)
        self.notify(f"Copied the last answer ({len(answer)} characters).")

    def action_export(self) -> None:
        if self.current is None:
            return
        conversation = self.current
        default = default_export_path(self.storage.data_dir / "exports", conversation)

        def written(value: str | None) -> None:
            if value:
                self.export_to(conversation.id, Path(value).expanduser())

        self.push_screen(TextPromptScreen("Export to Markdown file", str(default)), written)

    def export_to(self, conversation_id: str, path: Path) -> Path:
        """Write a conversation's Markdown to ``path`` and notify where it went."""
        conversation = self.storage.conversation(conversation_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(conversation_markdown(conversation, self.storage.messages(conversation_id)))
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
        self.worker.stop()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_help()))

    def key_help(self) -> list[tuple[str, str]]:
        """(key, description) for every binding, plus the built-in ones."""
        rows = [(binding.key, self.ACTION_HELP[binding.action][1]) for binding in self.BINDINGS]
        rows += [
            ("enter", "Send the message"),
            ("tab / shift+tab", "Move focus (conversation list, input)"),
            ("up / down, enter", "In the list: choose a conversation"),
            ("click a message", "Propose its turn in the fork dialog"),
            ("ctrl+p", "Command palette (every action)"),
            ("ctrl+q", "Quit (waits for a running memory update; twice to force)"),
        ]
        return rows

    async def action_quit(self) -> None:
        if self.quitting or not self.has_live_turns():
            self.shut_down()
            return
        self.quitting = True
        for conversation_id, turns in self.worker.drop_queued().items():
            for turn in turns:
                self.state(conversation_id).live.pop(turn, None)
        self.worker.stop()
        self.update_chrome()
        if not self.has_live_turns():
            self.shut_down()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for binding in self.BINDINGS:
            title, description = self.ACTION_HELP[binding.action]
            yield SystemCommand(title, f"{description} ({binding.key})", getattr(self, f"action_{binding.action}"))
        for conversation in self.storage.conversations():
            if self.current is None or conversation.id != self.current.id:
                yield SystemCommand(
                    f"Switch to: {conversation.title}",
                    f"{conversation.turn_count} turns",
                    lambda conversation_id=conversation.id: self.switch_to(conversation_id),
                    discover=False,
                )


def run_app(model_dir: str | Path | None, data_dir: str | Path | None = None, sampling: dict | None = None) -> None:
    """Load the model (raising ModelLoadError with the reason if it cannot be), then run the chat.

    Args:
        model_dir: an MLX model folder (None: the bundled demo model).
        data_dir: where conversations and memory snapshots are kept (default: the user data dir).
        sampling: keyword arguments for ``Session.interact``.
    """
    if model_dir is None:
        model_dir = Path(rxt_mlx.__file__).parent / "demo"
    storage = Storage(data_dir if data_dir is not None else default_data_dir())
    app: ChatApp | None = None
    worker = InferenceWorker(model_dir, lambda event: app.post_worker_event(event) if app else None, sampling)
    try:
        worker.start()
        app = ChatApp(worker, storage)
        app.run()
    finally:
        worker.shutdown()
        storage.close()


__all__ = ["ChatApp", "ModelLoadError", "run_app", "default_data_dir"]
