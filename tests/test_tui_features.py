"""What oterm / elia users expect of rxt-chat (issue 16), on the scripted worker: the token counter,
conversation settings, regenerate / edit / redo, undo after delete, search, and the welcome of an
empty conversation."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from rxt_app import tui
from rxt_app.command_line import demo_model_dir
from rxt_app.conversation_settings import SettingsStore
from rxt_app.settings_screen import SettingsScreen
from rxt_app.storage import Storage, TurnStats
from rxt_app.system_prompts import SystemPrompts
from rxt_app.welcome import DEMO_EXAMPLES, welcome

from tests.app_helpers import ScriptedWorker, wait_until
from tests.test_app_ui import (
    answered_turns,
    make_app,
    notifications,
    ready,
    screen_name,
    stored_conversation,
    transcript,
    type_and_send,
)


async def submit(pilot) -> None:
    """Enter in the dialog's first field saves it (two quick clicks on one button count once)."""
    pilot.app.screen.query_one("#system_prompt").focus()
    await pilot.press("enter")


def counter(app) -> str:
    """The size of the message, on the input's lower edge."""
    return str(app.query_one("#prompt").border_subtitle)


async def test_the_token_counter_warns_and_a_message_over_the_limit_is_refused_visibly(tmp_path):
    worker = ScriptedWorker()
    worker.query_limit = 8
    app, _ = make_app(tmp_path, worker)
    async with app.run_test(notifications=True) as pilot:
        await wait_until(pilot, lambda: ready(app))
        assert counter(app) == "0/8 tokens"
        app.query_one("#prompt").value = "one two three"
        await wait_until(pilot, lambda: counter(app) == "6/8 tokens")
        assert not app.query_one("#prompt").has_class("over")
        too_long = "one two three four five six"
        await type_and_send(pilot, too_long)
        await wait_until(pilot, lambda: any("at most 8" in text for text in notifications(app)))
        assert "The message is 9 tokens with its template; this model takes at most 8. Shorten it." in notifications(
            app
        )
        assert worker.sent == [] and transcript(app) == []
        assert app.query_one("#prompt").value == too_long  # nothing lost
        assert counter(app) == "9/8 tokens · too long" and app.query_one("#prompt").has_class("over")
        await type_and_send(pilot, "short one")
        await wait_until(pilot, lambda: len(worker.sent) == 1)
        assert counter(app) == "0/8 tokens"


