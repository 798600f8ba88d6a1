"""The bundled demo model (rxt_mlx/demo): loads, answers deterministically, and uses its memory.

The recall target of the demo (>= 95% on held-out facts 1-6 turns back) is NOT reached by the
shipped model (see rxt_mlx/demo/README.md for the measured figures); the held-out recall test
below is an expected failure that documents the target, the others assert what it does do.
"""

from pathlib import Path

import pytest
from rxt_convert import data

import rxt_mlx
from rxt_mlx.evaluate import DEMO_DIR, greedy_answer
from rxt_mlx.session import Session


def heldout_value(slot: str, index: int) -> str:
    return data.build_slots()[slot].values["heldout"][index]


# Held-out phrasings and values only: none of this text occurs in the training split.
NAME, CITY, FOOD, NUMBER = (
    heldout_value("name", 3),
    heldout_value("city", 5),
    heldout_value("food", 1),
    heldout_value("number", 10),
)
HELDOUT_CONVERSATION = [
    (f"People call me {NAME}.", None),
    ("How are you?", None),
    (f"These days I reside in {CITY}.", None),
    (f"The best food for me is {FOOD}.", None),
    (f"I consider {NUMBER} my lucky number.", None),
    ("Which name did I give you?", f"Your name is {NAME}."),
    ("Remind me where I live.", f"You live in {CITY}."),
    ("What food did I say I like?", f"Your favourite food is {FOOD}."),
]


@pytest.fixture(scope="module")
def demo():
    folder = Path(DEMO_DIR)
    assert (folder / "model.safetensors").exists(), f"the demo model is missing from {folder}"
    size = sum(path.stat().st_size for path in folder.iterdir())
    assert size < 20 * 2**20, f"demo folder is {size} bytes"
    return rxt_mlx.load(folder)


def test_demo_values_are_heldout():
    train_values = {v for slot in data.build_slots().values() for v in slot.values["train"]}
    assert not {NAME, CITY, FOOD, NUMBER} & train_values


def play(model, tokenizer, queries, reset_each_turn=False):
    session = Session(model, tokenizer)
    answers = []
    for query in queries:
        if reset_each_turn:
            session = Session(model, tokenizer)
        answers.append(greedy_answer(session, query, max_tokens=32))
    return answers


def test_demo_is_deterministic_and_fluent(demo):
    model, tokenizer = demo
    queries = ["Hello!", "How are you?", "Thanks!"]
    first = play(model, tokenizer, queries)
    assert first == play(model, tokenizer, queries)
    assert first == ["Hello! How can I help?", "I am fine, thank you.", "You are welcome."]


def test_demo_uses_its_memory():
    """Over seeded training-distribution conversations, carried memory recalls more than none."""
    model, tokenizer = rxt_mlx.load(DEMO_DIR)
    carried = ablated = questions = 0
    for conversation in data.generate_conversations(12, "train", seed=777):
        answers = play(model, tokenizer, [turn.query for turn in conversation.turns])
        for turn, answer in zip(conversation.turns, answers, strict=True):
            if turn.kind == "question":
                questions += 1
                carried += data.entity_match(answer, turn.values)
                (alone,) = play(model, tokenizer, [turn.query])
                ablated += data.entity_match(alone, turn.values)
    # measured on the shipped demo: 9 of 20 recalled with memory, 0 without
    assert questions == 20
    assert carried >= 6
    assert ablated <= 1


@pytest.mark.xfail(
    strict=True, reason="the shipped demo does not reach the held-out recall target (rxt_mlx/demo/README.md)"
)
def test_demo_recalls_heldout_facts(demo):
    model, tokenizer = demo
    answers = play(model, tokenizer, [query for query, _ in HELDOUT_CONVERSATION])
    for (query, expected), answer in zip(HELDOUT_CONVERSATION, answers, strict=True):
        if expected is not None:
            assert answer == expected, f"{query!r}: got {answer!r}"
