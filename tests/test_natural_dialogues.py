"""The natural dialogues: open value pools, free-form filler, and what keeps held-out data out of training."""

import random

import pytest

from rxt_mlx.bench import dialogues, open_data
from rxt_mlx.bench.free_chat import (
    GREETING_REPLY,
    NOT_TOLD,
    QUESTION_REPLY,
    REMARK_REPLY,
    FreeChat,
    generic_reply,
    line_kind,
)


def test_open_pools_are_large_plain_and_sorted():
    sizes = {
        "first_names": (open_data.first_names(), 10_000),
        "cities": (open_data.cities(), 4_000),
        "pet_names": (open_data.pet_names(), 10_000),
        "jobs": (open_data.jobs(), 300),
        "colors": (open_data.colors(), 100),
        "foods": (open_data.foods(), 400),
        "chat_lines": (open_data.chat_lines(), 1_000),
    }
    for name, (pool, at_least) in sizes.items():
        assert len(pool) >= at_least, name
        assert pool == sorted(set(pool)), name
        assert all(value.isascii() and value.strip() == value for value in pool), name
    assert {"Moscow", "Uppsala", "Aachen"} <= set(open_data.cities())
    assert {"alice blue", "dark olive green"} <= set(open_data.colors())
    assert "academic librarian" in open_data.jobs()


def test_chat_lines_hold_no_fact_and_no_code():
    for line in open_data.chat_lines():
        assert "\n" not in line and len(line.split()) <= open_data.MAX_CHAT_WORDS
        assert not any(mark in line for mark in "{}[]<>=`#")
    lowered = [line.lower() for line in open_data.chat_lines()]
    assert not any("my name" in line or "i live in" in line or "my favorite color" in line for line in lowered)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("hello there, what's up?", "greeting"),
        ("Hi", "greeting"),
        ("Good morning.", "greeting"),
        ("hey, how is it going", "greeting"),
        ("What is the capital of France?", "question"),
        ("why is the sky blue", "question"),
        ("Tell me a joke.", "question"),
        ("lol", "remark"),
        ("I'm tired", "remark"),
        ("Hiking is fun.", "remark"),
        ("Height of the Eiffel tower?", "question"),
    ],
)
def test_line_kind_picks_the_generic_reply(line, kind):
    assert line_kind(line) == kind
    assert generic_reply(line) == {"greeting": GREETING_REPLY, "question": QUESTION_REPLY, "remark": REMARK_REPLY}[kind]


def test_heldout_filler_and_values_never_reach_training():
    chat = FreeChat.load()
    assert not set(chat.lines["train"]) & set(chat.lines["heldout"])
    slots = dialogues.build_slots(True, True, 0.7, open_values=True)
    rng = random.Random(5)
    train = [dialogues.generate_conversation(rng, "train", slots, 6, 10, 4, chat) for _ in range(300)]
    heldout_lines = set(chat.lines["heldout"])
    heldout_values = {value for slot in slots.values() for value in slot.values["heldout"]}
    for conversation in train:
        for turn in conversation.turns:
            if turn.kind == "smalltalk":
                assert turn.query not in heldout_lines
            assert not set(turn.values) & (heldout_values - set(dialogues.PET_KINDS))


def test_natural_conversations_are_reproducible_and_varied():
    first = dialogues.natural_conversations(150, "heldout", seed=3)
    assert [c.to_dict() for c in first] == [c.to_dict() for c in dialogues.natural_conversations(150, "heldout", 3)]
    turns = [turn for conversation in first for turn in conversation.turns]
    kinds = {turn.kind for turn in turns}
    assert kinds == {"statement", "question", "smalltalk", "not_told"}
    pairs = [turn for turn in turns if turn.kind == "statement" and "+" in turn.slot]
    assert pairs and all(" and " in turn.query and len(turn.values) >= 2 for turn in pairs)
    assert all(turn.answer == NOT_TOLD[turn.slot] for turn in turns if turn.kind == "not_told")
    assert {turn.answer for turn in turns if turn.kind == "smalltalk"} == {GREETING_REPLY, QUESTION_REPLY, REMARK_REPLY}
    slots = dialogues.natural_slots()
    real = {
        "name": open_data.first_names() + dialogues.FIRST_NAMES,
        "city": open_data.cities() + dialogues.CITIES,
        "food": open_data.foods() + dialogues.FOODS,
    }
    for slot, values in real.items():
        assert set(slots[slot].values["heldout"]) <= set(values), slot
    for turn in turns:
        if turn.kind == "question":
            value = turn.values[-1]
            assert value in slots[turn.slot].values["heldout"], value
            assert turn.answer == slots[turn.slot].answer.format(
                v=value, a="an" if value[0] in "aeiou" else "a", kind=turn.values[0]
            )


def test_a_question_is_only_about_a_fact_stated_earlier():
    for conversation in dialogues.natural_conversations(100, "heldout", seed=9):
        stated: dict[str, int] = {}
        for index, turn in enumerate(conversation.turns):
            if turn.kind == "statement":
                for slot in turn.slot.split("+"):
                    stated[slot] = index
            elif turn.kind == "question":
                assert stated[turn.slot] == index - turn.distance
            elif turn.kind == "not_told":
                assert turn.slot not in stated
