"""rxt-convert -q: quantized models load, generate, and stay close to fp32.

Tolerances are max abs diff / max abs value of the fp32 MLX model's output, measured on
random models (every weight N(0, 1/fan_in): no structure, the worst case for quantization)
over seeds 0-2, group size 32:

=============  ====================  ====================
quantity       8-bit measured/bound  4-bit measured/bound
=============  ====================  ====================
logits          1.3e-2 / 3e-2          2.2e-1 / 4e-1
encoder         1.3e-2 / 3e-2          2.2e-1 / 4e-1
updated STM     1.1e-2 / 3e-2          2.3e-1 / 4e-1
=============  ====================  ====================

Logits of MoE decoders are not bounded: quantization flips near-tie expert choices (8-bit
beta: up to 2.3e-1 at single positions, while every dense path stays within the bounds).
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear
from rxt_convert.convert import main
from rxt_convert.reference import RxTReference
from rxt_convert.reference.checkpoint import save_rxlm
from rxt_convert.reference.testing import randomize_

import rxt_mlx
from rxt_mlx.config import RxTConfig
from rxt_mlx.model import load_model
from rxt_mlx.session import AnswerDone, MemoryUpdated, Session, TokenEvent
from tests.factories import VOCAB_SIZE, tiny_config
from tests.tokenizer_factories import write_bpe_tokenizer

TOLERANCE = {8: 3e-2, 4: 4e-1}


def dense_config() -> RxTConfig:
    """Dense model whose every linear input width is a multiple of 32 (all of it quantizes at group 32)."""
    return tiny_config(embed_dim=64, att_heads=4, decoder={"ff_dim": 64}, encoder={"ff_dim": 64})


def moe_config() -> RxTConfig:
    """MoE decoder (4 experts, one shared), gated attention, gated self-interlayer memory attention."""
    return tiny_config(
        embed_dim=64,
        att_heads=4,
        decoder={
            "use_moe": True,
            "num_experts": 4,
            "moe_top_k": 2,
            "ff_dim": 32,
            "num_shared_experts": 1,
            "shared_expert_dim": 64,
            "use_gated_attention": True,
        },
        encoder={"ff_dim": 64},
        memory_attention={
            "use_gated_residual": True,
            "residual_gate_type": "elementwise",
            "residual_per_slot_gate": True,
        },
        memory_attention_variant="self-interlayer",
    )


def rxlm_source(folder: Path, config: RxTConfig, seed: int = 0) -> Path:
    reference = randomize_(RxTReference(config), torch.Generator().manual_seed(seed))
    source = save_rxlm(reference, folder)
    write_bpe_tokenizer(source, vocab_size=VOCAB_SIZE)
    return source


def convert(source: Path, output: Path, *args: str) -> Path:
    assert main([str(source), str(output), "--no-progress", *args]) == 0
    return output


def outputs(model) -> dict[str, mx.array]:
    ids = mx.array(np.random.default_rng(0).integers(0, VOCAB_SIZE, (2, 12)).astype(np.int32))
    stm = model.initial_stm(2, seed=3)
    return {"logits": model.decoder(ids, stm), "encoder": model.encoder(ids), "stm": model.update_memory(stm, ids)}


def relative_diff(expected: mx.array, got: mx.array) -> float:
    expected, got = np.array(expected, dtype=np.float64), np.array(got, dtype=np.float64)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def dense_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dense")
    source = rxlm_source(folder / "rxlm", dense_config())
    return source, outputs(load_model(convert(source, folder / "fp32")))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_outputs_within_tolerance(tmp_path, dense_source, bits):
    source, reference = dense_source
    quantized = load_model(convert(source, tmp_path / "q", "-q", "--q-bits", str(bits), "--q-group-size", "32"))
    assert quantized.config.extra["quantization"] == {"bits": bits, "group_size": 32}
    worst = {name: relative_diff(reference[name], value) for name, value in outputs(quantized).items()}
    print(f"{bits}-bit vs fp32: {worst}")
    assert max(worst.values()) < TOLERANCE[bits], worst
    assert min(worst.values()) > 1e-4, "quantization had no effect"


@pytest.mark.parametrize("bits", [8, 4])
def test_moe_experts_quantized_norms_routers_gates_float(tmp_path, bits):
    source = rxlm_source(tmp_path / "rxlm", moe_config())
    model = load_model(convert(source, tmp_path / "q", "-q", "--q-bits", str(bits), "--q-group-size", "32"))
    layer = model.decoder.layers[0]
    for projection in ("gate_proj", "up_proj", "down_proj"):
        expert = getattr(layer.ff.experts, projection)
        assert isinstance(expert, QuantizedSwitchLinear) and expert.bits == bits and expert.group_size == 32
    assert isinstance(layer.attention.q_proj, nn.QuantizedLinear)
    assert type(layer.ff.router.gate) is nn.Linear
    parameters = dict(tree_flatten(model.parameters()))
    quantized = {name.rpartition(".")[0] for name in parameters if name.endswith(".scales")}
    assert "decoder.layers.1.ff.experts.down_proj" in quantized and "decoder.head" in quantized
    kept = [name for name in parameters if "norm" in name or "router" in name or "residual_gate" in name]
    kept += [name for name in parameters if name.endswith(".gate")]
    assert kept and not any(name.rpartition(".")[0] in quantized for name in kept)
    assert all(parameters[name].dtype == mx.float32 for name in kept)


def test_quantized_model_loads_and_generates(tmp_path):
    source = rxlm_source(tmp_path / "rxlm", moe_config())
    folder = convert(source, tmp_path / "q4", "-q", "--q-bits", "4", "--q-group-size", "32")
    model, tokenizer = rxt_mlx.load(folder)
    session = Session(model, tokenizer, stm=model.initial_stm(seed=0))
    events = list(session.interact("Hi, I'm Ann. What is your name?", max_tokens=6))
    tokens = [event.id for event in events if isinstance(event, TokenEvent)]
    done = next(event for event in events if isinstance(event, AnswerDone))
    assert 1 <= len(tokens) == done.tokens <= 6 and all(0 <= token < VOCAB_SIZE for token in tokens)
    assert isinstance(events[-1], MemoryUpdated) and events[-1].turn == 1
    assert session.stm.shape == (2, 1, 8, 64) and bool(mx.all(mx.isfinite(session.stm)))
    prompt = tokenizer.query_ids("Hi, I'm Ann. What is your name?")
    greedy = model.decoder(mx.array([prompt]), model.initial_stm(seed=0))[0, -1].argmax().item()
    assert tokens[0] == greedy


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-q", "--q-bits", "3"], "argument --q-bits: invalid choice: 3 (choose from 4, 8)"),
        (["-q", "--q-bits", "four"], "argument --q-bits: invalid int value: 'four'"),
        (["-q", "--q-group-size", "16"], "argument --q-group-size: invalid choice: 16 (choose from 32, 64, 128)"),
        (["--q-bits", "8"], "--q-bits/--q-group-size need -q/--quantize"),
    ],
)
def test_bad_quantization_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "src"), str(tmp_path / "out"), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
