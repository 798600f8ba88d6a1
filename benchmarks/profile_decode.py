"""Where the time of one RxT turn goes, next to the equal-dims mlx-lm baseline.

Usage: python benchmarks/profile_decode.py MODEL_DIR [--repeats 9] [--json OUT]

Measures (median of ``--repeats`` rounds; every round runs each measurement once, round-robin;
decode figures are loops of 32 steps evaluated one by one, like streaming):
  * one decode step of RxT (STM keys/values projected once per turn) through the decoder's
    compiled single-token step and layer by layer uncompiled (``rxt_step_ms``, the reference for
    the breakdown below), and of the baseline at a 35-token context and at the 2,200-token
    context of turn 32;
  * the RxT step with the STM projection redone every token (what "once per turn" saves);
  * the RxT step with the memory cross-attention left out / the FFN left out, and the baseline
    step without its FFN, to see what cross-attention and each FFN cost per token;
  * the session's own loop (``Session.generate`` with forced tokens) against the raw loop, to
    show the session's per-token overhead;
  * prefill, STM projection, and memory updates of 68 and 256 tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rxt_mlx.blas import preload_optimised_blas

preload_optimised_blas()

import mlx.core as mx  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from rxt_mlx import load  # noqa: E402
from rxt_mlx.bench.baseline import baseline_shape, build_baseline  # noqa: E402
from rxt_mlx.bench.machine import machine_info  # noqa: E402
from rxt_mlx.sampling import forced_tokens_processor  # noqa: E402
from rxt_mlx.session import Session, TokenEvent  # noqa: E402

STEPS = 32


def rxt_step(decoder, x_ids, cache, memory, *, cross: bool = True, ffn: bool = True):
    """The decoder forward of one step, with parts optionally left out (for the breakdown)."""
    layers = decoder.all_layers()
    offset = cache[0].offset
    stateful = iter(memory)
    x = decoder.embedding(x_ids)
    for layer, layer_cache in zip(layers, cache, strict=True):
        x = x + layer.attention(layer.norm1(x), mask=None, cache=layer_cache, offset=offset)
        if "memory_cross_attention" in layer:
            kv = next(stateful)
            if cross:
                x = x + layer.memory_cross_attention(layer.norm2(x), kv=kv, offset=offset)
        if ffn:
            x = x + layer.ff(layer.norm3(x))
    if "head_norm" in decoder:
        x = decoder.head_norm(x)
    return decoder.head(x)


def rxt_loop(model, stm, context: int, reproject: bool = False, compiled: bool = False, **parts):
    """Seconds per token of 32 RxT decode steps after a ``context``-token prefill.

    ``compiled``: the decoder's own call (its compiled single-token step); otherwise the layers
    are called one by one (uncompiled), with ``parts`` left out as asked.
    """
    decoder = model.decoder

    def run() -> float:
        cache = decoder.make_cache()
        memory = decoder.project_memory(stm)
        mx.eval(decoder(mx.array([[10 + i % 200 for i in range(context)]]), cache=cache, memory=memory))
        token = mx.array([[11]])
        start = time.perf_counter()
        for _ in range(STEPS):
            if reproject:
                memory = decoder.project_memory(stm)
            if compiled:
                mx.eval(decoder(token, cache=cache, memory=memory))
            else:
                mx.eval(rxt_step(decoder, token, cache, memory, **parts))
        return (time.perf_counter() - start) / STEPS

    return run


def baseline_step(baseline, token, cache, *, ffn: bool = True):
    """The mlx-lm Llama forward of one step, the FFN optionally left out (for the breakdown)."""
    inner = baseline.model
    x = inner.embed_tokens(token)
    for layer, layer_cache in zip(inner.layers, cache, strict=True):
        x = x + layer.self_attn(layer.input_layernorm(x), None, layer_cache)
        if ffn:
            x = x + layer.mlp(layer.post_attention_layernorm(x))
    return baseline.lm_head(inner.norm(x))


def baseline_loop(baseline, context: int, **parts):
    """Seconds per token of 32 baseline decode steps after a ``context``-token prefill."""

    def run() -> float:
        cache = make_prompt_cache(baseline)
        mx.eval(baseline(mx.array([[10 + i % 200 for i in range(context)]]), cache=cache))
        token = mx.array([[11]])
        start = time.perf_counter()
        for _ in range(STEPS):
            mx.eval(baseline_step(baseline, token, cache, **parts))
        return (time.perf_counter() - start) / STEPS

    return run


def session_loop(model, tokenizer):
    forced = [20 + i for i in range(STEPS + 1)]

    def run() -> float:
        session = Session(model, tokenizer)
        events = session.generate(
            "hello there", max_tokens=len(forced), logits_processors=[forced_tokens_processor(forced)]
        )
        stamps = [time.perf_counter() for event in events if isinstance(event, TokenEvent)]
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    return run


def once(function):
    def run() -> float:
        start = time.perf_counter()
        function()
        return time.perf_counter() - start

    return run


def interleaved_medians_ms(measurements: dict, repeats: int) -> dict[str, float]:
    """Median of ``repeats`` runs of every measurement, taken round-robin so load changes hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in measurements}
    for run in measurements.values():
        run()  # warm-up
    for _ in range(repeats):
        for name, run in measurements.items():
            times[name].append(run())
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model, tokenizer = load(args.model)
    baseline = build_baseline(baseline_shape(model.config.decoder), dtype=model.dtype)
    stm = model.initial_stm(1, 0)
    decoder = model.decoder
    ids_35 = mx.array([list(range(10, 45))])
    ids_68 = mx.array([list(range(10, 78))])
    ids_256 = mx.array([[10 + i % 200 for i in range(256)]])
    measurements = {
        "rxt_compiled_step_ms": rxt_loop(model, stm, 35, compiled=True),
        "rxt_step_ms": rxt_loop(model, stm, 35),
        "rxt_step_reprojecting_stm_every_token_ms": rxt_loop(model, stm, 35, reproject=True),
        "rxt_step_without_cross_attention_ms": rxt_loop(model, stm, 35, cross=False),
        "rxt_step_without_ffn_ms": rxt_loop(model, stm, 35, ffn=False),
        "rxt_session_step_ms": session_loop(model, tokenizer),
        "baseline_step_context_35_ms": baseline_loop(baseline, 35),
        "baseline_step_without_ffn_ms": baseline_loop(baseline, 35, ffn=False),
        "baseline_step_context_2200_ms": baseline_loop(baseline, 2200),
        "project_memory_ms": once(lambda: mx.eval(decoder.project_memory(stm))),
        "rxt_prefill_35_ms": once(lambda: mx.eval(decoder(ids_35, stm, cache=decoder.make_cache()))),
        "baseline_prefill_35_ms": once(lambda: mx.eval(baseline(ids_35, cache=make_prompt_cache(baseline)))),
        "memory_update_68_ms": once(lambda: mx.eval(model.update_memory(stm, ids_68))),
        "memory_update_256_ms": once(lambda: mx.eval(model.update_memory(stm, ids_256))),
    }
    results = interleaved_medians_ms(measurements, args.repeats)
    full = results["rxt_step_ms"]
    results["rxt_cross_attention_per_token_ms"] = full - results["rxt_step_without_cross_attention_ms"]
    results["rxt_ffn_per_token_ms"] = full - results["rxt_step_without_ffn_ms"]
    results["baseline_ffn_per_token_ms"] = (
        results["baseline_step_context_35_ms"] - results["baseline_step_without_ffn_ms"]
    )
    results["session_overhead_per_token_ms"] = results["rxt_session_step_ms"] - results["rxt_compiled_step_ms"]
    for name, value in results.items():
        print(f"{name:<45} {value:10.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_info(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
