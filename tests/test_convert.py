"""rxt-convert: checkpoint sources, canonical state, and every bad input's error message."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from rxt_convert import canonical
from rxt_convert.canonical import CanonicalError
from rxt_convert.cli import convert as convert_command
from rxt_convert.reference import RxTReference
from rxt_convert.reference.checkpoint import load_reference, save_rxlm
from rxt_convert.reference.testing import randomize_
from rxt_convert.sources import (
    SourceError,
    TensorStore,
    add_state_dict,
    add_weight_files,
    infer_variant,
    read_source,
    special_token_ids,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rxt_mlx.config import RxTConfig
from rxt_mlx.model import load_model
from tests.factories import PARITY_CONFIGS, VOCAB_SIZE, tiny_config
from tests.tokenizer_factories import tokenizer_config, write_bpe_tokenizer, write_sentencepiece_tokenizer


def store_of(state: dict[str, torch.Tensor]) -> TensorStore:
    store = TensorStore()
    add_state_dict(store, state, "", "test state")
    return store


def run_cli(argv, capsys) -> tuple[int, str]:
    """Run rxt-convert in-process; returns (exit status, stdout + stderr)."""
    try:
        status = convert_command([str(arg) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out + captured.err


# --- canonical state, from names and shapes -------------------------------------------------------


def test_plan_drops_buffers_and_takes_embedding_from_encoder():
    state = {
        "encoder.model.embedding.weight": torch.randn(10, 4),
        "decoder.model.layers.0.attention.rope.inv_freq": torch.randn(2),
        "decoder.model.layers.0.attention.rope.cache": torch.randn(8, 2),
        "memory_attention.model.stm.memory": torch.randn(2, 4, 3, 4),  # saved in batch mode
        "decoder.model.stm.memory": torch.randn(2, 1, 3, 4),
        "decoder.model.head.weight": torch.randn(10, 4),
    }
    store = store_of(state)
    planned = canonical.plan(store)
    assert sorted(planned) == ["decoder.model.embedding.weight", "decoder.model.head.weight"]
    weights = canonical.materialize(store, planned, "float32")
    np.testing.assert_array_equal(weights["decoder.model.embedding.weight"], state["encoder.model.embedding.weight"])


def test_both_embeddings_must_agree():
    table = torch.randn(10, 4)
    same = store_of({"decoder.model.embedding.weight": table, "encoder.model.embedding.weight": table.clone()})
    assert list(canonical.materialize(same, canonical.plan(same), "float32")) == ["decoder.model.embedding.weight"]
    differ = store_of({"decoder.model.embedding.weight": table, "encoder.model.embedding.weight": table + 1})
    with pytest.raises(CanonicalError, match="encoder.model.embedding.weight are both stored and differ"):
        canonical.materialize(differ, canonical.plan(differ), "float32")
    shapes = store_of({"decoder.model.embedding.weight": table, "encoder.model.embedding.weight": table[:5]})
    with pytest.raises(CanonicalError, match="shared embedding: shapes differ"):
        canonical.plan(shapes)


def legacy_experts(prefix: str, experts: int, dim: int, hidden: int) -> dict[str, torch.Tensor]:
    state = {}
    for expert in range(experts):
        state[f"{prefix}.experts.{expert}.fc1.linear.weight"] = torch.randn(2 * hidden, dim)
        state[f"{prefix}.experts.{expert}.fc1.linear.bias"] = torch.randn(2 * hidden)
        state[f"{prefix}.experts.{expert}.fc2.weight"] = torch.randn(dim, hidden)
        state[f"{prefix}.experts.{expert}.fc2.bias"] = torch.randn(dim)
    return state


def test_legacy_moe_experts_are_stacked_input_major():
    prefix = "decoder.model.layers.1.ff"
    state = legacy_experts(prefix, experts=3, dim=8, hidden=5)
    store = store_of(state)
    planned = canonical.plan(store)
    assert {key: entry.shape for key, entry in planned.items()} == {
        f"{prefix}.w1": (3, 8, 10),
        f"{prefix}.b1": (3, 10),
        f"{prefix}.w2": (3, 5, 8),
        f"{prefix}.b2": (3, 8),
    }
    weights = canonical.materialize(store, planned, "float32")
    for expert in range(3):
        np.testing.assert_array_equal(
            weights[f"{prefix}.w1"][expert], state[f"{prefix}.experts.{expert}.fc1.linear.weight"].T
        )
        np.testing.assert_array_equal(weights[f"{prefix}.w2"][expert], state[f"{prefix}.experts.{expert}.fc2.weight"].T)
        np.testing.assert_array_equal(weights[f"{prefix}.b2"][expert], state[f"{prefix}.experts.{expert}.fc2.bias"])
    config = {"decoder_config": {"use_vectorized_moe": False, "moe_bias_mode": "global"}, "encoder_config": {}}
    notes = canonical.adapt_config_for_legacy_moe(config, store)
    assert config["decoder_config"] == {"use_vectorized_moe": True, "moe_bias_mode": "local"}
    assert config["encoder_config"] == {} and len(notes) == 1


def test_legacy_moe_missing_expert_names_the_key():
    prefix = "decoder.model.layers.0.ff"
    state = legacy_experts(prefix, experts=3, dim=8, hidden=5)
    del state[f"{prefix}.experts.1.fc2.weight"]
    with pytest.raises(CanonicalError, match=r"decoder.model.layers.0.ff.experts.1.fc2.weight"):
        canonical.plan(store_of(state))


def test_check_reports_missing_unexpected_and_shapes():
    planned = canonical.plan(store_of({"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4), "c": torch.zeros(1)}))
    expected = {"a.weight": (3, 2), "b.weight": (4,), "d.weight": (5,)}
    with pytest.raises(CanonicalError) as error:
        canonical.check(planned, expected)
    message = str(error.value)
    assert "missing weight(s): d.weight" in message
    assert "unexpected weight(s) the config does not use: c" in message
    assert "shape mismatch for a.weight: expected [3, 2], got [2, 3]" in message
    canonical.check(planned, {"a.weight": (2, 3), "b.weight": (4,), "c": (1,)})


def test_dtypes_bf16_source_and_float16_overflow():
    state = {"x.weight": torch.randn(4, 4).to(torch.bfloat16), "y.weight": torch.randn(2).to(torch.bfloat16)}
    store = store_of(state)
    planned = canonical.plan(store)
    assert canonical.source_dtype(store, planned) == "bfloat16"
    weights = canonical.materialize(store, planned, "bfloat16")
    assert weights["x.weight"].dtype == mx.bfloat16
    np.testing.assert_array_equal(weights["x.weight"].astype(mx.float32), state["x.weight"].float().numpy())
    assert canonical.materialize(store, planned, "float16")["x.weight"].dtype == mx.float16
    big = store_of({"x.weight": torch.full((2,), 1e6, dtype=torch.bfloat16)})
    with pytest.raises(CanonicalError, match="x.weight: values overflow float16"):
        canonical.materialize(big, canonical.plan(big), "float16")


# --- reading checkpoints ---------------------------------------------------------------------------


def test_sharded_safetensors_and_bf16_are_read_lazily(tmp_path):
    first = {"decoder.model.a": torch.randn(3, 2).to(torch.bfloat16)}
    second = {"decoder.model.b": torch.randn(5)}
    save_file(first, tmp_path / "model-00001-of-00002.safetensors")
    save_file(second, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {"decoder.model.a": "model-00001-of-00002.safetensors"}
    weight_map["decoder.model.b"] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    store = TensorStore()
    add_weight_files(store, tmp_path)
    assert store.info("decoder.model.a").shape == (3, 2) and store.info("decoder.model.a").dtype == torch.bfloat16
    assert torch.equal(store.load("decoder.model.a"), first["decoder.model.a"])
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SourceError, match="shard file.s. missing: model-00002-of-00002.safetensors"):
        add_weight_files(TensorStore(), tmp_path)


def test_pytorch_bin_and_missing_weights(tmp_path):
    torch.save({"model.x": torch.randn(2)}, tmp_path / "pytorch_model.bin")
    store = TensorStore()
    add_weight_files(store, tmp_path, prefix="encoder.")
    assert list(store) == ["encoder.model.x"]
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(SourceError, match="no weights found .expected model.safetensors"):
        add_weight_files(TensorStore(), tmp_path)


def test_training_checkpoint_strips_wrapper_prefixes(tmp_path):
    path = tmp_path / "step-10.pt"
    torch.save({"config": {"decoder_config": {}}, "model": {"module.decoder.model.x": torch.ones(2)}, "step": 10}, path)
    source = read_source(path)
    assert list(source.tensors) == ["decoder.model.x"] and source.config == {"decoder_config": {}}
    torch.save({"weights": {}}, path)
    with pytest.raises(SourceError, match="not a training checkpoint .expected keys 'config' and 'model'"):
        read_source(path)


@pytest.mark.parametrize(
    ("parts", "config", "variant"),
    [
        (["attention_layers"], {}, "simple"),
        (["attention_layers", "self_attention_layers"], {}, "self"),
        (["attention_layers", "mean_attention_layers"], {"use_gated_residual": True}, "interlayer"),
        (["attention_layers", "mean_attention_layers", "interlayer_gate_layers"], {}, "self-interlayer"),
        (["mean_attention_layers", "interlayer_gate_layers"], {"num_groups": 3}, "grouped-self-interlayer"),
    ],
)
def test_variant_is_inferred_from_weight_names(parts, config, variant):
    store = store_of({f"memory_attention.model.{part}.0.weight": torch.zeros(1) for part in parts})
    assert infer_variant(store, config) == variant


def test_ungated_interlayer_is_ambiguous():
    store = store_of({"memory_attention.model.mean_attention_layers.0.q_proj.weight": torch.zeros(1)})
    with pytest.raises(SourceError, match="pass --variant interlayer or --variant self-interlayer"):
        infer_variant(store, {"use_gated_residual": False})


@pytest.mark.parametrize("writer", [write_bpe_tokenizer, write_sentencepiece_tokenizer])
def test_template_ids_are_read_from_the_tokenizer(tmp_path, writer):
    expected = writer(tmp_path)
    assert special_token_ids(tmp_path) == expected


# --- command line: bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["--variant", "mean"], "argument --variant: invalid choice: 'mean'"),
    ],
)
def test_bad_arguments_are_argparse_errors(tmp_path, capsys, argv, message):
    status, err = run_cli([tmp_path / "src", tmp_path / "out", *argv], capsys)
    assert status == 2 and message in err


def test_bad_sources(tmp_path, capsys):
    out = tmp_path / "out"
    status, err = run_cli([tmp_path / "nowhere", out], capsys)
    assert status == 1 and "nowhere does not exist" in err
    (tmp_path / "empty").mkdir()
    status, err = run_cli([tmp_path / "empty", out], capsys)
    assert status == 1 and "no config.json, and no decoder/, encoder/, memory_attention/" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    status, err = run_cli([bad, out], capsys)
    assert status == 1 and "bad/config.json is not valid JSON" in err
    (bad / "config.json").write_text("[1, 2]")
    status, err = run_cli([bad, out], capsys)
    assert status == 1 and "must hold a JSON object, got list" in err
    (bad / "config.json").write_text("{}")
    status, err = run_cli([bad, out], capsys)
    assert status == 1 and "no weights found" in err
    status, err = run_cli(["--decoder", bad, out], capsys)
    assert status == 1 and "missing --encoder, --memory-attention" in err
    assert not out.exists()


def test_tokenizer_config_argument_is_checked(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"tokenizer_config": tokenizer_config()}))
    save_file({"decoder.model.x": torch.zeros(1)}, folder / "model.safetensors")
    status, err = run_cli([folder, tmp_path / "out"], capsys)
    assert status == 1 and "no tokenizer (tokenizer.json or tokenizer.model) found" in err and "--tokenizer" in err
    write_bpe_tokenizer(folder)
    status, err = run_cli([folder, tmp_path / "out", "--tokenizer-config", '{"bos_token_id": 2'], capsys)
    assert status == 1 and "--tokenizer-config: '{\"bos_token_id\": 2' is neither a file nor valid JSON" in err
    status, err = run_cli([folder, tmp_path / "out", "--tokenizer-config", "[2, 3]"], capsys)
    assert status == 1 and "--tokenizer-config: expected a JSON object of token ids, got list" in err
    status, err = run_cli([folder, tmp_path / "out", "--tokenizer-config", '{"bos_token_id": 2}'], capsys)
    assert status == 1 and "missing eos_token_id" in err
    status, err = run_cli([folder, tmp_path / "out"], capsys)
    assert status == 1 and "config.json: missing or malformed decoder_config" in err
    status, err = run_cli(
        [
            folder,
            tmp_path / "out",
            "--tokenizer-config",
            '{"bos_token_id": 5, "eos_token_id": 3, "query_token_id": 4, "answer_token_id": 2}',
        ],
        capsys,
    )
    warning = "warning: tokenizer_config bos_token_id is 5, but the tokenizer has that token at id 2"
    assert status == 1 and warning in err


# --- end to end: reference checkpoints through rxt-convert ----------------------------------------


def tiny_reference(config: RxTConfig | None = None, seed: int = 0) -> RxTReference:
    return randomize_(RxTReference(config or tiny_config()), torch.Generator().manual_seed(seed)).eval()


def saved(tmp_path, reference: RxTReference | None = None, **options) -> Path:
    folder = save_rxlm(reference or tiny_reference(), tmp_path / "rxlm", **options)
    write_bpe_tokenizer(folder, vocab_size=VOCAB_SIZE)
    return folder


def assert_same_logits(reference: RxTReference, folder: Path) -> None:
    model = load_model(folder)
    ids = torch.randint(0, VOCAB_SIZE, (1, 10), generator=torch.Generator().manual_seed(5))
    stm = reference.initial_stm(1, torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = reference.decoder(ids, stm).numpy()
    got = np.array(model.decoder(mx.array(ids.numpy().astype(np.int32)), mx.array(stm.numpy())))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def edit_weights(folder: Path, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors")


def stored_dtypes(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as stored:
        return {stored.get_slice(name).get_dtype() for name in stored.keys()}


def test_full_folder_converts_and_copies_tokenizer_files(tmp_path, capsys):
    reference = tiny_reference()
    source = saved(tmp_path, reference)
    (source / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    (source / "special_tokens_map.json").write_text('{"unk_token": "[UNK]"}')
    status, _ = run_cli([source, tmp_path / "out", "--no-progress"], capsys)
    assert status == 0
    out = tmp_path / "out"
    assert sorted(path.name for path in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "rxt-mlx" and config["format_version"] == 1
    assert config["tokenizer_config"] == reference.config.tokenizer.to_dict()
    assert stored_dtypes(out) == {"F32"}
    assert_same_logits(reference, out)
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".out.")]  # staging removed


def test_sharded_checkpoint_converts(tmp_path, capsys):
    reference = tiny_reference()
    source = saved(tmp_path, reference)
    state = load_file(source / "model.safetensors")
    (source / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({key: state[key] for key in keys}, source / shard)
    weight_map = {key: shard for shard, keys in shards.items() for key in keys}
    (source / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    status, err = run_cli([source, tmp_path / "out"], capsys)
    assert status == 0, err
    assert_same_logits(reference, tmp_path / "out")


def test_sentencepiece_tokenizer_is_copied(tmp_path, capsys):
    source = save_rxlm(tiny_reference(), tmp_path / "rxlm")
    write_sentencepiece_tokenizer(tmp_path / "spm")
    status, _ = run_cli([source, tmp_path / "out", "--tokenizer", tmp_path / "spm" / "tokenizer.model"], capsys)
    assert status == 0 and (tmp_path / "out" / "tokenizer.model").is_file()


@pytest.mark.parametrize(
    ("save_dtype", "argv", "expected"),
    [
        (torch.float16, [], "float16"),  # default: the source's dtype
        (torch.bfloat16, [], "bfloat16"),
        (None, [], "float32"),
        (None, ["--dtype", "float16"], "float16"),
        (torch.bfloat16, ["--dtype", "float32"], "float32"),
    ],
)
def test_output_dtype(tmp_path, capsys, save_dtype, argv, expected):
    source = saved(tmp_path, dtype=save_dtype)
    status, err = run_cli([source, tmp_path / "out", *argv], capsys)
    assert status == 0, err
    assert stored_dtypes(tmp_path / "out") == {{"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[expected]}
    assert load_model(tmp_path / "out").dtype == getattr(mx, expected)


def test_component_folders_with_explicit_tokenizer(tmp_path, capsys):
    config = tiny_config(
        memory_attention={"use_gated_residual": True, "residual_gate_type": "elementwise"},
        memory_attention_variant="self-interlayer",
    )
    reference = tiny_reference(config)
    source = save_rxlm(reference, tmp_path / "rxlm", layout="components")
    ids = write_bpe_tokenizer(tmp_path / "tok", vocab_size=VOCAB_SIZE)
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    argv = [
        *("--decoder", source / "decoder", "--encoder", source / "encoder"),
        *("--memory-attention", source / "memory_attention"),
        *("--tokenizer", tmp_path / "tok", "--tokenizer-config", tmp_path / "ids.json"),
        tmp_path / "out",
    ]
    status, err = run_cli(argv, capsys)
    assert status == 0, err
    config_out = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config_out["memory_attention_variant"] == "self-interlayer" and config_out["tokenizer_config"] == ids
    assert_same_logits(reference, tmp_path / "out")


def test_training_checkpoint_source(tmp_path, capsys):
    reference = tiny_reference()
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    optimizer = torch.optim.AdamW(reference.parameters())
    reference.decoder(torch.zeros(1, 3, dtype=torch.long), reference.initial_stm()).sum().backward()
    optimizer.step()
    checkpoint = {  # what rxt-train writes: resumable state around the model
        "config": reference.config.to_dict(),
        "model": reference.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 7,
        "history": [{"stage": "joint", "loss": 2.5}],
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
    }
    torch.save(checkpoint, path)
    write_bpe_tokenizer(path.parent, vocab_size=VOCAB_SIZE)
    status, err = run_cli([path, tmp_path / "out"], capsys)
    assert status == 0, err
    assert_same_logits(reference, tmp_path / "out")


def test_loaded_reference_folder_roundtrip(tmp_path, capsys):
    source = saved(tmp_path)
    status, _ = run_cli([source, tmp_path / "out"], capsys)
    assert status == 0
    assert_same_logits(load_reference(source), tmp_path / "out")


def _status(tmp_path, capsys, source, *argv):
    status, err = run_cli([source, tmp_path / "out", *argv], capsys)
    assert status == 1 and not (tmp_path / "out").exists()
    return err


def test_missing_unexpected_and_mis_shaped_weights(tmp_path, capsys):
    source = saved(tmp_path)
    original = load_file(source / "model.safetensors")
    edit_weights(source, lambda state: state.pop("decoder.model.layers.1.ff.fc2.weight"))
    err = _status(tmp_path, capsys, source)
    assert "missing weight(s): decoder.model.layers.1.ff.fc2.weight" in err
    save_file(original, source / "model.safetensors")
    edit_weights(source, lambda state: state.update({"encoder.model.layers.0.extra.weight": torch.zeros(3)}))
    err = _status(tmp_path, capsys, source)
    assert "unexpected weight(s) the config does not use: encoder.model.layers.0.extra.weight" in err
    save_file(original, source / "model.safetensors")
    edit_weights(source, lambda state: state.update({"decoder.model.head.bias": torch.zeros(301)}))
    err = _status(tmp_path, capsys, source)
    assert "shape mismatch for decoder.model.head.bias: expected [300], got [301]" in err
    save_file(original, source / "model.safetensors")
    edit_weights(source, lambda state: state.pop("decoder.model.embedding.weight"))
    err = _status(tmp_path, capsys, source)
    assert "missing weight(s): decoder.model.embedding.weight" in err


@pytest.mark.parametrize(
    ("saved_settings", "config_edit", "messages"),
    [
        (
            {"use_moe": True, "num_experts": 4, "moe_top_k": 2, "num_shared_experts": 0},
            lambda decoder: decoder.pop("num_shared_experts"),  # pre-0.3.5 configs lack it; the default is 1
            ["missing weight(s): decoder.model.layers.0.ff.shared_expert.fc1.linear.bias", "num_shared_experts: 0"],
        ),
        (
            {"use_attention_output_bias": True},
            lambda decoder: decoder.update(use_attention_output_bias=False),
            [
                "unexpected weight(s) the config does not use: decoder.model.layers.0.attention.out_proj.bias",
                "hint: try use_attention_output_bias: true (the rxlm default before RxT-Beta) in decoder_config",
            ],
        ),
        (
            {"use_gated_attention": True},
            lambda decoder: decoder.update(use_gated_attention=False, use_gated_cross_attention=False),
            ["use_gated_attention: true in decoder_config", "use_gated_cross_attention: true in decoder_config"],
        ),
    ],
)
def test_config_hints_for_older_checkpoints(tmp_path, capsys, saved_settings, config_edit, messages):
    source = saved(tmp_path, tiny_reference(tiny_config(decoder=saved_settings)))
    config = json.loads((source / "config.json").read_text())
    config_edit(config["decoder_config"])
    (source / "config.json").write_text(json.dumps(config))
    err = _status(tmp_path, capsys, source)
    assert all(message in err for message in messages), err


def test_rope_base_must_match_the_stored_frequencies(tmp_path, capsys):
    source = saved(tmp_path, tiny_reference(tiny_config(rope_base=10000.0)))
    config = json.loads((source / "config.json").read_text())
    config["encoder_config"]["rope_base"] = 100000.0
    (source / "config.json").write_text(json.dumps(config))
    err = _status(tmp_path, capsys, source)
    assert "encoder.model.layers.0.attention.rope.inv_freq was built with rope_base ~10000" in err
    assert "encoder_config says rope_base 100000; set rope_base: 10000" in err


def test_embeddings_that_differ_are_refused(tmp_path, capsys):
    reference = tiny_reference()
    state = reference.state_dict()
    state["encoder.model.embedding.weight"] = state["encoder.model.embedding.weight"] + 1
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": reference.config.to_dict(), "model": state}, path)
    write_bpe_tokenizer(tmp_path, vocab_size=VOCAB_SIZE)
    err = _status(tmp_path, capsys, path)
    assert "decoder.model.embedding.weight and encoder.model.embedding.weight are both stored and differ" in err


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("decoder_config", {"attn_layer_types": ["linear", "sqa"]}, "hybrid/linear attention layers"),
        ("encoder_config", {"self_att_type": "hybrid"}, "hybrid/linear attention layers"),
        ("memory_attention_config", {"norm_type": "adaptive"}, "memory norm_type 'adaptive' is not supported"),
        ("decoder_config", {"self_att_type": "linear"}, "attention type 'linear' is not supported"),
        ("decoder_config", {"num_layers": "two"}, "num_layers must be a positive integer, got 'two'"),
        (
            "tokenizer_config",
            {"answer_token_id": 999},
            "answer_token_id 999 is outside the vocabulary (vocab_size 300)",
        ),
        ("memory_attention_variant", "gated", "memory_attention_variant 'gated' is not one of"),
    ],
)
def test_unsupported_or_malformed_config(tmp_path, capsys, section, change, message):
    source = saved(tmp_path)
    config = json.loads((source / "config.json").read_text())
    if isinstance(change, dict):
        config[section].update(change)
    else:
        config[section] = change
    (source / "config.json").write_text(json.dumps(config))
    assert message in _status(tmp_path, capsys, source)


def test_interlayer_quirk_is_explained(tmp_path, capsys):
    config = tiny_config(
        memory_attention={"use_gated_residual": True, "residual_gate_type": "static"},
        memory_attention_variant="self-interlayer",
    )
    reference = tiny_reference(config)
    source = saved(tmp_path, reference)
    values = json.loads((source / "config.json").read_text())
    values["memory_attention_variant"] = "interlayer"  # what rxlm >= 0.3.65 trained as self-interlayer
    (source / "config.json").write_text(json.dumps(values))
    assert "pass --variant self-interlayer" in _status(tmp_path, capsys, source)
    status, err = run_cli([source, tmp_path / "out", "--variant", "self-interlayer"], capsys)
    assert status == 0, err
    assert_same_logits(reference, tmp_path / "out")


def test_output_folder_is_protected(tmp_path, capsys):
    source = saved(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    status, err = run_cli([source, other], capsys)
    assert status == 1 and "already exists; pass --overwrite" in err
    status, err = run_cli([source, other, "--overwrite"], capsys)
    assert status == 1 and "is not an rxt-mlx model folder; refusing to overwrite" in err
    assert (other / "notes.txt").read_text() == "keep me"
    out = tmp_path / "out"
    assert run_cli([source, out], capsys)[0] == 0
    assert run_cli([source, out, "--overwrite", "--dtype", "float16"], capsys)[0] == 0
    assert stored_dtypes(out) == {"F16"}
    status, err = run_cli([out, tmp_path / "again"], capsys)
    assert status == 1 and "out is already an rxt-mlx model folder" in err


@pytest.fixture(scope="module")
def shape_plan_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "beta_shape_plan.py"
    spec = importlib.util.spec_from_file_location("beta_shape_plan", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shape_plan_saves_the_keys_rxlm_saves(tmp_path, shape_plan_module):
    """The plan's key-by-key "save" keeps exactly the tensors safetensors keeps (tiny beta-like config)."""
    config = PARITY_CONFIGS["beta"]()
    on_disk = load_file(save_rxlm(RxTReference(config), tmp_path) / "model.safetensors")
    assert set(shape_plan_module.saved_tensors(canonical.meta_reference(config))) == set(on_disk)
    assert "decoder.model.final_stateless_layers.0.attention.rope.cache" in on_disk


def test_rxt_beta_shape_plan_without_memory(shape_plan_module):
    """The published RxT-Beta (2.9B) goes through plan, check and sanitize on shapes only, in seconds."""
    plan = shape_plan_module
    report = plan.shape_plan(plan.beta_config())
    assert report["parameters"] == plan.PUBLISHED_PARAMETERS
    assert report["problems"] == []
    assert report["mlx_keys"] == 1117 and report["canonical_keys"] == 1069
    assert report["mlx_bytes_allocated"] < 2**20  # ~12 GB if anything had been evaluated