async def test_settings_are_edited_in_a_dialog_saved_with_the_conversation_and_used(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        first = app.current.id
        await pilot.press("f4")
        await wait_until(pilot, lambda: screen_name(app) == "SettingsScreen")
        screen = app.screen
        screen.query_one("#system_prompt").value = "You are terse."
        screen.query_one("#temperature").value = "warm"
        await pilot.click("#save")
        await wait_until(
            pilot, lambda: "temperature must be a number, not 'warm'" in str(screen.query_one("#error").render())
        )
        screen.query_one("#temperature").value = "1.5"
        screen.query_one("#top_p").value = "2"
        await submit(pilot)
        await wait_until(pilot, lambda: "top_p" in str(screen.query_one("#error").render()))
        screen.query_one("#top_p").value = "0.9"
        screen.query_one("#max_tokens").value = "64"
        await submit(pilot)
        await wait_until(pilot, lambda: screen_name(app) != "SettingsScreen")
        sampling = {"temperature": 1.5, "top_p": 0.9, "max_tokens": 64}
        assert app.controller.storage.settings(first) == {"sampling": sampling}
        assert worker.opened[-1] == (first, 0) and worker.system_prompts[-1] == "You are terse."  # a new memory
        await answered_turns(pilot, worker, ["hello"])
        assert worker.sent_sampling == [sampling]

        # with a turn, a changed system prompt goes into the memory of a new conversation
        await pilot.press("f4")
        await wait_until(pilot, lambda: screen_name(app) == "SettingsScreen")
        app.screen.query_one("#system_prompt").value = "You are kind."
        await submit(pilot)
        await wait_until(pilot, lambda: app.current.id != first and ready(app))
        assert app.current.turn_count == 0 and worker.system_prompts[-1] == "You are kind."
    prompts = SystemPrompts(tmp_path / "data")
    assert prompts.get(first) == "You are terse." and prompts.get(app.current.id) == "You are kind."
    prompts.close()

    storage = Storage(tmp_path / "data")  # a value edited by hand into something invalid is left out
    storage.save_settings(app.current.id, {"sampling": {"temperature": -1, "top_p": "x", "max_tokens": 8}})
    assert SettingsStore(storage).get(app.current.id).sampling == {"max_tokens": 8}
    storage.close()

    app, worker = make_app(tmp_path)  # a restart shows what was saved
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        await app.switch_to(first)
        await pilot.press("f4")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        fields = {name: app.screen.query_one(f"#{name}").value for name in ("system_prompt", "temperature", "top_p")}
        assert fields == {"system_prompt": "You are terse.", "temperature": "1.5", "top_p": "0.9"}


async def test_regenerate_edit_and_redo(tmp_path):
    app, worker = make_app(tmp_path)
    async with app.run_test(notifications=True) as pilot:
        await wait_until(pilot, lambda: ready(app))
        await answered_turns(pilot, worker, ["one", "two", "three"])
        conversation_id = app.current.id

        await pilot.press("ctrl+g")  # regenerate: turn 3 rewound and sent again
        await wait_until(pilot, lambda: len(worker.sent) == 4)
        assert worker.sent[3][1:3] == (3, "three")
        worker.answer(3, ["another answer"])
        worker.save(3, "another answer")
        await wait_until(pilot, lambda: transcript(app)[-1] == ("assistant", 3, "another answer"))
        assert app.current.turn_count == 3

        await pilot.press("ctrl+z")
        await wait_until(pilot, lambda: app.current.turn_count == 2 and len(transcript(app)) == 4)
        await pilot.press("ctrl+r")  # redo: the rewound turn comes back, with its memory
        await wait_until(pilot, lambda: app.current.turn_count == 3)
        assert transcript(app)[-2:] == [("user", 3, "three"), ("assistant", 3, "another answer")]
        assert worker.opened[-1] == (conversation_id, 3)

        second = [view for view in app.query(tui.MessageView) if view.turn == 2][0]
        await pilot.click(second)
        await wait_until(pilot, lambda: app.chosen_turn == 2)
        await pilot.press("ctrl+l")  # edit turn 2: rewound to turn 1, its text in the input
        await wait_until(pilot, lambda: app.current.turn_count == 1)
        assert app.query_one("#prompt").value == "two"
        assert transcript(app) == [("user", 1, "one"), ("assistant", 1, "answer to one")]
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: app.current.turn_count == 3)
        assert app.query_one("#prompt").value == ""  # the message is back in the transcript, not twice

        await pilot.press("ctrl+l")  # no turn chosen: the last one
        await wait_until(pilot, lambda: app.current.turn_count == 2)
        assert app.query_one("#prompt").value == "three"
        await type_and_send(pilot, "three, edited")
        await wait_until(pilot, lambda: len(worker.sent) == 5)
        assert worker.sent[4][1:3] == (3, "three, edited")
        worker.answer(4, ["edited answer"])
        worker.save(4, "edited answer")
        await wait_until(pilot, lambda: app.current.turn_count == 3)
        await pilot.press("ctrl+r")  # something new was sent: nothing to redo
        await wait_until(pilot, lambda: any("Nothing to redo" in text for text in notifications(app)))
        stored = [(m.turn, m.text) for m in app.controller.storage.messages(conversation_id)]
        assert stored[-2:] == [(3, "three, edited"), (3, "edited answer")]


def stored_row_count(tmp_path, conversation_id: str) -> int:
    database = sqlite3.connect(tmp_path / "data" / "chat.sqlite3")
    count = database.execute("SELECT count(*) FROM conversations WHERE id = ?", (conversation_id,)).fetchone()[0]
    database.close()
    return count


async def test_a_delete_can_be_undone_for_a_while_then_it_is_final(tmp_path, monkeypatch):
    monkeypatch.setattr(tui, "UNDO_DELETE_SECONDS", 0.5)
    kept = stored_conversation(tmp_path, 1, title="kept")
    dropped = stored_conversation(tmp_path, 2, title="dropped")
    app, _ = make_app(tmp_path)
    async with app.run_test(notifications=True) as pilot:
        await wait_until(pilot, lambda: ready(app) and app.current.id == dropped)
        await pilot.press("f8")
        await wait_until(pilot, lambda: screen_name(app) == "ConfirmScreen")
        await pilot.click("#confirm")
        await wait_until(pilot, lambda: app.current.id == kept)
        assert [c.id for c in app.controller.storage.conversations()] == [kept]
        assert "Deleted “dropped”. ctrl+z brings it back (0 s)." in notifications(app)
        await pilot.press("ctrl+z")
        await wait_until(pilot, lambda: app.current.id == dropped)
        assert app.current.turn_count == 2 and len(transcript(app)) == 4

        await pilot.press("f8")
        await wait_until(pilot, lambda: screen_name(app) == "ConfirmScreen")
        await pilot.click("#confirm")
        await wait_until(pilot, lambda: app.current.id == kept)
        await wait_until(pilot, lambda: stored_row_count(tmp_path, dropped) == 0, timeout=10, what="the purge")
        assert not (tmp_path / "data" / "stm" / dropped).exists()
        await pilot.press("ctrl+z")  # too late: a plain rewind of the conversation shown
        await wait_until(pilot, lambda: app.current.turn_count == 0)

    app, _ = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        await pilot.press("f8")
        await wait_until(pilot, lambda: screen_name(app) == "ConfirmScreen")
        await pilot.click("#confirm")
        await wait_until(pilot, lambda: app.current.id != kept)
        assert stored_row_count(tmp_path, kept) == 1  # still in the undo window
        await pilot.press("ctrl+q")  # quitting makes it final
    assert stored_row_count(tmp_path, kept) == 0


