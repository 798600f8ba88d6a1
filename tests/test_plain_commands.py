"""``rxt-chat --plain`` commands, as in ``ollama run``: /help, /bye, /clear, /save, /load, /set;
unknown commands and bad values are one line on stderr and change nothing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rxt_app.plain import chat
from rxt_app.plain_commands import HELP

import rxt_mlx
from rxt_mlx.sampling import SamplingOptions
from rxt_mlx.session import Session, TokenEvent
from rxt_mlx.stm import load_stm
from tests.factories import tiny_config, write_model_folder
from tests.tokenizer_factories import write_bpe_tokenizer

SYSTEM = "Be brief."


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    folder = write_model_folder(
        tmp_path_factory.mktemp("model"), tiny_config(), seed=5, tokenizer_writer=write_bpe_tokenizer
    )
    return rxt_mlx.load(folder)


def run(loaded, text: str, stm_path=None, prompt: str = ""):
    """Chat over ``text``; returns (exit status, stdout, stderr lines, the Session it began with)."""
    session = Session(*loaded, system_prompt=SYSTEM)
    out, log = io.StringIO(), io.StringIO()
    status = chat(session, SamplingOptions(max_tokens=3), stm_path, io.BytesIO(text.encode()), out, log, SYSTEM, prompt)
    return status, out.getvalue(), log.getvalue().splitlines(), session


def test_help_and_bye(loaded):
    status, out, log, session = run(loaded, "/help\n/bye\nnever answered\n", prompt=">>> ")
    assert status == 0 and out == ">>> >>> "  # a prompt before each line read, no answer
    assert "\n".join(log) == HELP + "\nbye"
    assert session.turn == 0


def test_save_clear_and_load(loaded, tmp_path):
    saved = tmp_path / "after two.stm"
    status, out, log, session = run(loaded, f'hi\nhello\n/save "{saved}"\n/clear\n/load "{saved}"\nand now?\n')
    assert status == 0 and len(out.splitlines()) == 3
    assert log == [
        f"saved the memory after turn 2 to {saved}",
        "a new memory with the system prompt",
        f"loaded the memory of {saved} (after turn 2)",
    ]
    model, _ = loaded
    assert load_stm(saved, model_fingerprint=model.fingerprint)[1]["turn"] == "2"


def test_set_changes_sampling_and_bad_values_change_nothing(loaded):
    status, out, log, _ = run(
        loaded, "/set max_tokens 1\none token\n/set temperature warm\n/set top_p 2\n/set\n/frob\n/\n"
    )
    assert status == 1
    assert log == [
        "max_tokens = 1",
        "rxt-chat: temperature must be a number, not 'warm'",
        "rxt-chat: top_p must be in (0, 1], got 2.0",
        "rxt-chat: usage: /set NAME VALUE (NAME: temperature, top_p, max_tokens, seed)",
        "rxt-chat: unknown command /frob; /help lists the commands",
        "rxt-chat: unknown command /; /help lists the commands",
    ]
    reference = Session(*loaded, system_prompt=SYSTEM)
    expected = "".join(
        event.text for event in reference.generate("one token", max_tokens=1) if isinstance(event, TokenEvent)
    )
    assert out == expected + "\n"


def test_a_refused_load_keeps_the_memory_and_stm_path_follows_clear(loaded, tmp_path):
    stm_path = tmp_path / "chat.stm"
    missing = tmp_path / "missing.stm"
    status, out, log, _ = run(loaded, f"hello\n/load {missing}\nagain\n/clear\n", stm_path=stm_path)
    assert status == 1 and len(out.splitlines()) == 2
    assert log[0].startswith("rxt-chat: ") and str(missing) in log[0] and len(log) == 2
    assert log[1] == "a new memory with the system prompt"
    model, tokenizer = loaded
    stm, metadata = load_stm(stm_path, model_fingerprint=model.fingerprint)
    assert metadata["turn"] == "0"  # the --stm file holds the new memory: the system prompt's
    np.testing.assert_array_equal(np.array(stm), np.array(Session(model, tokenizer, system_prompt=SYSTEM).stm))


def test_a_message_starting_with_a_slash_is_sent_with_two(loaded):
    status, out, log, session = run(loaded, "//help me\n")
    assert status == 0 and log == [] and len(out.splitlines()) == 1
