"""Synthetic recall dialogues: reproducibility, held-out disjointness, JSONL, exact match."""

import json
import random
import re

import pytest

from rxt_mlx.bench import dialogues


def test_generation_is_reproducible():
    first = dialogues.generate_conversations(20, "train", seed=3)
    again = dialogues.generate_conversations(20, "train", seed=3)
    other = dialogues.generate_conversations(20, "train", seed=4)
    assert [c.to_dict() for c in first] == [c.to_dict() for c in again]
    assert [c.to_dict() for c in first] != [c.to_dict() for c in other]


def test_value_pools_are_disjoint_and_non_empty():
    for name, slot in dialogues.build_slots().items():
        train, heldout = set(slot.values["train"]), set(slot.values["heldout"])
        assert train and heldout, name
        assert not train & heldout, name


def test_heldout_conversations_use_unseen_values_and_templates():
    slots = dialogues.build_slots()
    train_values = {v for slot in slots.values() for v in slot.values["train"]}
    train_queries = {t.query for c in dialogues.generate_conversations(500, "train") for t in c.turns}
    heldout = dialogues.generate_conversations(300, "heldout")
    facts = [t for c in heldout for t in c.turns if t.kind in ("statement", "question")]
    assert facts
    for turn in facts:
        assert turn.values[-1] not in train_values, turn
        assert turn.query not in train_queries, turn
    for name, slot in slots.items():
        assert not set(slot.statements["train"]) & set(slot.statements["heldout"]), name
        assert not set(slot.questions["train"]) & set(slot.questions["heldout"]), name


def test_questions_follow_their_statements():
    for conversation in dialogues.generate_conversations(200, "train", seed=1):
        assert 6 <= len(conversation.turns) <= 10
        for index, question in conversation.questions:
            stated = conversation.turns[index - question.distance]
            assert stated.kind == "statement" and stated.slot == question.slot
            assert stated.values == question.values
            assert all(value in question.answer for value in question.values)


def test_every_distance_bin_is_covered():
    distances = {t.distance for c in dialogues.generate_conversations(300, "heldout") for _, t in c.questions}
    assert set(range(1, 7)) <= distances


