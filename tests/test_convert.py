"""rxt-convert: checkpoint sources, canonical state, and every bad input's error message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rxt_convert import canonical
from rxt_convert.canonical import CanonicalError
from rxt_convert.convert import main
from rxt_convert.sources import (
    SourceError,
    TensorStore,
    add_state_dict,
    add_weight_files,
    infer_variant,
    read_source,
    special_token_ids,
)
from safetensors.torch import save_file

from tests.tokenizer_factories import tokenizer_config, write_bpe_tokenizer, write_sentencepiece_tokenizer


def store_of(state: dict[str, torch.Tensor]) -> TensorStore:
    store = TensorStore()
    add_state_dict(store, state, "", "test state")
    return store


def run_cli(argv, capsys) -> tuple[int, str]:
    """Run rxt-convert in-process; returns (exit status, stderr)."""
    try:
        status = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


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
    assert weights["x.weight"].dtype == np.float32  # numpy has no bf16: MLX casts
    np.testing.assert_array_equal(weights["x.weight"], state["x.weight"].float().numpy())
    assert canonical.materialize(store, planned, "float16")["x.weight"].dtype == np.float16
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
    assert status == 1 and "--tokenizer-config: not valid JSON" in err
    status, err = run_cli([folder, tmp_path / "out", "--tokenizer-config", '{"bos_token_id": 2}'], capsys)
    assert status == 1 and "missing eos_token_id" in err
    status, err = run_cli([folder, tmp_path / "out"], capsys)
    assert status == 1 and "config.json: missing or malformed decoder_config" in err
