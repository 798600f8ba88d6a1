"""The Textual chat on a scripted stand-in for the inference worker: what is shown, and the keys.

The stand-in lets a test decide exactly when tokens, the end of the answer and the memory
update arrive, so ordering cases (a message typed while the memory update still runs, quitting
mid-update) are deterministic. The controller's decisions are tested without Textual in
tests/test_controller.py; tests/test_app.py runs the app once on a real tiny model.
"""

from __future__ import annotations

from rich.cells import cell_len
from rxt_app.storage import Storage, TurnStats
from rxt_app.tui import SHOWN_TURNS, ChatApp
from rxt_app.widgets import MessageView, StatusLine, bar, format_memory_panel, sparkline
from rxt_app.worker import JobFailed, TokenText, TurnStarted
from textual import events

from tests.app_helpers import FINGERPRINT, ScriptedWorker, wait_until


def make_app(tmp_path, worker=None):
    worker = worker or ScriptedWorker()
    app = ChatApp(worker, Storage(tmp_path / "data"))
    worker.deliver = app.post_worker_event
    return app, worker


def ready(app) -> bool:
    return app.current is not None and app.controller.state(app.current.id).ready


def memory_state(app) -> str:
    return app.controller.memory_state(app.current.id)


def transcript(app) -> list[tuple[str, int, str]]:
    return [(view.role, view.turn, view.text) for view in app.query(MessageView)]


def notifications(app) -> list[str]:
    """The text of the notifications on screen (``run_test(notifications=True)`` shows them)."""
    return [str(toast.render()) for toast in app.screen.query("Toast")]


def screen_name(app) -> str:
    return type(app.screen).__name__


async def type_and_send(pilot, text: str) -> None:
    pilot.app.query_one("#prompt").value = text
    await pilot.press("enter")


def stored_conversation(tmp_path, turns: int, answer: str = "a", title: str = "stored") -> str:
    """A stored conversation of ``turns`` turns (query ``q{turn}``, answer ``{answer}{turn}``); returns its id."""
    storage = Storage(tmp_path / "data")
    conversation = storage.create_conversation(title, FINGERPRINT)
    for turn in range(1, turns + 1):
        path = storage.snapshot_path(conversation.id, turn)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"stm")
        storage.commit_turn(conversation.id, turn, f"q{turn}", f"{answer}{turn}", TurnStats(1, 0.0, 0.0, 0.0, 0.0))
    storage.close()
    return conversation.id


async def two_conversations(pilot, worker) -> str:
    """One answered turn, then ctrl+n: the app shows a new conversation; returns the first one's id."""
    app = pilot.app
    await wait_until(pilot, lambda: ready(app))
    await answered_turns(pilot, worker, ["first chat"])
    first = app.current.id
    await pilot.press("ctrl+n")
    await wait_until(pilot, lambda: app.current.id != first and ready(app))
    return first


