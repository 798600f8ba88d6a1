"""The sharded-checkpoint path end to end, at a reduced size.

A tiny RxT-Beta-like config is written by the real-size checkpoint writer
(benchmarks/real_size/make_checkpoints.py) as an rxlm checkpoint in several safetensors shards
with an index, converted by ``rxt-convert`` into several MLX shards, loaded lazily by
``rxt_mlx.load`` and run for one ``Session`` turn: the numbers equal the PyTorch reference's on
the same weights, and the answer equals that of a single-file conversion.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from rxt_convert.convert import main, parse_size
from rxt_convert.reference import RxTReference
from rxt_convert.reference.checkpoint import load_state, rxlm_config_dict
from safetensors.torch import load_file

import rxt_mlx
from rxt_mlx.model import INDEX_FILE, SINGLE_FILE, load_model, save_model
from rxt_mlx.session import AnswerDone, Session, TokenEvent
from rxt_mlx.weights import WeightError
from tests.factories import beta_config, random_mlx_model, tiny_config

TOLERANCE = 1e-4
SOURCE_SHARD_BYTES = 600_000
OUTPUT_SHARD_BYTES = 400_000
QUERY = "Hi, I'm Ann. What is my name?"


@pytest.fixture(scope="module")
def checkpoint_writer():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "real_size" / "make_checkpoints.py"
    spec = importlib.util.spec_from_file_location("make_checkpoints", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def converted(tmp_path_factory, checkpoint_writer):
    """The rxlm checkpoint (fp32, several shards) and its sharded and single-file conversions."""
    folder = tmp_path_factory.mktemp("sharded")
    source = folder / "rxlm"
    written = checkpoint_writer.write_checkpoint(
        rxlm_config_dict(beta_config()), source, dtype=torch.float32, max_shard_size=SOURCE_SHARD_BYTES
    )
    sharded, single = folder / "mlx-sharded", folder / "mlx-single"
    assert main([str(source), str(sharded), "--max-shard-size", f"{OUTPUT_SHARD_BYTES}B", "--no-progress"]) == 0
    assert main([str(source), str(single), "--no-progress"]) == 0
    return source, written, sharded, single


def test_the_writer_shards_like_huggingface_hub(converted):
    source, written, _, _ = converted
    index = json.loads((source / INDEX_FILE).read_text())
    shards = sorted(path.name for path in source.glob("model-*.safetensors"))
    assert len(shards) >= 3 and shards == written["files"]
    assert shards == [f"model-{number:05d}-of-{len(shards):05d}.safetensors" for number in range(1, len(shards) + 1)]
    stored = {name: shard for shard in shards for name in load_file(source / shard)}
    assert stored == index["weight_map"] and index["metadata"]["total_size"] == written["bytes"] - _headers(source)
    assert "decoder.model.embedding.weight" in stored and "encoder.model.embedding.weight" not in stored
    assert "memory_attention.model.stm.memory" not in stored and "decoder.model.stm.memory" in stored
    config = json.loads((source / "config.json").read_text())
    assert {"decoder_config", "encoder_config", "memory_attention_config", "tokenizer_config"} <= set(config)
    assert config["memory_attention_variant"] == "grouped-self-interlayer" and (source / "tokenizer.json").is_file()


def _headers(folder: Path) -> int:
    """Bytes of the safetensors headers (8-byte length + JSON) of a folder's shards."""
    total = 0
    for path in folder.glob("model-*.safetensors"):
        with open(path, "rb") as file:
            total += 8 + int.from_bytes(file.read(8), "little")
    return total