def test_jsonl_round_trip_and_plain_user_data(tmp_path):
    conversations = dialogues.generate_conversations(5, "heldout", seed=2)
    path = tmp_path / "conversations.jsonl"
    dialogues.save_jsonl(conversations, path)
    assert dialogues.load_jsonl(path) == conversations
    plain = tmp_path / "plain.jsonl"
    plain.write_text(
        json.dumps({"turns": [{"query": "Hi, I'm Ann.", "answer": "Hello Ann."}, {"query": "Bye", "answer": "Bye."}]})
        + "\n\n"
    )
    (loaded,) = dialogues.load_jsonl(plain)
    assert [(t.query, t.answer, t.kind) for t in loaded.turns] == [
        ("Hi, I'm Ann.", "Hello Ann.", "user"),
        ("Bye", "Bye.", "user"),
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "not valid JSON"),
        (json.dumps({"turns": []}), "non-empty 'turns'"),
        (json.dumps({"turns": [{"query": "Hi"}]}), "string 'query' and 'answer'"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        dialogues.load_jsonl(path)
    assert "bad.jsonl:1" in str(error.value)


def test_exact_and_entity_match_rules():
    assert dialogues.exact_match("  Your name is Ann. ", "Your name is Ann.")
    assert dialogues.exact_match("Your  name is\nAnn.", "Your name is Ann.")
    assert not dialogues.exact_match("your name is Ann.", "Your name is Ann.")
    assert not dialogues.exact_match("Your name is Anna.", "Your name is Ann.")
    assert dialogues.entity_match("Your pet is a dog named Rex.", ("dog", "Rex"))
    assert not dialogues.entity_match("Your pet is a dog named Rexi.", ("dog", "Rex"))


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_heldout_phrasings_are_new_sentences_of_known_words():
    """Held-out templates are unseen combinations; each of their words occurs in training templates."""
    slots = dialogues.build_slots()
    train_text = [t for s in slots.values() for t in s.statements["train"] + s.questions["train"]]
    known = set().union(*map(_words, train_text + [text for pair in dialogues.SMALLTALK for text in pair]))
    for name, slot in slots.items():
        for kind in ("statements", "questions"):
            train, heldout = getattr(slot, kind)["train"], getattr(slot, kind)["heldout"]
            assert 1 <= len(heldout) < len(train), (name, kind)
            for template in heldout:
                assert _words(template) <= known, (name, template)


def test_template_lines_cut_out_every_entity_value():
    conversations = dialogues.generate_conversations(50, "train", seed=5)
    lines = list(dialogues.template_lines(conversations))
    assert lines[0].split() == list(dialogues.ALPHABET)
    turns = [t for c in conversations for t in c.turns]
    assert len(lines) == 1 + 2 * len(turns)
    for index, turn in enumerate(turns):
        for line in lines[1 + 2 * index : 3 + 2 * index]:
            assert not any(re.search(rf"(?<![\w]){re.escape(v)}(?![\w])", line) for v in turn.values), line
    assert any(line == "Your name is  ." for line in lines)


def test_fresh_training_values_are_new_words_never_heldout():
    slots = dialogues.build_slots()
    pools = {name: set(slot.values["train"]) for name, slot in slots.items()}
    heldout = {v for slot in slots.values() for v in slot.values["heldout"]}
    conversations = dialogues.generate_conversations(400, "train", seed=8, fresh_values=True)
    assert conversations == dialogues.generate_conversations(400, "train", seed=8, fresh_values=True)
    stated = [t for c in conversations for t in c.turns if t.kind == "statement" and t.slot != "number"]
    fresh = [t for t in stated if t.values[-1] not in pools[t.slot]]
    assert 0.3 < len(fresh) / len(stated) < 0.6
    assert not {t.values[-1] for t in stated} & heldout
    assert len({t.values[-1] for t in fresh}) > 0.95 * len(fresh)
    # without fresh values the same seed draws only from the fixed lists
    plain = dialogues.generate_conversations(400, "train", seed=8)
    assert all(t.values[-1] in pools[t.slot] for c in plain for t in c.turns if t.kind == "statement")


def test_fresh_letter_values_are_spelled_like_real_words_and_never_heldout():
    slots = dialogues.build_slots()
    pools = {name: set(slot.values["train"]) for name, slot in slots.items()}
    heldout = {v.lower() for slot in slots.values() for v in slot.values["heldout"]}
    syllable_only = dialogues.generate_conversations(300, "train", seed=9, fresh_values=True)
    conversations = dialogues.generate_conversations(300, "train", seed=9, fresh_values=True, fresh_letters=1.0)
    assert conversations == dialogues.generate_conversations(300, "train", seed=9, fresh_values=True, fresh_letters=1.0)

    def fresh_words(convs):
        stated = [t for c in convs for t in c.turns if t.kind == "statement" and t.slot != "number"]
        return [t.values[-1] for t in stated if t.values[-1] not in pools[t.slot]]

    words = fresh_words(conversations)
    assert len(words) > 300
    assert not {w.lower() for w in words} & heldout  # held out in no casing
    assert all(3 <= len(w) <= 10 for w in words)
    # letter pairs that syllable words never have, and doubled letters, twice as often as there
    assert not any(re.search("ph|ch|ck|sh", w.lower()) for w in fresh_words(syllable_only))
    assert sum(bool(re.search("ph|ch|ck|sh", w.lower())) for w in words) > 0.05 * len(words)

    def doubled(ws):
        return sum(bool(re.search(r"([a-z])\1", w.lower())) for w in ws) / len(ws)

    assert doubled(words) > 2 * doubled(fresh_words(syllable_only))


def test_fresh_letter_draws_are_pinned():
    """benchmarks/train_demo.sh reproduces the demo only while this stream stays the same."""
    slot = dialogues.build_slots(True, True, 1.0)["color"]
    rng = random.Random("pin")
    drawn = [slot.sample("train", rng)["v"] for _ in range(8)]
    assert drawn == ["ren", "duvile", "wilin", "zezoba", "dohangs", "prookyiv", "wiso", "brow"]


def test_rxt_eval_reports_a_damaged_jsonl_file_in_one_line(tmp_path, capsys):
    from rxt_mlx.bench.cli import evaluate

    path = tmp_path / "bad.jsonl"
    path.write_text('{"turns": [\n')
    assert evaluate(["--data", str(path)]) == 1
    expected = f"rxt-eval: error: {path}:1: not valid JSON (Expecting value: line 2 column 1 (char 12))\n"
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize("option", ["--conversations", "--max-tokens"])
def test_rxt_eval_refuses_a_count_below_one(option, capsys):
    from rxt_mlx.bench.cli import evaluate

    with pytest.raises(SystemExit) as exit_info:
        evaluate([option, "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"rxt-eval: error: {option} must be at least 1, got 0"
