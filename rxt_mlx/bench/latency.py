"""rxt-bench: per-turn latency of RxT against a stateless decoder of the same size.

A scripted conversation of N turns, every query Q tokens and every answer forced to A tokens,
is run turn by turn on (1) the RxT model through :class:`rxt_mlx.session.Session`, (2) an
mlx-lm decoder of equal dimensions that re-prefills the whole history every turn, (3) the same
decoder keeping its KV cache across turns and, with ``--reference``, (4) the PyTorch reference
RxT. The systems take turns, so background load on the machine hits them alike; ratios
within one run are the result, absolute times are machine- and load-dependent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rxt_mlx.bench.cli import require_positive
from rxt_mlx.bench.systems import (
    RxTChat,
    Script,
    StatelessSystem,
    Timing,
    build_script,
    measure,
    peak_memory,
    plugin_system,
)

DEFAULT_OUT = Path("rxt-bench-results")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class BenchOptions:
    """What rxt-bench runs; see :func:`build_parser` for the meaning of each field."""

    model: Path | None = None
    turns: int = 32
    query_tokens: int = 32
    answer_tokens: int = 32
    out: Path = DEFAULT_OUT
    reference: bool = False
    dtype: str | None = None
    seed: int = 0
    warmup_turns: int = 2
    repeats: int = 1
    memory_update_tokens: int = 256
    progress: bool = True
    plot: bool = True


def default_model_folder() -> Path | None:
    """The bundled demo model folder, when the package ships one."""
    folder = Path(__file__).parent.parent / "demo"
    return folder if (folder / "config.json").is_file() else None


def _system_rows(
    system: str,
    turn: int,
    timing: Timing,
    prompt_tokens: int,
    context_tokens: int,
    memory_update_seconds: float | None,
    memory: tuple[float, str],
):
    from rxt_mlx.bench.report import TurnRow

    return TurnRow(
        system=system,
        turn=turn,
        prompt_tokens=prompt_tokens,
        context_tokens=context_tokens,
        answer_tokens=timing.tokens,
        ttft_seconds=timing.ttft_seconds,
        decode_seconds=timing.decode_seconds,
        decode_tokens_per_second=timing.decode_tokens_per_second,
        memory_update_seconds=memory_update_seconds,
        peak_memory_mb=memory[0],
        memory_source=memory[1],
    )


def _parameter_count(module) -> int:
    from mlx.utils import tree_flatten

    return sum(value.size for _, value in tree_flatten(module.parameters()))


def time_memory_update(model, length: int, seed: int, repeats: int = 3) -> float:
    """Median seconds of one memory update (encoder + memory attention) over a ``length``-token interaction."""
    import mlx.core as mx

    ids = mx.random.randint(8, model.config.decoder.vocab_size, (1, length), key=mx.random.key(seed)).astype(mx.int32)
    stm = model.initial_stm(batch=1, seed=seed)
    mx.eval(model.update_memory(stm, ids))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(model.update_memory(stm, ids))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ttft_after_memory_update(model, tokenizer, script: Script, seed: int, repeats: int = 15) -> dict:
    """Does a finished memory update delay the next query? Best TTFT of a query sent right after
    a turn's memory update completed, and of the same query from the same STM without an update just
    before it, measured alternately."""
    from rxt_mlx.sampling import forced_tokens_processor
    from rxt_mlx.session import Session, TokenEvent

    session = Session(model, tokenizer, stm=model.initial_stm(batch=1, seed=seed))
    query, answer = script.query_texts[-1], list(script.answer_ids[-1])

    def ttft() -> float:
        scratch = Session(model, tokenizer, stm=session.stm)
        events = scratch.generate(query, max_tokens=len(answer), logits_processors=[forced_tokens_processor(answer)])
        return measure(event.id for event in events if isinstance(event, TokenEvent)).ttft_seconds

    after, without = [], []
    for _ in range(repeats):
        first_answer = list(script.answer_ids[0])
        forced = [forced_tokens_processor(first_answer)]
        for _ in session.interact(script.query_texts[0], max_tokens=len(first_answer), logits_processors=forced):
            pass  # the turn ends once its memory update has run
        after.append(ttft())
        without.append(ttft())
    return {"after_update_seconds": min(after), "without_update_seconds": min(without)}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def summary_ratios(rows, memory_update_256: float | None, update_probe: dict | None = None) -> dict[str, float | None]:
    """The ratios that compare the systems of one run (None where a system is missing).

    ``memory_update_256_tokens_seconds`` is a time, not a ratio: one memory update over a
    256-token interaction (or the encoder's seq_len when shorter)."""
    from rxt_mlx.bench.report import series

    def first(system: str, field: str) -> float | None:
        values = series(rows, system, field)
        return values[0] if values else None

    def last(system: str, field: str) -> float | None:
        values = series(rows, system, field)
        return values[-1] if values else None

    def mean(system: str, field: str) -> float | None:
        return _mean(series(rows, system, field))

    rxt_ttft = series(rows, "rxt", "ttft_seconds")
    values = {
        "rxt_ttft_last_over_first": _ratio(last("rxt", "ttft_seconds"), first("rxt", "ttft_seconds")),
        "baseline_ttft_last_over_rxt": _ratio(last("baseline", "ttft_seconds"), last("rxt", "ttft_seconds")),
        "cached_baseline_ttft_last_over_rxt": _ratio(
            last("baseline_cached", "ttft_seconds"), last("rxt", "ttft_seconds")
        ),
        "rxt_decode_tps_over_baseline_turn1": _ratio(
            first("rxt", "decode_tokens_per_second"), first("baseline", "decode_tokens_per_second")
        ),
        "rxt_decode_tps_over_cached_baseline_last": _ratio(
            last("rxt", "decode_tokens_per_second"), last("baseline_cached", "decode_tokens_per_second")
        ),
        "rxt_ttft_after_memory_update_over_without": _ratio(
            (update_probe or {}).get("after_update_seconds"), (update_probe or {}).get("without_update_seconds")
        ),
    }
    if len(rxt_ttft) >= 6:
        values["rxt_ttft_last3_over_first3_median"] = statistics.median(rxt_ttft[-3:]) / statistics.median(rxt_ttft[:3])
    if any(row.system == "reference" for row in rows):
        values["reference_ttft_over_mlx_ttft_mean"] = _ratio(
            mean("reference", "ttft_seconds"), mean("rxt", "ttft_seconds")
        )
        values["mlx_decode_tps_over_reference_mean"] = _ratio(
            mean("rxt", "decode_tokens_per_second"), mean("reference", "decode_tokens_per_second")
        )
        values["reference_memory_update_over_mlx_mean"] = _ratio(
            mean("reference", "memory_update_seconds"), mean("rxt", "memory_update_seconds")
        )
    values["memory_update_256_tokens_seconds"] = memory_update_256
    return values


def _mean(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if present else None


def summarize(rows) -> dict:
    """Per system: mean / first / last TTFT, mean decode tokens/s, mean memory update, max peak memory."""
    from rxt_mlx.bench.report import series, systems_in

    summary = {}
    for system in systems_in(rows):
        ttft = series(rows, system, "ttft_seconds")
        summary[system] = {
            "ttft_seconds_first": ttft[0],
            "ttft_seconds_last": ttft[-1],
            "ttft_seconds_mean": statistics.fmean(ttft),
            "decode_tokens_per_second_mean": statistics.fmean(series(rows, system, "decode_tokens_per_second")),
            "memory_update_seconds_mean": _mean(series(rows, system, "memory_update_seconds")),
            "peak_memory_mb_max": max(series(rows, system, "peak_memory_mb")),
        }
    return summary


def _cast(model, dtype_name: str | None):
    import mlx.core as mx

    if dtype_name:
        model.set_dtype(getattr(mx, dtype_name))
        mx.eval(model.parameters())
    return model


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = print):
    """Run the benchmark; returns ``(rows, report)`` (report: everything of the JSON but the rows)."""
    import mlx.core as mx
    from tqdm import tqdm

    from rxt_mlx import load
    from rxt_mlx.bench.baseline import StatelessChat, baseline_shape, build_baseline
    from rxt_mlx.bench.machine import machine_info

    machine = machine_info()
    if machine["blas_hint"]:
        log(f"hint: {machine['blas_hint']}")
    folder = options.model or default_model_folder()
    if folder is None:
        raise SystemExit("rxt-bench: no bundled demo model in this install; pass --model DIR (an rxt-mlx model folder)")
    model, tokenizer = load(folder)
    _cast(model, options.dtype)
    config = model.config
    # [BOS][Q]query[A] + answer must fit the decoder's context (the session bounds it the same way)
    room = config.decoder.seq_len - 3 - options.query_tokens
    if options.answer_tokens > room:
        raise SystemExit(
            f"rxt-bench: {folder} has decoder seq_len {config.decoder.seq_len}: a {options.query_tokens}-token query "
            f"leaves room for {max(room, 0)} answer tokens, not {options.answer_tokens}; lower --query-tokens "
            "or --answer-tokens"
        )
    shape = baseline_shape(config.decoder)
    baseline = build_baseline(shape, seed=options.seed, dtype=model.dtype)
    script = build_script(
        tokenizer, options.turns, options.query_tokens, options.answer_tokens, config.decoder.vocab_size, options.seed
    )
    reference = None
    if options.reference:
        reference = plugin_system("reference")(folder, model, options.dtype)
        log(f"PyTorch reference: {reference.weights_note}")

    makers: dict[str, Callable[[], object]] = {
        "rxt": lambda: RxTChat(model, tokenizer, script, options.seed),
        "baseline": lambda: StatelessSystem(StatelessChat(baseline, keep_cache=False), script),
        "baseline_cached": lambda: StatelessSystem(StatelessChat(baseline, keep_cache=True), script),
    }
    if reference is not None:
        makers["reference"] = lambda: reference.chat(script, options.seed)

    log(f"warming up ({options.warmup_turns} turns per system)")
    for make_system in makers.values():
        system = make_system()
        for turn in range(min(options.warmup_turns, options.turns)):
            system.turn(turn)
    update_length = min(options.memory_update_tokens, config.encoder.seq_len)
    memory_update_256 = time_memory_update(model, update_length, options.seed)
    update_probe = ttft_after_memory_update(model, tokenizer, script, options.seed)
    systems = {name: make() for name, make in makers.items()}
    rows = []
    bar = tqdm(range(options.turns), desc="rxt-bench", unit="turn", disable=not options.progress, file=sys.stderr)
    for turn in bar:
        for name, system in systems.items():
            prompt_tokens, context_tokens = system.context_tokens(turn)
            # extra timings of the same turn that leave the conversation unchanged, then the real turn;
            # the best of them is the least disturbed by other work on the machine
            repeats = 1 if name == "reference" else options.repeats
            timings = [system.turn(turn, commit=False) for _ in range(repeats - 1)]
            mx.synchronize()
            mx.reset_peak_memory()
            timings.append(system.turn(turn))
            memory = peak_memory()
            timing = Timing(
                min(t.ttft_seconds for t in timings), min(t.decode_seconds for t in timings), timings[-1].tokens
            )
            update = system.memory_update_seconds
            rows.append(_system_rows(name, turn + 1, timing, prompt_tokens, context_tokens, update, memory))
        bar.set_postfix({row.system: f"{row.ttft_seconds * 1000:.0f}ms" for row in rows[-len(systems) :]})
    bar.close()
    report = {
        "machine": machine,
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(options).items()},
        "model": {
            "folder": str(folder),
            "parameters": _parameter_count(model),
            "decoder": config.decoder.to_dict(),
            "stm_shape": list(config.stm_shape),
            "memory_attention_variant": config.memory_attention_variant,
            "quantization": config.extra.get("quantization"),
            "dtype": str(model.dtype),
            "query_tokens_per_turn": [len(ids) for ids in script.query_ids],
        },
        "baseline": {
            "implementation": "mlx_lm.models.llama.Model, random weights, mlx_lm.generate.generate_step",
            "parameters": _parameter_count(baseline),
            "shape": asdict(shape),
        },
        "reference": reference.describe() if reference is not None else None,
        "timing": (
            f"wall clock; best of {options.repeats} runs per turn (PyTorch reference: one run); TTFT from the "
            "call to the first token; decode tokens/s = (answer tokens - 1) / (last token - first token)"
        ),
        "memory_update_tokens": update_length,
        "memory_update_delay_probe": update_probe,
        "summary": summarize(rows),
    }
    report["ratios"] = summary_ratios(rows, memory_update_256, update_probe)
    return rows, report