def test_rxt_convert_writes_shards_with_an_index(converted):
    _, _, sharded, single = converted
    index = json.loads((sharded / INDEX_FILE).read_text())
    shards = sorted(path.name for path in sharded.glob("model-*.safetensors"))
    assert len(shards) >= 3 and not (sharded / SINGLE_FILE).exists()
    assert shards == [f"model-{number:05d}-of-{len(shards):05d}.safetensors" for number in range(1, len(shards) + 1)]
    where: dict[str, list[str]] = {}
    sizes = {}
    for shard in shards:
        weights = mx.load(str(sharded / shard))
        sizes[shard] = sum(array.nbytes for array in weights.values())
        assert sizes[shard] <= OUTPUT_SHARD_BYTES or len(weights) == 1
        for name in weights:
            where.setdefault(name, []).append(shard)
    assert all(len(files) == 1 for files in where.values())  # every weight in exactly one shard
    assert index["weight_map"] == {name: files[0] for name, files in where.items()}
    assert index["metadata"]["total_size"] == sum(sizes.values())
    whole = mx.load(str(single / SINGLE_FILE))
    assert set(whole) == set(where) and not (single / INDEX_FILE).exists()
    assert sum(array.nbytes for array in whole.values()) == index["metadata"]["total_size"]


def test_one_turn_matches_the_reference_and_the_single_file(converted):
    source, written, sharded, single = converted
    reference = RxTReference(beta_config()).eval()
    load_state(reference, {k: v for shard in written["files"] for k, v in load_file(source / shard).items()}, "rxlm")

    already_held = mx.get_active_memory()  # arrays earlier tests of this process still hold
    mx.reset_peak_memory()
    model, tokenizer = rxt_mlx.load(sharded)
    weight_bytes = json.loads((sharded / INDEX_FILE).read_text())["metadata"]["total_size"]
    # lazy: each weight read once, the random init never made
    assert mx.get_peak_memory() - already_held <= 1.2 * weight_bytes
    single_model, single_tokenizer = rxt_mlx.load(single)
    assert model.fingerprint == single_model.fingerprint

    stm = model.initial_stm(1, seed=0)
    prompt = tokenizer.query_ids(QUERY)
    with torch.no_grad():
        expected = reference.decoder(torch.tensor([prompt]), torch.from_numpy(np.array(stm)))
    logits = np.array(model.decoder(mx.array([prompt], dtype=mx.int32), stm))
    assert np.abs(logits - expected.numpy()).max() < TOLERANCE

    answers, stms = [], []
    for loaded, loaded_tokenizer in ((model, tokenizer), (single_model, single_tokenizer)):
        session = Session(loaded, loaded_tokenizer, stm=stm)
        events = list(session.interact(QUERY, max_tokens=6, temperature=0.0))
        answers.append([event.id for event in events if isinstance(event, TokenEvent)])
        assert any(isinstance(event, AnswerDone) for event in events) and session.turn == 1
        stms.append(np.array(session.stm))
    assert answers[0] == answers[1] and len(answers[0]) >= 1
    assert answers[0][0] == int(expected[0, -1].argmax())
    np.testing.assert_array_equal(stms[0], stms[1])
    with torch.no_grad():
        updated = reference.update_memory(torch.from_numpy(np.array(stm)), torch.tensor([prompt + answers[0]]))
    assert np.abs(stms[0] - updated.numpy()).max() < TOLERANCE


def test_save_model_replaces_the_weight_files_of_an_earlier_save(tmp_path):
    model = random_mlx_model(tiny_config(), seed=0)
    folder = save_model(model, tmp_path / "model", max_shard_bytes=20_000)
    assert (folder / INDEX_FILE).is_file() and len(list(folder.glob("model-*.safetensors"))) >= 2
    assert load_model(folder).fingerprint == model.fingerprint
    save_model(model, folder)
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", SINGLE_FILE]
    assert load_model(folder).fingerprint == model.fingerprint


def test_a_weight_in_two_shards_is_refused(tmp_path):
    folder = save_model(random_mlx_model(tiny_config(), seed=0), tmp_path / "model", max_shard_bytes=20_000)
    first, second = sorted(folder.glob("model-*.safetensors"))[:2]
    weights = mx.load(str(second))
    weights.update(dict(list(mx.load(str(first)).items())[:1]))
    mx.save_safetensors(str(second), weights)
    with pytest.raises(WeightError, match="also stored in another shard"):
        load_model(folder)


@pytest.mark.parametrize(
    ("text", "size"), [("5GiB", 5 << 30), ("500MB", 500_000_000), ("64 KB", 64_000), ("1.5kib", 1536), ("123", 123)]
)
def test_shard_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "5 parsecs", "-1GB", "0", "0.1B"])
def test_bad_shard_sizes(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a size"):
        parse_size(text)
