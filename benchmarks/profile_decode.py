"""Where the time of one RxT turn goes, next to the equal-dims mlx-lm baseline.

Usage: python benchmarks/profile_decode.py MODEL_DIR [--repeats 5] [--json OUT]

Measures (median of ``--repeats``, each a loop of 32 steps evaluated one by one, like streaming):
  * one decode step of RxT (STM keys/values projected once per turn) and of the baseline,
    at a 35-token context and, for the baseline, at the 2,200-token context of turn 32;
  * the RxT step with the STM projection redone every token (what "once per turn" saves);
  * the RxT step with the memory cross-attention left out / the FFN left out, to split the
    step's time between self-attention, cross-attention, FFN and head;
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
from rxt_mlx.baseline import baseline_shape, build_baseline  # noqa: E402
from rxt_mlx.machine import machine_info  # noqa: E402
from rxt_mlx.session import Session, TokenEvent  # noqa: E402

STEPS = 32


def median_ms(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


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


def per_token_ms(model, stm, context: int, repeats: int, reproject: bool = False, **parts) -> float:
    decoder = model.decoder

    def run():
        cache = decoder.make_cache()
        memory = decoder.project_memory(stm)
        mx.eval(decoder(mx.array([[10 + i % 200 for i in range(context)]]), cache=cache, memory=memory))
        token = mx.array([[11]])
        start = time.perf_counter()
        for _ in range(STEPS):
            if reproject:
                memory = decoder.project_memory(stm)
            mx.eval(rxt_step(decoder, token, cache, memory, **parts))
        return (time.perf_counter() - start) / STEPS

    return statistics.median(run() for _ in range(repeats)) * 1000


def baseline_per_token_ms(baseline, context: int, repeats: int) -> float:
    def run():
        cache = make_prompt_cache(baseline)
        mx.eval(baseline(mx.array([[10 + i % 200 for i in range(context)]]), cache=cache))
        token = mx.array([[11]])
        start = time.perf_counter()
        for _ in range(STEPS):
            mx.eval(baseline(token, cache=cache))
        return (time.perf_counter() - start) / STEPS

    return statistics.median(run() for _ in range(repeats)) * 1000


def session_per_token_ms(model, tokenizer, repeats: int) -> float:
    forced = [20 + i for i in range(STEPS + 1)]

    def run():
        session = Session(model, tokenizer)
        stamps = [
            time.perf_counter()
            for event in session.generate("hello there", force_tokens=forced)
            if isinstance(event, TokenEvent)
        ]
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    return statistics.median(run() for _ in range(repeats)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model, tokenizer = load(args.model)
    baseline = build_baseline(baseline_shape(model.config.decoder), dtype=model.dtype)
    stm = model.initial_stm(1, 0)
    decoder, repeats = model.decoder, args.repeats
    results = {
        "rxt_step_ms": per_token_ms(model, stm, 35, repeats),
        "rxt_step_reprojecting_stm_every_token_ms": per_token_ms(model, stm, 35, repeats, reproject=True),
        "rxt_step_without_cross_attention_ms": per_token_ms(model, stm, 35, repeats, cross=False),
        "rxt_step_without_ffn_ms": per_token_ms(model, stm, 35, repeats, ffn=False),
        "rxt_session_step_ms": session_per_token_ms(model, tokenizer, repeats),
        "baseline_step_context_35_ms": baseline_per_token_ms(baseline, 35, repeats),
        "baseline_step_context_2200_ms": baseline_per_token_ms(baseline, 2200, repeats),
        "project_memory_ms": median_ms(lambda: mx.eval(decoder.project_memory(stm)), repeats),
        "rxt_prefill_35_ms": median_ms(
            lambda: mx.eval(decoder(mx.array([list(range(10, 45))]), cache=decoder.make_cache(), stm=stm)), repeats
        ),
        "baseline_prefill_35_ms": median_ms(
            lambda: mx.eval(baseline(mx.array([list(range(10, 45))]), cache=make_prompt_cache(baseline))), repeats
        ),
        "memory_update_68_ms": median_ms(
            lambda: mx.eval(model.update_memory(stm, mx.array([list(range(10, 78))]))), repeats
        ),
        "memory_update_256_ms": median_ms(
            lambda: mx.eval(model.update_memory(stm, mx.array([[10 + i % 200 for i in range(256)]]))), repeats
        ),
    }
    full = results["rxt_step_ms"]
    results["cross_attention_share_of_step"] = 1 - results["rxt_step_without_cross_attention_ms"] / full
    results["ffn_share_of_step"] = 1 - results["rxt_step_without_ffn_ms"] / full
    results["session_overhead_per_token_ms"] = results["rxt_session_step_ms"] - full
    for name, value in results.items():
        print(f"{name:<45} {value:10.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_info(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