def format_ratios(ratios: dict[str, float | None]) -> str:
    return "\n".join(f"  {name:<45} {'n/a' if value is None else f'{value:.3f}':>10}" for name, value in ratios.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxt-bench",
        description="Per-turn latency of RxT vs a stateless decoder of the same size (table, CSV, JSON, PNG).",
    )
    parser.add_argument(
        "--model", type=Path, help="rxt-mlx model folder or Hub repo id org/name (default: the bundled demo model)"
    )
    parser.add_argument("--turns", type=int, default=32, help="turns in the scripted conversation (default 32)")
    parser.add_argument("--query-tokens", type=int, default=32, help="tokens per query (default 32)")
    parser.add_argument("--answer-tokens", type=int, default=32, help="tokens per answer, forced (default 32)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--reference", action="store_true", help="also time the PyTorch reference RxT")
    parser.add_argument("--dtype", choices=DTYPES, help="cast the models to this dtype (default: as stored)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the script, STM and baseline weights")
    parser.add_argument("--warmup-turns", type=int, default=2, help="untimed turns per system first (default 2)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="time every turn this many times and keep the best (the extra runs leave the conversation "
        "unchanged; the PyTorch reference runs once)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plot", action="store_true", help="no PNG; print the terminal chart instead")
    return parser


def parse_options(argv: list[str] | None) -> BenchOptions:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_positive(parser, args, ("turns", "query_tokens", "answer_tokens", "repeats"))
    return BenchOptions(
        model=args.model,
        turns=args.turns,
        query_tokens=args.query_tokens,
        answer_tokens=args.answer_tokens,
        out=args.out,
        reference=args.reference,
        dtype=args.dtype,
        seed=args.seed,
        warmup_turns=args.warmup_turns,
        repeats=args.repeats,
        progress=not args.no_progress,
        plot=not args.no_plot,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rxt-bench``."""
    from rxt_mlx.bench.report import format_table, latency_chart_text, write_csv, write_json, write_plot
    from rxt_mlx.blas import preload_optimised_blas

    preload_optimised_blas()  # before MLX loads: use the system OpenBLAS when installed
    options = parse_options(argv)
    rows, report = run_benchmark(options)
    machine = report["machine"]
    print(
        f"machine: {machine['cpu']} ({machine['cpu_count']} cores), {machine['os']}, MLX {machine['mlx']} on "
        f"{machine['mlx_device']}, mlx-lm {machine['mlx_lm']}, Python {machine['python']}, "
        f"BLAS: {machine['blas']['label']} ({machine['blas']['path'] or 'not found'})"
    )
    print(format_table(rows))
    print("ratios:")
    print(format_ratios(report["ratios"]))
    options.out.mkdir(parents=True, exist_ok=True)
    write_csv(options.out / "latency.csv", rows)
    write_json(options.out / "latency.json", report, rows)
    title = (
        f"RxT vs stateless baseline: {options.turns} turns, Q={options.query_tokens}, A={options.answer_tokens} "
        f"({machine['cpu']}, {machine['blas']['label']})"
    )
    if options.plot and write_plot(options.out / "latency.png", rows, title):
        print(f"wrote {options.out / 'latency.csv'}, latency.json, latency.png")
    else:
        print(latency_chart_text(rows))
        missing = " (matplotlib not installed: pip install 'rxt-mlx[plot]')" if options.plot else ""
        print(f"wrote {options.out / 'latency.csv'}, latency.json; no PNG{missing}")
    if machine["blas_hint"]:
        print(f"hint: {machine['blas_hint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
