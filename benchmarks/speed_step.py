"""A/B timings of the RxT decode step and session loop against the mlx-lm baseline, interleaved.

Usage: python benchmarks/speed_step.py MODEL_DIR [--repeats 9]

Every round runs each measurement once, round-robin (load changes hit all alike); medians.
``*_uncompiled`` variants switch off MLX compilation (the decoder's compiled one-token call),
so the gain of each speed change is measured in one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from rxt_mlx.blas import preload_optimised_blas

preload_optimised_blas()


import mlx.core as mx  # noqa: E402

from rxt_mlx import load  # noqa: E402
from rxt_mlx.bench.baseline import StatelessChat, baseline_shape, build_baseline  # noqa: E402
from rxt_mlx.bench.systems import query_text  # noqa: E402
from rxt_mlx.sampling import forced_tokens_processor  # noqa: E402
from rxt_mlx.session import Session, TokenEvent  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from profile_decode import STEPS, baseline_loop, rxt_loop  # noqa: E402

CONTEXT = 35


def uncompiled(run):
    def wrapped():
        mx.disable_compile()
        try:
            return run()
        finally:
            mx.enable_compile()

    return wrapped


def milliseconds(run):
    """A ``run`` that returns seconds per token, reporting milliseconds."""
    return lambda: run() * 1000


def stream_ms(tokens):
    """ms per token after the first, and ms to the first token."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in tokens]
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000, (stamps[0] - start) * 1000


def rxt_session(model, tokenizer, query, answer, which=0):
    def run():
        session = Session(model, tokenizer)
        events = session.generate(query, max_tokens=len(answer), logits_processors=[forced_tokens_processor(answer)])
        return stream_ms(event.id for event in events if isinstance(event, TokenEvent))[which]

    return run


def baseline_session(baseline, query_ids, answer, which=0):
    def run():
        chat = StatelessChat(baseline, keep_cache=False)
        return stream_ms(chat.answer(query_ids, answer, commit=False))[which]

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    model, tokenizer = load(args.model)
    baseline = build_baseline(baseline_shape(model.config.decoder), dtype=model.dtype)
    stm = model.initial_stm(1, 0)
    query = query_text(tokenizer.encode, 32, 0)  # as rxt-bench: 32-token queries
    query_ids = tokenizer.query_ids(query)
    answer = [20 + i for i in range(STEPS)]
    runs = {
        "rxt_step_ms": milliseconds(rxt_loop(model, stm, CONTEXT, compiled=True)),
        "rxt_step_uncompiled_ms": uncompiled(milliseconds(rxt_loop(model, stm, CONTEXT, compiled=True))),
        "baseline_step_ms": milliseconds(baseline_loop(baseline, CONTEXT)),
        "rxt_session_ms_per_token": rxt_session(model, tokenizer, query, answer),
        "rxt_session_uncompiled_ms_per_token": uncompiled(rxt_session(model, tokenizer, query, answer)),
        "baseline_generate_ms_per_token": baseline_session(baseline, query_ids, answer),
        "rxt_ttft_ms": rxt_session(model, tokenizer, query, answer, which=1),
        "baseline_ttft_ms": baseline_session(baseline, query_ids, answer, which=1),
    }
    times = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(run())
    med = {name: statistics.median(values) for name, values in times.items()}
    for name, value in med.items():
        print(f"{name:<40} {value:8.3f}")
    base = med["baseline_generate_ms_per_token"]
    print(f"{'tps ratio rxt/baseline (compiled)':<40} {base / med['rxt_session_ms_per_token']:8.3f}")
    print(f"{'tps ratio rxt/baseline (uncompiled)':<40} {base / med['rxt_session_uncompiled_ms_per_token']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
