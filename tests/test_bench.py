"""rxt-bench: output files and their fields, baseline dimensions, BLAS detection (no timing assertions)."""

from __future__ import annotations

import csv
import json
import sys

import mlx.core as mx
import numpy as np
import pytest

from rxt_mlx.bench.baseline import StatelessChat, baseline_shape, build_baseline
from rxt_mlx.bench.latency import main
from rxt_mlx.bench.machine import REFERENCE_BLAS, blas_library, classify_blas_path, machine_info
from rxt_mlx.bench.report import TurnRow, terminal_chart
from rxt_mlx.bench.systems import query_text
from tests.factories import beta_config, random_mlx_model, tiny_config, write_model_folder
from tests.tokenizer_factories import write_bpe_tokenizer

TURNS, QUERY, ANSWER = 3, 6, 4
KNOWN_BLAS = {"OpenBLAS", "Intel MKL", "BLIS", "ATLAS", "Accelerate", REFERENCE_BLAS, "unknown"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return write_model_folder(
        tmp_path_factory.mktemp("model"), tiny_config(), seed=0, tokenizer_writer=write_bpe_tokenizer
    )


def _run(folder, out, *extra):
    argv = ["--model", str(folder), "--turns", str(TURNS), "--query-tokens", str(QUERY)]
    argv += ["--answer-tokens", str(ANSWER), "--out", str(out), "--warmup-turns", "1", *extra]
    assert main(argv) == 0


def test_bench_writes_rows_summary_and_plot(model_folder, tmp_path, capsys):
    _run(model_folder, tmp_path, "--reference", "--repeats", "2")
    printed = capsys.readouterr().out
    assert "ratios:" in printed and "BLAS:" in printed and "PASS" not in printed
    with open(tmp_path / "latency.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "system",
        "turn",
        "prompt_tokens",
        "context_tokens",
        "answer_tokens",
        "ttft_seconds",
        "decode_seconds",
        "decode_tokens_per_second",
        "memory_update_seconds",
        "peak_memory_mb",
        "memory_source",
    ]
    systems = ["rxt", "baseline", "baseline_cached", "reference"]
    assert len(rows) == TURNS * len(systems)
    by_system = {system: [row for row in rows if row["system"] == system] for system in systems}
    for system, system_rows in by_system.items():
        assert [int(row["turn"]) for row in system_rows] == [1, 2, 3], system
        assert all(int(row["answer_tokens"]) == ANSWER for row in system_rows)
        assert all(float(row["ttft_seconds"]) > 0 for row in system_rows)
        has_update = system in ("rxt", "reference")
        assert all((row["memory_update_seconds"] != "") == has_update for row in system_rows), system

    document = json.loads((tmp_path / "latency.json").read_text())
    prompt = document["model"]["query_tokens_per_turn"]
    assert len(prompt) == TURNS and all(length == QUERY + 3 for length in prompt)  # [BOS][Q]query[A]
    interaction = QUERY + 3 + ANSWER + 1  # ... answer [EOS]
    plain = by_system["baseline"]
    assert [int(row["context_tokens"]) for row in plain] == [turn * interaction + QUERY + 3 for turn in range(TURNS)]
    assert [int(row["prompt_tokens"]) for row in plain] == [int(row["context_tokens"]) for row in plain]
    # the cached baseline prefills only the pending EOS and the new query
    assert [int(row["prompt_tokens"]) for row in by_system["baseline_cached"]] == [QUERY + 3] + [QUERY + 4] * (
        TURNS - 1
    )
    assert all(int(row["prompt_tokens"]) == QUERY + 3 for row in by_system["rxt"])

    assert set(document) >= {"machine", "options", "model", "baseline", "reference", "summary", "ratios", "rows"}
    assert len(document["rows"]) == len(rows)
    assert document["machine"]["blas"]["label"] in KNOWN_BLAS
    assert document["baseline"]["shape"]["num_layers"] == 2
    assert document["reference"]["weights"].startswith("weights of")
    ratios = document["ratios"]
    for name in (
        "rxt_ttft_last_over_first",
        "baseline_ttft_last_over_rxt",
        "cached_baseline_ttft_last_over_rxt",
        "rxt_decode_tps_over_baseline_turn1",
        "rxt_decode_tps_over_cached_baseline_last",
        "rxt_ttft_after_memory_update_over_without",
        "reference_ttft_over_mlx_ttft_mean",
        "mlx_decode_tps_over_reference_mean",
        "memory_update_256_tokens_seconds",
    ):
        assert ratios[name] > 0, name
    assert set(document["summary"]) == set(systems)
    probe = document["memory_update_delay_probe"]
    assert probe["after_update_seconds"] > 0 and probe["without_update_seconds"] > 0
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # matplotlib is a dev dependency


def test_bench_without_matplotlib_prints_terminal_chart(model_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    _run(model_folder, tmp_path, "--no-progress")
    printed = capsys.readouterr().out
    assert "time to first token per turn" in printed
    assert "o RxT (MLX)" in printed and "x stateless, full re-prefill" in printed
    assert "no PNG (matplotlib not installed" in printed
    assert not (tmp_path / "latency.png").exists()
    assert len(list(csv.DictReader(open(tmp_path / "latency.csv")))) == TURNS * 3


def test_terminal_chart_places_points():
    chart = terminal_chart({"low": [1.0, 1.0], "high": [100.0, 100.0]}, title="t", width=10, height=5)
    lines = chart.splitlines()
    grid = [line.split("|", 1)[1] for line in lines[1:6]]
    assert grid[0] == "x" + " " * 8 + "x"  # the high series on the top row, at both ends
    assert grid[-1] == "o" + " " * 8 + "o"
    assert lines[1].strip().startswith("100")
    assert "o low" in lines[-1] and "x high" in lines[-1]
    assert terminal_chart({"none": []}, title="empty").endswith("(no data)")


def test_table_row_fields_match_csv_header():
    row = TurnRow("rxt", 1, 10, 10, 4, 0.01, 0.02, 150.0, 0.003, 1.5, "mlx")
    assert row.decode_tokens_per_second == 150.0


def test_blas_detection_returns_known_label():
    info = blas_library()
    assert info.label in KNOWN_BLAS
    assert machine_info()["blas"]["label"] == info.label
    if sys.platform.startswith("linux"):
        assert info.path, "the library serving cblas_sgemm should be found on Linux"


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3", "OpenBLAS"),
        ("/site-packages/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0", REFERENCE_BLAS),
        ("/usr/lib/x86_64-linux-gnu/blas/libblas.so.3", REFERENCE_BLAS),
        ("/opt/intel/oneapi/mkl/lib/libmkl_rt.so.2", "Intel MKL"),
        ("/usr/lib/libblis.so.4", "BLIS"),
        ("/usr/lib/libfoo.so", "unknown"),
    ],
)
def test_classify_blas_path(path, label):
    assert classify_blas_path(path) == label