async def test_stream_update_and_queue_behind_memory_update(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        await type_and_send(pilot, "hello there")
        await wait_until(pilot, lambda: len(worker.sent) == 1)
        worker.answer(0, ["Hi", " *Ann*"])
        await wait_until(pilot, lambda: memory_state(app) == "updating")
        assert transcript(app)[-1] == ("assistant", 1, "Hi *Ann*")
        assert app.current.title == "hello there"
        # typed before the memory update finished: queued behind it
        await type_and_send(pilot, "second")
        await wait_until(pilot, lambda: len(worker.sent) == 2)
        assert "your message waits" in memory_state(app)
        assert "waiting for memory update" in str(app.query_one(StatusLine).render())
        worker.save(0, "Hi *Ann*")
        await wait_until(pilot, lambda: app.current.turn_count == 1)
        assert worker.sent[1][1] == 2
        worker.answer(1, ["ok"])
        worker.save(1, "ok")
        await wait_until(pilot, lambda: app.current.turn_count == 2)
        status = str(app.query_one(StatusLine).render())
        assert "TTFT 20 ms" in status and "50.0 tok/s" in status and "mem update 30 ms" in status
        assert "memory: ready" in status


def test_memory_panel_text():
    assert bar(1.0, 2.0, width=4) == "██··"
    assert sparkline([0.0, 1.0]) == "▁█"
    text = format_memory_panel([(0.2, 0.4)], "ready")
    assert "L0  ████████········ 0.200" in text and "L1  ████████████████ 0.400" in text


async def answered_turns(pilot, worker, queries: list[str]) -> None:
    app = pilot.app
    for query in queries:
        index = len(worker.sent)
        await type_and_send(pilot, query)
        await wait_until(pilot, lambda index=index: len(worker.sent) == index + 1)
        worker.answer(index, [f"answer to {query}"])
        worker.save(index, f"answer to {query}", change=(0.1 * (index + 1), 0.2))
        await wait_until(pilot, lambda index=index: app.current.turn_count == index + 1)


async def test_rewind_fork_delete(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        await answered_turns(pilot, worker, ["one", "two", "three"])
        source = app.current
        assert [t for _, t, _ in transcript(app)] == [1, 1, 2, 2, 3, 3]

        await pilot.press("ctrl+z")
        await wait_until(pilot, lambda: app.current.turn_count == 2 and len(transcript(app)) == 4)
        assert worker.opened[-1] == (source.id, 2)
        assert worker.sent[2][3].exists()  # its memory is kept for redo (ctrl+r) until a message is sent

        first_answer = [view for view in app.query(MessageView) if view.turn == 1][1]
        await pilot.click(first_answer)
        await wait_until(pilot, lambda: app.chosen_turn == 1)
        await pilot.press("ctrl+f")
        await wait_until(pilot, lambda: screen_name(app) == "ForkScreen")
        assert app.screen.query_one("#answer").value == "1"
        app.screen.query_one("#answer").value = "9"
        await pilot.press("enter")
        await wait_until(pilot, lambda: "0 to 2" in str(app.screen.query_one("#error").render()))
        app.screen.query_one("#answer").value = "1"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.current.id != source.id)
        fork = app.current
        assert fork.forked_from == source.id and fork.turn_count == 1
        assert transcript(app) == [("user", 1, "one"), ("assistant", 1, "answer to one")]
        assert worker.opened[-1] == (fork.id, 1)

        await pilot.press("f8")
        await wait_until(pilot, lambda: screen_name(app) == "ConfirmScreen")
        await pilot.press("escape")
        await wait_until(pilot, lambda: screen_name(app) != "ConfirmScreen")
        assert app.controller.storage.conversation(fork.id).turn_count == 1
        await pilot.press("f8")
        await wait_until(pilot, lambda: screen_name(app) == "ConfirmScreen")
        await pilot.click("#confirm")
        await wait_until(pilot, lambda: app.current.id == source.id)
        assert [c.id for c in app.controller.storage.conversations()] == [source.id]
        assert worker.forgotten == [fork.id]


async def test_foreign_model_is_read_only(tmp_path):
    storage = Storage(tmp_path / "data")
    foreign = storage.create_conversation("old chat", "0" * 64)
    storage.close()
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.current is not None)
        assert app.current.id == foreign.id
        assert worker.opened == []
        notice = str(app.query_one("#notice").render())
        assert "another model" in notice and "000000000000" in notice
        assert app.query_one("#prompt").disabled
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: app.current.id != foreign.id and ready(app))
        assert not app.query_one("#prompt").disabled


async def test_corrupt_snapshot_offers_rewind(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        await answered_turns(pilot, worker, ["one", "two"])
        conversation_id = app.current.id
    worker = ScriptedWorker()
    worker.problem = "turn 2 snapshot: STM bytes do not match their checksum (the file is corrupt)"
    app, worker = make_app(tmp_path, worker)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.controller.state(conversation_id).problem is not None)
        notice = str(app.query_one("#notice").render())
        assert "checksum" in notice and "rewind to turn 1" in notice
        assert app.query_one("#prompt").disabled
        worker.problem = None
        await pilot.press("ctrl+z")
        await wait_until(pilot, lambda: app.current.turn_count == 1 and app.controller.state(conversation_id).ready)
        assert not app.query_one("#prompt").disabled
        assert not app.query_one("#notice").display


