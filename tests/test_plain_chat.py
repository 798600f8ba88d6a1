"""``rxt-chat --plain`` end to end: three turns, exit, resume from the saved STM in a new process."""

from __future__ import annotations

import io
import subprocess
import sys

import mlx.core as mx
import pytest
from rxt_app.cli import main

import rxt_mlx
from rxt_mlx.session import Session, TokenEvent
from rxt_mlx.stm import load_stm
from tests.factories import tiny_config, write_model_folder
from tests.tokenizer_factories import write_bpe_tokenizer

QUERIES = ["Hi, I'm Ann.", "I like pizza 🍕.", "What is my name?"]
MAX_TOKENS = 6


def run_chat(*args, stdin=""):
    command = [sys.executable, "-m", "rxt_app.cli", "--plain", *map(str, args)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, encoding="utf-8", timeout=300)


def streamed_answer(session, query):
    events = list(session.interact(query, max_tokens=MAX_TOKENS))
    return "".join(event.text for event in events if isinstance(event, TokenEvent)) + "\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_folder(
        tmp_path_factory.mktemp("model"), tiny_config(), seed=5, tokenizer_writer=write_bpe_tokenizer
    )


@pytest.mark.slow
def test_three_turns_then_resume_in_a_new_process(model_dir, tmp_path):
    stm_path = tmp_path / "memory" / "chat.stm"
    model, tokenizer = rxt_mlx.load(model_dir)
    reference = Session(model, tokenizer)

    first = run_chat(
        "--model", model_dir, "--stm", stm_path, "--max-tokens", MAX_TOKENS, stdin="\n".join(QUERIES) + "\n"
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == "".join(streamed_answer(reference, query) for query in QUERIES)
    assert "resuming" not in first.stderr
    saved, metadata = load_stm(stm_path, model_fingerprint=model.fingerprint, expected_shape=reference.stm_shape)
    assert metadata["turn"] == "3"
    assert mx.array_equal(saved, reference.stm).item()
    restored = Session.restore(model, tokenizer, stm_path)
    assert restored.turn == 3 and mx.array_equal(restored.stm, saved).item()

    second = run_chat("--model", model_dir, "--stm", stm_path, "--max-tokens", MAX_TOKENS, stdin="And my food?\n")
    assert second.returncode == 0, second.stderr
    assert "after turn 3" in second.stderr
    assert second.stdout == streamed_answer(reference, "And my food?")
    saved, metadata = load_stm(stm_path, model_fingerprint=model.fingerprint)
    assert metadata["turn"] == "4"
    assert mx.array_equal(saved, reference.stm).item()
    assert sorted(path.name for path in stm_path.parent.iterdir()) == ["chat.stm"]


def test_refused_stm_file_stops_before_chatting_and_is_kept(model_dir, tmp_path, monkeypatch, capsys):
    stm_path = tmp_path / "chat.stm"
    stm_path.write_bytes(b"not an stm file at all")
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
    assert main(["--plain", "--model", str(model_dir), "--stm", str(stm_path)]) == 2
    output = capsys.readouterr()
    assert "cannot start" in output.err and str(stm_path) in output.err
    assert output.out == ""
    assert stm_path.read_bytes() == b"not an stm file at all"


def test_missing_or_invalid_model_folder_exits_with_2(tmp_path, capsys):
    assert main(["--plain", "--model", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--plain", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--temperature", "-1", "temperature must be >= 0"),
        ("--top-p", "0", "top_p must be in"),
        ("--max-tokens", "0", "max_tokens"),
    ],
)
def test_invalid_sampling_options_exit_with_2(option, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--plain", option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_stm_without_plain_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--stm", "x.stm"])
    assert exit_info.value.code == 2
    assert "--plain" in capsys.readouterr().err
