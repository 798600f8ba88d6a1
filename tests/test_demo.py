"""The bundled demo model remembers: held-out facts recalled greedily, and only through memory."""

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
PET, JOB, COLOR = heldout_value("pet", 7), heldout_value("job", 2), heldout_value("color", 0)
CONVERSATIONS = [
    [
        (f"People call me {NAME}.", None),
        ("How are you?", None),
        (f"These days I reside in {CITY}.", None),
        ("Tell me a joke.", None),
        ("Which name did I give you?", f"Your name is {NAME}."),
        ("Remind me where I live.", f"You live in {CITY}."),
    ],
    [
        (f"My parrot is named {PET}.", None),
        (f"I consider {NUMBER} my lucky number.", None),
        (f"The best color for me is {COLOR}.", None),
        ("I went for a run.", None),
        ("Remind me about my pet.", f"Your pet is a parrot named {PET}."),
        ("Remind me of my favourite color.", f"Your favourite color is {COLOR}."),
        ("What number did I say was lucky?", f"Your lucky number is {NUMBER}."),
    ],
    [
        (f"By trade I am {'an' if JOB[0] in 'aeiou' else 'a'} {JOB}.", None),
        (f"The best food for me is {FOOD}.", None),
        ("Good morning.", None),
        ("Which job do I have?", f"You work as {'an' if JOB[0] in 'aeiou' else 'a'} {JOB}."),
        ("What food did I say I like?", f"Your favourite food is {FOOD}."),
    ],
]


@pytest.fixture(scope="module")
def demo():
    assert (Path(DEMO_DIR) / "model.safetensors").exists(), f"the demo model is missing from {DEMO_DIR}"
    return rxt_mlx.load(DEMO_DIR)


def test_demo_values_are_heldout():
    train_values = {v for slot in data.build_slots().values() for v in slot.values["train"]}
    assert not {NAME, CITY, FOOD, NUMBER, PET, JOB, COLOR} & train_values


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["name-city", "pet-color-number", "job-food"])
def test_demo_recalls_heldout_facts(demo, conversation):
    model, tokenizer = demo
    session = Session(model, tokenizer)
    for query, expected in conversation:
        answer = greedy_answer(session, query, max_tokens=32)
        if expected is not None:
            assert answer == expected, f"{query!r}: got {answer!r}"


def test_demo_needs_its_memory(demo):
    """With the STM reset (no memory of the conversation), the facts are not recalled."""
    model, tokenizer = demo
    for conversation in CONVERSATIONS:
        for query, expected in conversation:
            if expected is not None:
                answer = greedy_answer(Session(model, tokenizer), query, max_tokens=32)
                assert answer != expected, query
