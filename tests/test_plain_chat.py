"""``rxt-chat --plain`` end to end: three turns, exit, resume from the saved STM in a new process;
line endings, a memory folder that cannot be written, leftovers of a killed run, a closed stdout,
one-line errors; fuzzing of stdin; a kill -9 campaign."""

from __future__ import annotations

import fcntl
import io
import os
import random
import subprocess
import sys
import time
from types import SimpleNamespace

import mlx.core as mx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rxt_app.cli import main
from rxt_app.plain import LINE_END, chat, query_lines
from rxt_app.storage import MIGRATIONS, Storage, StorageError

import rxt_mlx
from rxt_mlx.sampling import SamplingOptions
from rxt_mlx.session import Session, TokenEvent
from rxt_mlx.stm import load_stm, temp_file_target
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


def run_main(monkeypatch, argv: list[str], stdin: bytes = b"") -> int:
    """``rxt-chat`` in this process, reading ``stdin`` as the bytes of its standard input."""
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(stdin)))
    return main(argv)


def test_cr_crlf_and_lf_all_end_a_query(model_dir, monkeypatch, capsys):
    queries = ["Hi, I'm Ann.", "I like tea.", "What is my name?", "Bye"]
    stdin = "\r".join(queries[:2]).encode() + b"\r\n" + queries[2].encode() + b"\n" + queries[3].encode()
    assert run_main(monkeypatch, ["--plain", "--model", str(model_dir), "--max-tokens", str(MAX_TOKENS)], stdin) == 0
    model, tokenizer = rxt_mlx.load(model_dir)
    reference = Session(model, tokenizer)
    assert capsys.readouterr().out == "".join(streamed_answer(reference, query) for query in queries)


class Trickle(io.RawIOBase):
    """A stream that hands out ``data`` a few bytes per read, as a pipe may."""

    def __init__(self, data: bytes, sizes: list[int]):
        self.data, self.sizes = data, sizes or [1]
        self.reads = 0

    def read1(self, size: int = -1) -> bytes:
        count = self.sizes[self.reads % len(self.sizes)]
        self.reads += 1
        chunk, self.data = self.data[:count], self.data[count:]
        return chunk


LINE_BYTES = st.lists(
    st.binary(max_size=12)
    | st.sampled_from([b"\r", b"\n", b"\r\n", b"\0", b"\xff\xfe", b"\xe2\x82", b"\xac", b"\x1b[2J", "é🍕".encode()]),
    max_size=30,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=LINE_BYTES, sizes=st.lists(st.integers(1, 7), max_size=5))
def test_fuzz_query_lines_split_any_bytes_like_the_whole_text(data, sizes):
    lines = [line for line in query_lines(Trickle(data, sizes)) if line]
    assert lines == [line for line in LINE_END.split(data.decode("utf-8", errors="replace")) if line]


@pytest.fixture(scope="module")
def loaded(model_dir):
    return rxt_mlx.load(model_dir)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=LINE_BYTES | st.binary(max_size=300) | st.sampled_from([b"tea " * 200 + b"\n", b"\n" * 50, b"x" * 70_000]))
def test_fuzz_plain_stdin_is_answered_or_refused_in_a_line(loaded, data):
    """Any bytes on stdin: each non-empty line is answered, or refused with one line on stderr."""
    session = Session(*loaded)
    out, log = io.StringIO(), io.StringIO()
    status = chat(session, SamplingOptions(max_tokens=2), None, io.BytesIO(data), out, log)
    queries = [line for line in LINE_END.split(data.decode("utf-8", errors="replace")) if line.strip()]
    refusals = log.getvalue().count("rxt-chat: ")
    assert log.getvalue().count("\n") == refusals and status == (1 if refusals else 0)
    assert session.turn + refusals == len(queries)


@pytest.mark.parametrize("blocked", ["parent is a file", "permission denied"])
def test_a_memory_folder_that_cannot_be_written_is_refused_before_the_model_loads(
    model_dir, tmp_path, monkeypatch, capsys, blocked
):
    if blocked == "parent is a file":
        (tmp_path / "file").write_text("")
        stm_path = tmp_path / "file" / "chat.stm"
    else:
        stm_path = tmp_path / "chat.stm"

        def refuse(**kwargs):
            raise PermissionError(13, "Permission denied", str(tmp_path / ".chat.stm.x.tmp"))

        monkeypatch.setattr("rxt_app.plain.tempfile.mkstemp", refuse)
    assert run_main(monkeypatch, ["--plain", "--model", str(model_dir), "--stm", str(stm_path)], b"Hi\n") == 2
    output = capsys.readouterr()
    assert output.out == "" and output.err.count("\n") == 1 and "model:" not in output.err
    assert output.err.startswith(f"rxt-chat: cannot start: {stm_path}: cannot save the memory there (")
    assert not stm_path.exists()