async def test_copy_export_help_palette_stop(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        await answered_turns(pilot, worker, ["Hi, I'm Ann."])
        await pilot.press("ctrl+y")
        assert app.clipboard == "answer to Hi, I'm Ann."

        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: screen_name(app) == "TextPromptScreen")
        target = tmp_path / "out" / "chat.md"
        app.screen.query_one("#answer").value = str(target)
        await pilot.press("enter")
        await wait_until(pilot, target.exists)
        text = target.read_text()
        assert "## Turn 1" in text and "Hi, I'm Ann." in text and "answer to Hi, I'm Ann." in text

        await pilot.press("f1")
        await wait_until(pilot, lambda: screen_name(app) == "HelpScreen")
        help_text = "\n".join(str(w.render()) for w in app.screen.query("Static"))
        for key in ("ctrl+n", "f2", "f8", "ctrl+z", "ctrl+f", "ctrl+y", "ctrl+s", "ctrl+t", "escape", "ctrl+q"):
            assert key in help_text
        await pilot.press("escape")
        await wait_until(pilot, lambda: screen_name(app) != "HelpScreen")

        titles = [command.title for command in app.get_system_commands(app.screen)]
        for title, _ in ChatApp.ACTION_HELP.values():
            assert title in titles

        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: app.query_one("#memory").display)
        panel = str(app.query_one("#memory").render())
        assert "L0" in panel and "0.100" in panel and "L1" in panel and "0.200" in panel

        await type_and_send(pilot, "tell me more")
        await wait_until(pilot, lambda: len(worker.sent) == 2)
        worker.deliver(TurnStarted(app.current.id, 2))
        worker.deliver(TokenText(app.current.id, 2, "par"))
        await wait_until(pilot, lambda: transcript(app)[-1] == ("assistant", 2, "par"))
        await pilot.press("escape")
        assert worker.stops == 1 and worker.cancelled == []
        worker.answer(1, ["par", "tial"], stopped=True)
        await wait_until(pilot, lambda: memory_state(app) == "updating")
        answer = list(app.query(MessageView))[-1]
        assert (answer.text, answer.role_line()) == ("partial", "RxT · turn 2 · stopped")
        worker.save(1, "partial")
        await wait_until(pilot, lambda: app.current.turn_count == 2)


async def test_quit_waits_for_memory_update(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        await type_and_send(pilot, "remember this")
        await wait_until(pilot, lambda: len(worker.sent) == 1)
        worker.answer(0, ["sure"])
        await wait_until(pilot, lambda: memory_state(app) == "updating")
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.is_running and app.controller.quitting
        worker.save(0, "sure")
        await wait_until(pilot, lambda: not app.is_running)
    storage = Storage(tmp_path / "data")
    assert storage.conversations()[0].turn_count == 1


async def test_rename_and_switch_from_the_list(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        first = await two_conversations(pilot, worker)
        second = app.current.id
        assert transcript(app) == []

        await pilot.press("f2")
        await wait_until(pilot, lambda: screen_name(app) == "TextPromptScreen")
        app.screen.query_one("#answer").value = "Tea talk"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.controller.storage.conversation(second).title == "Tea talk")

        conversations = app.query_one("#conversations")
        conversations.focus()
        await wait_until(pilot, lambda: len(conversations.children) == 2)
        conversations.index = [item.conversation.id for item in conversations.children].index(first)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.current.id == first)
        assert transcript(app) == [("user", 1, "first chat"), ("assistant", 1, "answer to first chat")]
        assert [item.conversation.title for item in conversations.children] == ["Tea talk", "first chat"]


async def test_long_transcript_shows_the_last_turns(tmp_path):
    stored_conversation(tmp_path, SHOWN_TURNS + 5)
    app, _ = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        shown = transcript(app)
        assert len(shown) == 2 * SHOWN_TURNS and shown[0] == ("user", 6, "q6")
        assert "5 earlier turns not shown" in str(app.query_one(".elided").render())


async def test_a_failed_turn_is_reported_and_its_query_given_back(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test(notifications=True) as pilot:
        await wait_until(pilot, lambda: ready(app))
        await type_and_send(pilot, "tea " * 80)
        await wait_until(pilot, lambda: len(worker.sent) == 1 and len(transcript(app)) == 2)
        assert app.query_one("#prompt").value == ""
        worker.answer(0, ["par"])
        worker.deliver(JobFailed(app.current.id, 1, "ValueError: 322 tokens > seq_len 256", "Traceback …"))
        await wait_until(pilot, lambda: any("seq_len" in text for text in notifications(app)), what="the error")
        assert transcript(app) == [] and app.current.turn_count == 0
        assert app.query_one("#prompt").value == ("tea " * 80).strip()  # given back to edit
        assert worker.opened[-1] == (app.current.id, 0)  # memory reloaded from the last commit


def scrolled_to_end(app) -> bool:
    transcript_view = app.query_one("#transcript")
    last = list(app.query(MessageView))[-1]
    return (
        transcript_view.max_scroll_y > 0
        and transcript_view.scroll_y >= transcript_view.max_scroll_y
        and (last.region.bottom <= transcript_view.region.bottom)
    )


async def test_opening_a_conversation_lands_at_the_end(tmp_path):
    paragraphs = "\n\n".join(f"paragraph {n}, long enough to wrap over a narrow transcript column" for n in range(6))
    paragraphs += "\n\nturn "
    stored_conversation(tmp_path, 12, paragraphs)
    app, _ = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: ready(app) and len(transcript(app)) == 24)
        await wait_until(pilot, lambda: scrolled_to_end(app), timeout=5, what="the transcript at its end")
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: app.current.title == "New conversation" and ready(app))
        stored = app.controller.storage.conversations()[-1]
        await app.switch_to(stored.id)
        await wait_until(pilot, lambda: len(transcript(app)) == 24)
        await wait_until(pilot, lambda: scrolled_to_end(app), timeout=5, what="the transcript at its end")