async def test_search_opens_the_conversation_at_the_turn_found(tmp_path):
    pizza = stored_conversation(tmp_path, 3, answer="I love pizza ", title="food")
    stored_conversation(tmp_path, 2, answer="no match ", title="other")
    app, _ = make_app(tmp_path)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: ready(app))
        assert app.current.id != pizza
        await pilot.press("f3")
        await wait_until(pilot, lambda: screen_name(app) == "SearchScreen")
        await pilot.press(*"pizza 2")
        await wait_until(pilot, lambda: str(app.screen.query_one("#count").render()) == "1 message")
        option = app.screen.query_one("#results").get_option_at_index(0)
        assert str(option.prompt) == "food · turn 2 · RxT: I love pizza 2"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.current.id == pizza and app.chosen_turn == 2)
        chosen = [(view.role, view.turn) for view in app.query(tui.MessageView) if view.has_class("chosen")]
        assert chosen == [("user", 2), ("assistant", 2)]
        assert app.focused is app.query_one("#prompt")


async def test_an_empty_conversation_shows_what_the_model_does_and_examples(tmp_path):
    app, _ = make_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: ready(app))
        about = str(app.query_one("#welcome .about").render())
        assert about.startswith("Model: tiny-model: a scripted stand-in.")
        assert "A message can be up to 100 tokens" in about
        examples = [label.text for label in app.query(".example")]
        assert examples == [
            "Hi, I'm Ann and I live in Oslo.",
            "What do you remember about me?",
            "Summarize what we talked about so far.",
        ]
        await pilot.click(".example")
        assert app.query_one("#prompt").value == "Hi, I'm Ann and I live in Oslo."
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(transcript(app)) == 2)
        assert not app.query("#welcome")
    demo = welcome("demo", 47, is_demo=True)
    assert demo.examples == DEMO_EXAMPLES and "My name is Ann." in demo.examples
    assert demo.lines[0] == "The bundled demo model: a tiny RxT that keeps facts about you and gives them back."
    worker = ScriptedWorker()
    worker.model_dir = Path(os.path.relpath(demo_model_dir()))  # as `--model rxt_mlx/demo` gives it
    assert make_app(tmp_path, worker)[0].welcome == welcome(worker.description, 100, is_demo=True)


async def test_a_read_only_conversation_keeps_its_settings_and_turns(tmp_path):
    storage = Storage(tmp_path / "data")
    foreign = storage.create_conversation("old chat", "0" * 64)
    storage.close()
    app, worker = make_app(tmp_path)
    async with app.run_test(notifications=True) as pilot:
        await wait_until(pilot, lambda: app.current is not None and app.current.id == foreign.id)
        await pilot.press("f4")
        await wait_until(pilot, lambda: screen_name(app) == "SettingsScreen")
        app.screen.query_one("#system_prompt").value = "You are terse."
        await submit(pilot)
        await wait_until(pilot, lambda: any("another model" in text for text in notifications(app)))
        assert app.controller.settings_of(foreign.id).system_prompt == "" and worker.opened == []
    storage = Storage(tmp_path / "data")  # nor are its turns rewound to regenerate or edit one
    path = storage.new_snapshot_path(foreign.id, 1)
    path.write_bytes(b"stm")
    storage.commit_turn(foreign.id, 1, "q1", "a1", TurnStats(1, 0.0, 0.0, 0.0, 0.0), snapshot=path)
    storage.close()
    app, worker = make_app(tmp_path)
    async with app.run_test(notifications=True) as pilot:
        await wait_until(pilot, lambda: app.current is not None and app.current.id == foreign.id)
        for key in ("ctrl+g", "ctrl+l", "ctrl+z"):
            await pilot.press(key)
        await wait_until(pilot, lambda: sum("another model" in text for text in notifications(app)) == 3)
        assert app.controller.storage.conversation(foreign.id).turn_count == 1 and worker.sent == []