def test_temp_files_of_a_killed_run_are_removed_at_start_but_not_a_running_save(model_dir, tmp_path, monkeypatch):
    stm_path = tmp_path / "chat.stm"
    killed = tmp_path / ".chat.stm.k1ll3d.tmp"
    killed.write_bytes(b"half an STM")
    another_file = tmp_path / ".other.stm.k1ll3d.tmp"
    another_file.write_bytes(b"not ours to remove")
    running = os.open(tmp_path, os.O_RDONLY)  # a save into this folder is running, in some process
    fcntl.flock(running, fcntl.LOCK_SH)
    argv = ["--plain", "--model", str(model_dir), "--stm", str(stm_path), "--max-tokens", "2"]
    assert run_main(monkeypatch, argv) == 0
    assert killed.exists()
    os.close(running)
    assert run_main(monkeypatch, argv, b"Hi\n") == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [another_file.name, stm_path.name]


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_ends_quietly(model_dir, capsys, monkeypatch):  # capsys first: torn down last
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert run_main(monkeypatch, ["--plain", "--model", str(model_dir), "--max-tokens", "4"], b"Hi\nHello\n") == 141
    assert capsys.readouterr().err.startswith("model: ")  # and nothing else
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_rxt_chat_piped_into_head_ends_quietly(model_dir):
    command = [sys.executable, "-m", "rxt_app.cli", "--plain", "--model", str(model_dir), "--max-tokens", "8"]
    result = subprocess.run(
        f"yes Hello | head -n 500 | {' '.join(command)} | head -c 3", shell=True, capture_output=True, timeout=300
    )
    assert len(result.stdout) == 3
    assert result.stderr.decode().splitlines()[1:] == [] and b"Traceback" not in result.stderr


def test_project_errors_are_one_line_and_debug_shows_the_traceback(model_dir, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    Storage(data).close()
    with Storage(data)._transaction() as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    argv = ["--model", str(model_dir), "--data-dir", str(data)]
    assert run_main(monkeypatch, argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("rxt-chat: error: ") and "newer version" in error and error.count("\n") == 1
    with pytest.raises(StorageError, match="newer version"):
        run_main(monkeypatch, [*argv, "--debug"])


@pytest.mark.slow
def test_kill_9_campaign_plain_mode_with_a_memory_file(model_dir, tmp_path):
    """20 kills (seeded) at random moments of a chat saving its memory after every turn."""
    rng = random.Random(15)
    stm_path = tmp_path / "memory" / "chat.stm"
    model, tokenizer = rxt_mlx.load(model_dir)
    shape = Session(model, tokenizer).stm_shape
    command = [sys.executable, "-m", "rxt_app.cli", "--plain", "--model", str(model_dir), "--stm", str(stm_path)]
    turns, leftovers = [0], 0
    for _ in range(20):
        process = subprocess.Popen(
            [*command, "--max-tokens", "3"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        process.stdin.write(b"Hi, I'm Ann.\rWhat is my name?\n" * 300)
        process.stdin.flush()
        while not process.stderr.readline().startswith(b"model: "):
            assert process.poll() is None, process.stderr.read().decode()
        time.sleep(rng.uniform(0.0, 0.4))
        process.kill()
        process.wait()
        if stm_path.exists():  # the memory of the last saved turn, never an older one
            _, metadata = load_stm(stm_path, model_fingerprint=model.fingerprint, expected_shape=shape)
            turns.append(int(metadata["turn"]))
            assert turns[-1] >= turns[-2]
        strays = [path for path in stm_path.parent.iterdir() if path != stm_path]
        assert all(temp_file_target(path.name) == stm_path.name for path in strays), strays
        leftovers += len(strays)
    final = subprocess.run(command, input=b"", capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr.decode()
    assert list(stm_path.parent.iterdir()) == [stm_path] and turns[-1] > 0