async def test_focus_returns_to_the_input_after_the_list_and_the_fork_dialog(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        first = await two_conversations(pilot, worker)
        await pilot.press("tab")
        await wait_until(pilot, lambda: app.focused is app.query_one("#conversations"))
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: app.current.id == first and ready(app))
        await pilot.press(*"more", "enter")
        await wait_until(pilot, lambda: len(worker.sent) == 2, timeout=5, what="the typed message sent")
        assert worker.sent[1][2] == "more"
        worker.answer(1, ["ok"])
        worker.save(1, "ok")
        await wait_until(pilot, lambda: app.current.turn_count == 2)

        await pilot.click(list(app.query(MessageView))[0])
        await wait_until(pilot, lambda: app.chosen_turn == 1)
        for keys in (["escape"], ["enter"]):
            await pilot.press("ctrl+f")
            await wait_until(pilot, lambda: screen_name(app) == "ForkScreen")
            await pilot.press(*keys)
            await wait_until(pilot, lambda: screen_name(app) != "ForkScreen")
            await wait_until(pilot, lambda: app.focused is app.query_one("#prompt"), timeout=5, what="focus on input")


def type_fast(app, *keys: str) -> None:
    """Queue key presses at once, as a fast typist or a terminal paste does (the pilot waits after each)."""
    for key in keys:
        event = events.Key(key, key if len(key) == 1 else None)
        event.set_sender(app)
        app.post_message(event)