def test_baseline_matches_decoder_dimensions():
    decoder = beta_config().decoder
    shape = baseline_shape(decoder)
    attention = decoder.self_attention_shape()
    stateless = decoder.stateless_layers_config
    final = decoder.final_stateless_layers_config
    assert shape.num_layers == len(stateless) + decoder.num_layers + len(final)
    assert (shape.query_heads, shape.kv_heads, shape.head_dim) == (
        attention.query_heads,
        attention.kv_heads,
        attention.head_dim,
    )
    active = decoder.moe_top_k * decoder.ff_dim + decoder.num_shared_experts * decoder.shared_dim
    expected = [decoder.dense_layer_dim if kind == "dense" else active for kind in stateless]
    expected += [active] * decoder.num_layers + [active] * len(final)
    assert list(shape.layer_ff_dims) == expected
    model = build_baseline(shape)
    for layer, width in zip(model.layers, expected, strict=True):
        assert layer.mlp.gate_proj.weight.shape == (width, decoder.embed_dim)
        assert layer.self_attn.q_proj.weight.shape == (attention.query_heads * attention.head_dim, decoder.embed_dim)
    assert model.lm_head.weight.shape == (decoder.vocab_size, decoder.embed_dim)


@pytest.mark.parametrize("keep_cache", [False, True])
def test_stateless_chat_answers_forced_tokens_and_keeps_history(keep_cache):
    model = build_baseline(baseline_shape(tiny_config().decoder))
    chat = StatelessChat(model, keep_cache=keep_cache)
    query, answer = [2, 4, 20, 21, 5], [40, 41, 42]
    assert list(chat.answer(query, answer, [3])) == answer
    second = [2, 4, 30, 5]
    assert chat.prompt_for(second) == ([3] if keep_cache else query + answer + [3]) + second
    assert list(chat.answer(second, [60, 61], [3], commit=False)) == [60, 61]  # a timing probe
    assert chat.prompt_for(second) == ([3] if keep_cache else query + answer + [3]) + second
    assert list(chat.answer(second, [50, 51], [3])) == [50, 51]
    assert chat.history == query + answer + [3] + second + [50, 51, 3]


def test_cached_baseline_logits_match_full_prefill():
    model = build_baseline(baseline_shape(tiny_config().decoder))
    cached = StatelessChat(model, keep_cache=True)
    list(cached.answer([2, 4, 20, 5], [40, 41], [3]))
    list(cached.answer([2, 4, 25, 26, 27, 5], [44, 45, 46], [3], commit=False))  # trimmed away again
    prompt = [2, 4, 21, 22, 5]
    full = model(mx.array([cached.history + prompt]))[0, -1]
    cache = cached._cache
    step = model(mx.array([cached.prompt_for(prompt)]), cache=cache)[0, -1]
    np.testing.assert_allclose(np.array(step), np.array(full), atol=1e-4)


def test_query_text_has_requested_token_count(tmp_path):
    from rxt_mlx.tokenizer import load_tokenizer

    config = write_bpe_tokenizer(tmp_path)
    tokenizer = load_tokenizer(tmp_path, config)
    for n in (1, 6, 32):
        assert len(tokenizer.encode(query_text(tokenizer.encode, n, seed=n))) == n
    assert query_text(tokenizer.encode, 8, 1) != query_text(tokenizer.encode, 8, 2)


def test_reference_gets_the_mlx_weights():
    import torch
    from rxt_convert.bench_reference import ReferenceRunner

    model = random_mlx_model(beta_config(), seed=1)
    runner = ReferenceRunner("folder", model, None)
    assert runner.weights_note.startswith("weights of")
    ids = [[2, 4, 20, 21, 22, 5, 30]]
    stm = model.initial_stm(1, seed=0)
    expected = np.array(model.decoder(mx.array(ids), stm))
    got = runner.model.decoder(torch.tensor(ids), torch.from_numpy(np.array(stm))).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_bench_refuses_turns_longer_than_the_decoder_context(model_folder, tmp_path):
    with pytest.raises(SystemExit, match="seq_len 64: a 60-token query leaves room for 1 answer tokens, not 10"):
        main(["--model", str(model_folder), "--query-tokens", "60", "--answer-tokens", "10", "--out", str(tmp_path)])
