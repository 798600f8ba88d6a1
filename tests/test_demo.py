"""The bundled demo model (rxt_mlx/demo): loads, answers deterministically, recalls held-out facts.

Everything the recall tests say comes from the held-out split: values and phrasings that never
occur in the demo's training data (see rxt_mlx.bench.dialogues), played greedily through Session.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import rxt_mlx
from rxt_mlx.bench import dialogues
from rxt_mlx.bench.evaluate import (
    DEMO_DIR,
    TARGET_BINS,
    EvalResult,
    answer_if_it_fits,
    evaluate_recall,
    greedy_answer,
)
from rxt_mlx.bench.free_chat import GREETING_REPLY, QUESTION_REPLY, REMARK_REPLY
from rxt_mlx.session import Session

from .natural_conversations import GENERIC, NATURAL_CONVERSATIONS, VALUES

NAME, CITY, NUMBER, FOOD, COLOR, JOB = "Chloe", "Zurich", "133", "grapes", "olive", "designer"

# (query, expected answer of a recall question or None); facts 1 to 6 turns back
HELDOUT_CONVERSATIONS = [
    [
        (f"Also, call me {NAME}.", None),
        ("How are you?", None),
        (f"Listen, I reside in {CITY}.", None),
        (f"By the way, I consider {NUMBER} my lucky number.", None),
        ("Which number is lucky for me?", f"Your lucky number is {NUMBER}."),
        ("Tell me a joke.", None),
        ("Which name did I tell you?", f"Your name is {NAME}."),
        ("What was my city again?", f"You live in {CITY}."),
    ],
    [
        (f"Just so you know, I really enjoy eating {FOOD}.", None),
        (f"Also, I really like the color {COLOR}.", None),
        ("Do you like music?", None),
        ("What is my favourite color?", f"Your favourite color is {COLOR}."),
        (f"By trade I am a {JOB}.", None),
        ("Thanks!", None),
        ("What was my favorite food again?", f"Your favourite food is {FOOD}."),
        ("I went for a run.", None),
        ("What is my profession?", f"You work as a {JOB}."),
    ],
]


@pytest.fixture(scope="module")
def demo():
    folder = Path(DEMO_DIR)
    assert (folder / "model.safetensors").exists(), f"the demo model is missing from {folder}"
    size = sum(path.stat().st_size for path in folder.iterdir())
    assert size < 20 * 2**20, f"demo folder is {size} bytes"
    return rxt_mlx.load(folder)


def test_the_recall_conversations_are_heldout():
    slots = dialogues.build_slots()
    train_values = {v for slot in slots.values() for v in slot.values["train"]}
    assert not {NAME, CITY, NUMBER, FOOD, COLOR, JOB} & train_values
    train_text = {t for slot in slots.values() for t in slot.statements["train"] + slot.questions["train"]}
    heldout_text = {t for slot in slots.values() for t in slot.statements["heldout"] + slot.questions["heldout"]}
    smalltalk = {query for query, _ in dialogues.SMALLTALK}
    for conversation in HELDOUT_CONVERSATIONS:
        for query, _ in conversation:
            if query in smalltalk:
                continue
            template = query
            for value, field in ((NAME, "{v}"), (CITY, "{v}"), (NUMBER, "{v}"), (FOOD, "{v}"), (COLOR, "{v}")):
                template = template.replace(value, field)
            template = template.replace(f"a {JOB}", "{a} {v}")
            assert template in heldout_text and template not in train_text, query


def play(model, tokenizer, queries, reset_each_turn=False):
    session = Session(model, tokenizer)
    answers = []
    for query in queries:
        if reset_each_turn:
            session = Session(model, tokenizer)
        answers.append(greedy_answer(session, query, max_tokens=48))
    return answers


def test_the_natural_conversations_use_heldout_values():
    slots = dialogues.build_slots(True, True, 0.7, open_values=True)
    for slot, values in VALUES.items():
        assert set(values) <= set(slots[slot].values["heldout"]), slot


def test_demo_is_deterministic_and_fluent(demo):
    model, tokenizer = demo
    queries = ["Hello!", "How are you?", "Thanks!"]
    first = play(model, tokenizer, queries)
    assert first == play(model, tokenizer, queries)
    assert first == [GREETING_REPLY, QUESTION_REPLY, REMARK_REPLY]


def test_demo_recalls_handwritten_heldout_facts(demo):
    model, tokenizer = demo
    for conversation in HELDOUT_CONVERSATIONS:
        answers = play(model, tokenizer, [query for query, _ in conversation])
        for (query, expected), answer in zip(conversation, answers, strict=True):
            if expected is not None:
                assert answer == expected, f"{query!r}: got {answer!r}"


# Measured on the shipped demo (rxt_mlx/demo/README.md, "Natural conversations"): these 9 of the
# 14 answers come back exactly. The others: Stig and Karlsruhe (stated in one message) come back
# misspelt ("Stigo", "Karemruhe"); "What's my favourite colour?" (British spelling, held out) gets
# the food, and the food then comes back misspelt; "We have a dog, Sigmund." is taken for a remark.
NATURAL_RECALLED = {
    "Your pet is a cat named Viggo.",
    "You work as a pharmacologist.",
    "You have not told me your name yet.",
    "Your name is Letitia.",
    "You have not told me where you live yet.",
    "Your lucky number is 671.",
    "You live in Coventry.",
    "Your favourite food is fennel.",
    "Your name is Carey.",
}


def test_demo_in_handwritten_natural_conversations(demo):
    """Off-topic lines get a generic reply, never a mangled template; the measured facts come back exactly."""
    model, tokenizer = demo
    recalled = set()
    for conversation in NATURAL_CONVERSATIONS:
        answers = play(model, tokenizer, [query for query, _ in conversation])
        for (query, expected), answer in zip(conversation, answers, strict=True):
            if expected is None:
                assert answer in GENERIC, f"{query!r}: got {answer!r}"
            elif expected != "ack" and answer == expected:
                recalled.add(answer)
    assert recalled == NATURAL_RECALLED


def test_rxt_eval_counts_a_query_longer_than_the_context_as_wrong(demo):
    """The demo takes 256 tokens per interaction; a longer query is a wrong answer, the memory kept."""
    model, tokenizer = demo
    assert model.config.decoder.seq_len == 256
    result = EvalResult("demo", "heldout natural", 1)
    session = Session(model, tokenizer)
    assert answer_if_it_fits(session, "lol " * 300, 48, result) == "" and result.too_long == 1
    assert answer_if_it_fits(session, "My name is Ann.", 48, result) == "Nice to meet you, Ann."
    long_but_fitting = "I had a long day today and " * 7 + "my name is Ann."
    assert answer_if_it_fits(session, long_but_fitting, 48, result) != "" and result.too_long == 1


@pytest.fixture(scope="module")
def seeded_recall(demo):
    """rxt-eval's recall tallies (memory, memory reset) over seeded held-out conversations, 1-6 turns back."""
    model, tokenizer = demo
    result = EvalResult("demo", "heldout", 20)
    conversations = dialogues.generate_conversations(20, "heldout", seed=2026)
    options = argparse.Namespace(stm_seed=0, max_tokens=32)
    evaluate_recall(model, tokenizer, conversations, result, "heldout", dialogues.build_slots(), options)
    return result.total("memory", TARGET_BINS), result.total("ablated", TARGET_BINS)


@pytest.mark.slow
def test_demo_answers_the_seeded_heldout_questions_from_memory(seeded_recall):
    """A fixed set of held-out recall questions (seed 2026): 32 of 34 answered exactly, none with memory reset."""
    carried, ablated = seeded_recall
    # measured on the shipped demo: 32 of 34 with memory (rxt_mlx/demo/README.md has the 400-conversation
    # table), 0 without
    assert carried.questions == 34
    assert carried.exact == 32, f"{carried.exact} of {carried.questions} recalled"
    assert ablated.exact / ablated.questions <= carried.chance / carried.questions + 0.10, ablated


@pytest.mark.slow
def test_rxt_chat_defaults_to_the_demo_and_remembers_across_restarts(tmp_path):
    """``rxt-chat --plain`` with no --model: a fact told in one process is recalled by the next."""

    def chat(stdin):
        command = [sys.executable, "-m", "rxt_app.cli", "--plain", "--stm", str(tmp_path / "chat.stm")]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, encoding="utf-8", timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert chat("My name is Ann.\nHow are you?\n") == f"Nice to meet you, Ann.\n{QUESTION_REPLY}\n"
    assert chat("What is my name?\n") == "Your name is Ann.\n"