async def test_messages_typed_quickly_are_queued_not_merged(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        type_fast(app, *"My name is Eve.", "enter", *"What is my name?", "enter")
        await wait_until(pilot, lambda: len(transcript(app)) == 3, timeout=10, what="the second message waiting")
        assert [query for _, _, query, _ in worker.sent] == ["My name is Eve."]
        waiting = list(app.query(MessageView))[-1]
        assert (waiting.text, waiting.role_line()) == ("What is my name?", "You · turn 2 · waiting")
        assert app.query_one("#prompt").value == ""
        worker.answer(0, ["Hi Eve."])
        await wait_until(pilot, lambda: len(worker.sent) == 2, what="the waiting message sent")
        assert worker.sent[1][1:3] == (2, "What is my name?")
        assert [(role, turn) for role, turn, _ in transcript(app)] == [
            ("user", 1),
            ("assistant", 1),
            ("user", 2),
            ("assistant", 2),
        ]
        assert "waiting" not in list(app.query(MessageView))[2].role_line()

        app.query_one("#prompt").post_message(events.Paste("line one\n# line two\r\nline three"))
        await wait_until(pilot, lambda: "line three" in app.query_one("#prompt").value)
        await pilot.press("enter")
        worker.save(0, "Hi Eve.")
        worker.answer(1, ["Eve"])
        await wait_until(pilot, lambda: len(worker.sent) == 3, what="the pasted message sent")
        assert worker.sent[2][2] == "line one\n# line two\nline three"


async def test_escape_before_the_first_token_cancels_the_turn(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test(notifications=True) as pilot:
        await wait_until(pilot, lambda: ready(app))
        await type_and_send(pilot, "never mind")
        await wait_until(pilot, lambda: len(worker.sent) == 1 and len(transcript(app)) == 2)
        await pilot.press("escape")
        await wait_until(pilot, lambda: transcript(app) == [], timeout=5, what="the turn cancelled")
        assert worker.cancelled == [(app.current.id, 1)]
        assert app.query_one("#prompt").value == "never mind"
        assert any("Cancelled" in text for text in notifications(app))
        await wait_until(pilot, lambda: ready(app))
        assert not worker.sent[0][3].exists() and app.current.turn_count == 0
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(worker.sent) == 2)
        assert worker.sent[1][1:3] == (1, "never mind")
        worker.answer(1, ["ok"])
        await pilot.press("escape")  # after the first token: stops, keeps the answer
        assert worker.cancelled == [(app.current.id, 1)]


async def test_an_error_shows_its_sentence_with_brackets_kept(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test(notifications=True) as pilot:
        await wait_until(pilot, lambda: ready(app))
        await type_and_send(pilot, "hi")
        await wait_until(pilot, lambda: len(worker.sent) == 1)
        sentence = "the query does not fit the template ([Q]query[A] [bold]needs[/bold] 3 tokens)"
        worker.deliver(JobFailed(app.current.id, 1, f"ValueError: {sentence}", "Traceback …"))
        await wait_until(pilot, lambda: any("template" in text for text in notifications(app)), what="the error")
        shown = next(text for text in notifications(app) if "template" in text)
        assert sentence in shown and "ValueError" not in shown


async def test_a_user_message_is_plain_text(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        await type_and_send(pilot, "# not a heading *nor emphasis*")
        await wait_until(pilot, lambda: len(transcript(app)) == 2)
        user = list(app.query(MessageView))[0]
        assert not user.query("Markdown")
        assert str(user.query_one(".text").render()) == "# not a heading *nor emphasis*"


async def test_new_conversations_do_not_pile_up(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        await answered_turns(pilot, worker, ["first chat"])
        first = app.current.id
        for _ in range(3):
            await pilot.press("ctrl+n")
            await wait_until(pilot, lambda: app.current.id != first and ready(app))
        empty = app.current.id
        await app.switch_to(first)
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: app.current.id == empty, timeout=5, what="the empty conversation reused")
    titles = [conversation.title for conversation in Storage(tmp_path / "data").conversations()]
    assert sorted(titles) == ["New conversation", "first chat"]


async def test_the_theme_is_remembered(tmp_path):
    app, _ = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        default = app.theme
        app.theme = "nord" if default != "nord" else "gruvbox"
        chosen = app.theme
    app, _ = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        assert app.theme == chosen


def test_memory_panel_chart_reads_later_turns():
    history = [(61.3, 61.3), (0.8, 0.8), (0.2, 0.2), (0.5, 0.5)]
    text = format_memory_panel(history, "ready")
    assert "log scale" in text
    chart = text.splitlines()[
        text.splitlines().index(next(line for line in text.splitlines() if "log scale" in line)) + 1
    ]
    assert chart[0] == "█" and len(set(chart[1:])) == 3 and all(mark != "▁" for mark in chart[1:2] + chart[3:])


def fits(widget, text: str) -> bool:
    """Whether ``text`` fits in the cells the widget has on screen (it is not cut)."""
    inside = widget.region.right <= widget.parent.region.right
    return inside and cell_len(text) <= widget.content_size.width * widget.content_size.height


async def test_small_terminals_cut_nothing(tmp_path):
    stored_conversation(tmp_path, 14, title="A title of forty characters, as named..")
    app, _ = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: ready(app))
        footer = app.query_one("Footer")
        keys = list(footer.query("FooterKey"))
        await wait_until(pilot, lambda: keys and keys[-1].region.width > 0)
        assert all(key.region.right <= footer.region.right for key in keys), [k.region for k in keys]
        await pilot.press("ctrl+f")
        await wait_until(pilot, lambda: screen_name(app) == "ForkScreen")
        hint = app.screen.query("Label").first()
        assert "14 = now)" in app.screen.prompt and fits(hint, app.screen.prompt)
    app, _ = make_app(tmp_path)
    async with app.run_test(size=(60, 15)) as pilot:
        await wait_until(pilot, lambda: ready(app) and app.current.turn_count == 14)
        assert app.query_one("#sidebar").size.width < 30
        status = app.query_one(StatusLine)
        text = str(status.render())
        assert "memory: ready" in text and fits(status, text)


async def test_ctrl_j_starts_a_new_line_of_the_message(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        await pilot.press(*"one", "ctrl+j", *"two", "enter")
        await wait_until(pilot, lambda: len(worker.sent) == 1)
        assert worker.sent[0][2] == "one\ntwo"
        type_fast(app, *"three", "ctrl+j", *"four", "enter")  # as tmux sends them: the line break keeps its place
        await wait_until(pilot, lambda: app.waiting.get(app.current.id) == ["three\nfour"], timeout=10)
        assert app.query_one("#prompt").value == ""
        assert str(list(app.query(MessageView))[0].query_one(".text").render()) == "one\ntwo"
