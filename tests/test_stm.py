"""STM file: bit-exact round trip, every refusal, atomic save, removal of a killed save's temp file."""

from __future__ import annotations

import fcntl
import os

import mlx.core as mx
import pytest

from rxt_mlx import stm as stm_file
from rxt_mlx.stm import (
    STMCorruptError,
    STMFormatError,
    STMModelMismatchError,
    STMShapeError,
    STMVersionError,
    load_stm,
    remove_temp_files,
    save_stm,
    temp_file_target,
)

SHAPE = (2, 1, 8, 16)
FINGERPRINT = "model-abc"


def random_stm(seed: int, dtype=mx.float32) -> mx.array:
    return mx.random.normal(SHAPE, key=mx.random.key(seed)).astype(dtype)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "conversation.stm"
    stm = random_stm(0)
    save_stm(path, stm, model_fingerprint=FINGERPRINT, turn=3)
    return path, stm


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    path = tmp_path / "a.stm"
    stm = random_stm(1, dtype)
    written = save_stm(path, stm, model_fingerprint=FINGERPRINT, turn=7, created="2026-01-01T00:00:00+00:00")
    loaded, metadata = load_stm(path, model_fingerprint=FINGERPRINT, expected_shape=SHAPE, expected_dtype=dtype)
    assert loaded.dtype == dtype
    assert mx.array_equal(loaded, stm).item()
    assert mx.array_equal(loaded.view(mx.uint8), stm.view(mx.uint8)).item()
    assert metadata == written
    assert metadata["format"] == "rxt-stm"
    assert metadata["turn"] == "7"
    assert metadata["created"] == "2026-01-01T00:00:00+00:00"
    assert metadata["model_fingerprint"] == FINGERPRINT


def test_truncated_file_is_refused(saved):
    path, _ = saved
    data = path.read_bytes()
    for size in (4, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:size])
        with pytest.raises(STMCorruptError, match="truncated"):
            load_stm(path, model_fingerprint=FINGERPRINT, expected_shape=SHAPE)


def test_corrupted_tensor_bytes_are_refused(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(STMCorruptError, match="checksum"):
        load_stm(path, model_fingerprint=FINGERPRINT, expected_shape=SHAPE)


def test_corrupted_header_is_refused(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[10] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(STMCorruptError, match="header"):
        load_stm(path, model_fingerprint=FINGERPRINT)


def test_foreign_model_is_refused(saved):
    path, _ = saved
    with pytest.raises(STMModelMismatchError, match="another model"):
        load_stm(path, model_fingerprint="model-xyz", expected_shape=SHAPE)


def test_other_format_version_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "future.stm"
    monkeypatch.setattr(stm_file, "FORMAT_VERSION", "99")
    save_stm(path, random_stm(2), model_fingerprint=FINGERPRINT, turn=1)
    monkeypatch.undo()
    with pytest.raises(STMVersionError, match="'99'"):
        load_stm(path, model_fingerprint=FINGERPRINT, expected_shape=SHAPE)


def test_wrong_shape_and_dtype_are_refused(saved):
    path, _ = saved
    with pytest.raises(STMShapeError, match=r"\(2, 1, 8, 16\).*\(2, 1, 4, 16\)"):
        load_stm(path, model_fingerprint=FINGERPRINT, expected_shape=(2, 1, 4, 16))
    with pytest.raises(STMShapeError, match="bfloat16"):
        load_stm(path, model_fingerprint=FINGERPRINT, expected_dtype=mx.bfloat16)


def test_metadata_disagreeing_with_tensor_is_refused(tmp_path):
    path = tmp_path / "lying.stm"
    good = tmp_path / "good.stm"
    metadata = save_stm(good, random_stm(3), model_fingerprint=FINGERPRINT, turn=1)
    with open(path, "wb") as file:
        mx.save_safetensors(file, {"stm": random_stm(3)[:, :, :4]}, metadata=metadata)
    with pytest.raises(STMShapeError, match="metadata says"):
        load_stm(path, model_fingerprint=FINGERPRINT)


def test_not_an_stm_file_is_refused(tmp_path):
    other = tmp_path / "weights.safetensors"
    with open(other, "wb") as file:
        mx.save_safetensors(file, {"stm": random_stm(4)})
    with pytest.raises(STMFormatError, match="not an rxt-stm file"):
        load_stm(other, model_fingerprint=FINGERPRINT)
    text = tmp_path / "notes.stm"
    text.write_text("hello, this is not a safetensors file at all")
    with pytest.raises(STMCorruptError):
        load_stm(text, model_fingerprint=FINGERPRINT)


def test_interrupted_save_keeps_the_old_file(saved, monkeypatch):
    path, old = saved

    def failing_replace(source, target):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_stm(path, random_stm(5), model_fingerprint=FINGERPRINT, turn=4)
    monkeypatch.undo()
    loaded, metadata = load_stm(path, model_fingerprint=FINGERPRINT, expected_shape=SHAPE)
    assert mx.array_equal(loaded, old).item()
    assert metadata["turn"] == "3"
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_temp_files_of_killed_saves_are_removed_but_not_a_running_saves(tmp_path):
    killed = tmp_path / ".k.stm.a1b2c3d4.tmp"
    other = tmp_path / ".other.stm.x_9.tmp"
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / "k.stm"]
    for path in (killed, other, *kept):
        path.write_bytes(b"partial")
    assert [temp_file_target(path.name) for path in (killed, other, *kept)] == ["k.stm", "other.stm", None, None, None]
    running = os.open(tmp_path, os.O_RDONLY)  # what save_stm holds while its temp file exists (any process)
    fcntl.flock(running, fcntl.LOCK_SH)
    assert remove_temp_files(tmp_path, "k.stm") == [] and killed.exists()
    os.close(running)
    assert remove_temp_files(tmp_path, "k.stm") == [killed]
    assert remove_temp_files(tmp_path) == [other]
    assert sorted(os.listdir(tmp_path)) == sorted(path.name for path in kept)
    assert remove_temp_files(tmp_path / "missing") == []


def test_a_sweep_during_a_save_leaves_its_temp_file(tmp_path, monkeypatch):
    swept = []
    write = mx.save_safetensors

    def sweep_while_writing(file, *args, **kwargs):
        swept.append(remove_temp_files(tmp_path))  # another process starting now
        write(file, *args, **kwargs)

    monkeypatch.setattr(mx, "save_safetensors", sweep_while_writing)
    save_stm(tmp_path / "k.stm", random_stm(2), model_fingerprint=FINGERPRINT, turn=1)
    assert swept == [[]] and os.listdir(tmp_path) == ["k.stm"]


def test_save_rejects_batched_stm(tmp_path):
    with pytest.raises(STMShapeError, match="expected"):
        save_stm(tmp_path / "b.stm", mx.zeros((2, 2, 8, 16)), model_fingerprint=FINGERPRINT, turn=0)
