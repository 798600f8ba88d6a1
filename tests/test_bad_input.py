"""Bad input gets a sentence, never a traceback, and loses nothing.

Damaged model folders, weights of the wrong dtype, STMs full of NaN, legacy ``torch.save``
files and impossible tokenizer sizes each have a case; Hypothesis then throws many generated
inputs at the STM reader and the config readers, which must either load or raise the
project's own :class:`rxt_mlx.errors.RxTError`.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rxt_convert.convert import main as convert_main
from rxt_convert.reference import RxTReference
from rxt_convert.tokenizer_train import TokenizerTrainingError, train_tokenizer

import rxt_mlx
from rxt_mlx import stm as stm_file
from rxt_mlx.bench import dialogues
from rxt_mlx.config import ConfigError, RxTConfig, TokenizerConfig
from rxt_mlx.errors import RxTError
from rxt_mlx.model import save_model
from rxt_mlx.stm import STMCorruptError, STMFileError, load_stm, save_stm
from rxt_mlx.weights import WeightError
from tests.factories import VOCAB_SIZE, random_mlx_model, tiny_config, write_model_folder
from tests.tokenizer_factories import write_bpe_tokenizer

BIN = Path(sys.executable).parent
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), tiny_config(), tokenizer_writer=write_bpe_tokenizer)


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    target.mkdir()
    for file in folder.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def _command(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=300)


def test_truncated_weights_are_a_sentence_from_the_library_and_the_command(model_folder, tmp_path):
    folder = _copy(model_folder, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(WeightError, match="model.safetensors: cannot read the weights .*damaged or incomplete"):
        rxt_mlx.load(folder)
    result = _command("rxt-eval", "--model", str(folder), "--conversations", "1")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("rxt-eval: error: ")
    assert "cannot read the weights" in result.stderr and "Traceback" not in result.stderr
    debug = _command("rxt-eval", "--model", str(folder), "--conversations", "1", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "WeightError" in debug.stderr


def test_damaged_weights_header_is_refused(model_folder, tmp_path):
    folder = _copy(model_folder, tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[12] ^= 0xFF  # inside the JSON header
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightError, match="cannot read the weights"):
        rxt_mlx.load(folder)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "expected a JSON object of config values, got a JSON list"),
        ("{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_config_that_is_not_an_object_is_refused(model_folder, tmp_path, content, message):
    folder = _copy(model_folder, tmp_path)
    config = folder / "config.json"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message):
        rxt_mlx.load(folder)


def test_weight_of_the_wrong_dtype_is_refused(tmp_path):
    model = random_mlx_model(tiny_config(), seed=0)
    weight = model.decoder.layers[0].attention.q_proj.weight
    model.decoder.layers[0].attention.q_proj.weight = (weight * 100).astype(mx.int32)
    save_model(model, tmp_path)
    with pytest.raises(WeightError, match=r"1 dtype mismatches: decoder\.layers\.0\.attention\.q_proj\.weight: "):
        rxt_mlx.load(tmp_path)


def test_malformed_quantization_record_is_refused(model_folder, tmp_path):
    folder = _copy(model_folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization"] = {"bits": 5, "group_size": 64}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'quantization' is"):
        rxt_mlx.load(folder)


def test_stm_with_nan_is_never_saved_nor_loaded(tmp_path):
    stm = mx.random.normal((2, 1, 8, 16), key=mx.random.key(0))
    poisoned = stm.at[0, 0, 3, 5].add(mx.array(float("nan")))
    path = tmp_path / "nan.stm"
    with pytest.raises(STMFileError, match="refusing to save an STM holding NaN"):
        save_stm(path, poisoned, model_fingerprint="m", turn=1)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    # a file with a valid checksum over NaN bytes, as another writer could have made it
    metadata = save_stm(path, stm, model_fingerprint="m", turn=1)
    tensors = {"stm": poisoned}
    metadata = {**metadata, "checksum": stm_file.checksum(poisoned)}
    with open(path, "wb") as file:  # a path without the .safetensors suffix would get one appended
        mx.save_safetensors(file, tensors, metadata=metadata)
    with pytest.raises(STMCorruptError, match="NaN or infinite"):
        load_stm(path, model_fingerprint="m", expected_shape=(2, 1, 8, 16), expected_dtype=mx.float32)


def test_legacy_torch_save_checkpoint_converts(tmp_path, capsys):
    """A pre-zip ``torch.save`` file cannot be memory-mapped; the converter reads it whole instead."""
    config = tiny_config()
    torch.manual_seed(0)
    reference = RxTReference(config)
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    checkpoint = {"config": config.to_dict(), "model": reference.state_dict()}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    write_bpe_tokenizer(path.parent, vocab_size=VOCAB_SIZE)
    assert convert_main([str(path), str(tmp_path / "out")]) == 0
    model, _ = rxt_mlx.load(tmp_path / "out")
    ids = [[2, 4, 20, 21, 5]]
    stm = model.initial_stm(1, seed=0)
    expected = reference.decoder(torch.tensor(ids), torch.from_numpy(np.array(stm))).detach().numpy()
    np.testing.assert_allclose(np.array(model.decoder(mx.array(ids), stm)), expected, atol=1e-4)


@pytest.mark.parametrize(
    ("vocab_size", "message"),
    [(120, r"vocab_size 120 is too small .* set vocab_size to at least \d+"), (6000, r"set vocab_size to at most \d+")],
)
def test_tokenizer_size_the_text_cannot_fit_says_what_to_change(tmp_path, vocab_size, message):
    lines = dialogues.template_lines(dialogues.generate_conversations(10, "train", 0))
    with pytest.raises(TokenizerTrainingError, match=message):
        train_tokenizer(lines, tmp_path, vocab_size=vocab_size)


def test_rxt_train_with_a_tiny_vocabulary_is_one_line(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"vocab_size": 100, "tokenizer_conversations": 20}))
    result = _command("rxt-train", "--config", str(config), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("rxt-train: error: vocab_size 100 is too small")


def test_closed_stdout_ends_quietly():
    result = subprocess.run(
        f"'{BIN / 'rxt-bench'}' --help | head -c 3", shell=True, capture_output=True, text=True, timeout=120
    )
    assert result.stdout == "usa" and result.stderr == ""


# --- fuzzing -------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _mutated(values: dict, paths: list[tuple[str, ...]], choice: int, replacement) -> dict:
    """``values`` with the entry at ``paths[choice]`` replaced (or deleted when ``replacement`` is ...)."""
    mutated = copy.deepcopy(values)
    *parents, key = paths[choice % len(paths)]
    target = mutated
    for parent in parents:
        target = target[parent]
    if replacement is Ellipsis:
        del target[key]
    else:
        target[key] = replacement
    return mutated


def _leaf_paths(values: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in values.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths.extend(_leaf_paths(value, (*prefix, key)))
    return paths


VALID_CONFIG = tiny_config().to_dict()
CONFIG_PATHS = _leaf_paths(VALID_CONFIG)


@FUZZ
@given(choice=st.integers(0, 10_000), replacement=JSON | st.just(Ellipsis))
def test_fuzz_rxt_config_from_dict_raises_only_config_errors(choice, replacement):
    values = _mutated(VALID_CONFIG, CONFIG_PATHS, choice, replacement)
    try:
        RxTConfig.from_dict(values)
    except ConfigError as error:
        assert str(error)


@FUZZ
@given(values=JSON)
def test_fuzz_any_json_as_config(values):
    for reader in (RxTConfig.from_dict, TokenizerConfig.from_dict):
        try:
            reader(values)
        except ConfigError as error:
            assert str(error)


@FUZZ
@given(choice=st.integers(0, 10_000), replacement=JSON | st.just(Ellipsis), as_text=st.booleans())
def test_fuzz_model_folder_config_loads_or_says_why(model_folder, tmp_path_factory, choice, replacement, as_text):
    folder = _copy(model_folder, tmp_path_factory.mktemp("fuzz"))
    values = json.loads((folder / "config.json").read_text())
    mutated = _mutated(values, _leaf_paths(values), choice, replacement)
    (folder / "config.json").write_text(json.dumps(mutated if not as_text else str(replacement)))
    try:
        rxt_mlx.load(folder)
    except RxTError as error:
        assert str(error)


@FUZZ
@given(choice=st.integers(0, 10_000), replacement=JSON | st.just(Ellipsis))
def test_fuzz_rxlm_folder_config_converts_or_says_why(tmp_path_factory, choice, replacement):
    """The converter's reader of rxlm's config.json, on a real rxlm folder whose config is mutated."""
    folder = _rxlm_folder(tmp_path_factory)
    values = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(_mutated(values, _leaf_paths(values), choice, replacement)))
    out = folder.parent / "out"
    try:
        from rxt_convert.convert import Options, convert

        convert(Options(source=folder, output=out))
    except RxTError as error:
        assert str(error)
        assert not out.exists()  # nothing half-written


_RXLM_TEMPLATE: dict[str, bytes] = {}


def _rxlm_folder(tmp_path_factory) -> Path:
    if not _RXLM_TEMPLATE:
        from rxt_convert.reference.checkpoint import save_rxlm

        torch.manual_seed(0)
        template = tmp_path_factory.mktemp("rxlm")
        save_rxlm(RxTReference(tiny_config()), template)
        write_bpe_tokenizer(template, vocab_size=VOCAB_SIZE)
        _RXLM_TEMPLATE.update({file.name: file.read_bytes() for file in template.iterdir()})
    folder = tmp_path_factory.mktemp("source") / "rxlm"
    folder.mkdir()
    for name, data in _RXLM_TEMPLATE.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def stm_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("stm") / "valid.stm"
    save_stm(path, mx.random.normal((2, 1, 8, 16), key=mx.random.key(1)), model_fingerprint="m", turn=2)
    return path.read_bytes()


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 2**20),
    junk=st.binary(max_size=64),
)
def test_fuzz_stm_reader_loads_or_refuses(stm_bytes, tmp_path_factory, edits, cut, junk):
    data = bytearray(stm_bytes)
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)] + junk
    path = tmp_path_factory.mktemp("fuzz") / "x.stm"
    path.write_bytes(bytes(data))
    try:
        stm, metadata = load_stm(path, model_fingerprint="m", expected_shape=(2, 1, 8, 16), expected_dtype=mx.float32)
    except STMFileError as error:
        assert str(error)
    else:
        assert bool(mx.all(mx.isfinite(stm)).item()) and int(metadata["turn"]) >= 0
